"""Which interrupt a vCPU takes from the in-kernel irqchip (arch/x86/kvm/irq.c).

The 8259's INTR output reaches the vCPU whose LAPIC accepts ExtINT; taking the interrupt is
the PIC's interrupt-acknowledge cycle, which answers the vector.  The LAPIC's own requests
(IOAPIC, MSI, IPI, LVT) come after it.  (Without an in-kernel
irqchip the only source is the vector user space queued with KVM_INTERRUPT, which the run
path injects itself.)
"""

from __future__ import annotations

from . import i8259
from .lapic import kvm_apic_accept_pic_intr, kvm_apic_has_interrupt, kvm_get_apic_interrupt


def kvm_cpu_has_extint(vcpu) -> bool:
    """An ExtINT waits: the in-kernel PIC's output, or with a split irqchip the vector user
    space's PIC gave KVM_INTERRUPT."""
    if not kvm_apic_accept_pic_intr(vcpu):
        return False
    vpic = vcpu.kvm.arch.vpic
    if vpic is not None:
        return bool(vpic.output)
    return vcpu.arch.pending_external_vector is not None


def kvm_cpu_has_interrupt(vcpu) -> bool:
    """An interrupt waits for this vCPU: the PIC's ExtINT, or the LAPIC's highest request
    above its processor priority."""
    return kvm_cpu_has_extint(vcpu) or kvm_apic_has_interrupt(vcpu) != -1


def kvm_cpu_get_interrupt(vcpu) -> int:
    """Acknowledge the interrupt and return its vector: the ExtINT first (the PIC's
    acknowledge cycle, or user space's vector with a split irqchip), else the LAPIC's."""
    if kvm_cpu_has_extint(vcpu):
        if vcpu.kvm.arch.vpic is None:
            vector, vcpu.arch.pending_external_vector = vcpu.arch.pending_external_vector, None
            return vector
        return i8259.kvm_pic_read_irq(vcpu.kvm)
    return kvm_get_apic_interrupt(vcpu)
