"""include/uapi/linux/kvm_para.h and asm/kvm_para.h: the hypercall numbers and their error
answers, and the paravirtual CPUID feature bits (leaf 0x40000001 EAX)."""

KVM_ENOSYS = 1000           # an unknown hypercall
KVM_EFAULT = 14
KVM_EINVAL = 22
KVM_EPERM = 1               # a hypercall from CPL > 0

KVM_HC_SEND_IPI = 10        # a0/a1: APIC-ID bitmap from a2, a3: the ICR's low word

KVM_FEATURE_CLOCKSOURCE = 0
KVM_FEATURE_NOP_IO_DELAY = 1
KVM_FEATURE_CLOCKSOURCE2 = 3
KVM_FEATURE_PV_SEND_IPI = 11
KVM_FEATURE_CLOCKSOURCE_STABLE_BIT = 24
