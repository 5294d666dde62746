"""VM capabilities and checks that KVM's selftests and QEMU rely on, against the host:
KVM_ENABLE_CAP(KVM_CAP_MAX_VCPU_ID) and the vCPU ids it allows, KVM_ENABLE_CAP(
KVM_CAP_MSR_PLATFORM_INFO) as the guest's RDMSR sees it, KVM_SET_NR_MMU_PAGES's minimum; and
on kvmpy the CR4 bits of CPUID features: allowed before KVM_SET_CPUID2 when supported,
reserved once the guest's CPUID lacks them (selftests: max_vcpuid_cap_test, platform_info_test,
set_memory_region_test, set_sregs_test)."""

import pytest

from kvmpy.hw import features, x86defs as hd
from kvmpy.kernel.x86 import cpuid as kcpuid
from kvmpy.uapi import kvm as uapi
from tests.support import guestvm, rawvmm
from tests.support.guestvm import BACKENDS, errno_name as _errno

MSR_PLATFORM_INFO = 0xCE

def _enable_cap(sc, vm_fd, cap, arg):
    return _errno(lambda: sc.ioctl(vm_fd, uapi.KVM_ENABLE_CAP, uapi.kvm_enable_cap(cap=cap, args=(arg, 0, 0, 0))))

@pytest.mark.parametrize("sc", BACKENDS)
def test_max_vcpu_id_is_the_hosts(sc):
    vm = rawvmm._Vm(sc)
    try:
        kvm_fd = vm.open("/dev/kvm")
        vm_fd = vm.adopt(sc.ioctl(kvm_fd, uapi.KVM_CREATE_VM, 0))
        cap = sc.ioctl(vm_fd, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_MAX_VCPU_ID)
        got = {
            "beyond": _enable_cap(sc, vm_fd, uapi.KVM_CAP_MAX_VCPU_ID, cap + 1),
            "set": _enable_cap(sc, vm_fd, uapi.KVM_CAP_MAX_VCPU_ID, 4),
            "same": _enable_cap(sc, vm_fd, uapi.KVM_CAP_MAX_VCPU_ID, 4),
            "other": _enable_cap(sc, vm_fd, uapi.KVM_CAP_MAX_VCPU_ID, 8),
            "id-3": _errno(lambda: vm.adopt(sc.ioctl(vm_fd, uapi.KVM_CREATE_VCPU, 3)) and 0),
            "id-4": _errno(lambda: vm.adopt(sc.ioctl(vm_fd, uapi.KVM_CREATE_VCPU, 4)) and 0),
        }
        # a VM whose first vCPU came first: the limit is fixed at KVM_MAX_VCPU_IDS
        vm2_fd = vm.adopt(sc.ioctl(kvm_fd, uapi.KVM_CREATE_VM, 0))
        vm.adopt(sc.ioctl(vm2_fd, uapi.KVM_CREATE_VCPU, 0))
        got["after-vcpu"] = _enable_cap(sc, vm2_fd, uapi.KVM_CAP_MAX_VCPU_ID, 4)
        got["after-vcpu-cap"] = _enable_cap(sc, vm2_fd, uapi.KVM_CAP_MAX_VCPU_ID, cap)
    finally:
        vm.close()
    assert got == {"beyond": "EINVAL", "set": 0, "same": 0, "other": "EINVAL", "id-3": 0,
                   "id-4": "EINVAL", "after-vcpu": "EINVAL", "after-vcpu-cap": 0}

READ_PLATFORM_INFO = f" mov ${MSR_PLATFORM_INFO:#x}, %ecx\n rdmsr\n hlt\n"
RDMSR_PLATFORM_INFO = guestvm.assemble(guestvm.prot32(READ_PLATFORM_INFO * 2,
                                                      handlers={13: guestvm.GP_SKIP2}))

def _disable_platform_info(m):
    assert _enable_cap(m.sc, m.vm_fd, uapi.KVM_CAP_MSR_PLATFORM_INFO, 0) == 0

@pytest.mark.parametrize("sc", BACKENDS)
def test_msr_platform_info_cap_is_the_hosts(sc):
    m = guestvm.Machine(sc, RDMSR_PLATFORM_INFO, vm_setup=_disable_platform_info)
    try:
        m.until("HLT")
        refused = m.console
        assert _enable_cap(sc, m.vm_fd, uapi.KVM_CAP_MSR_PLATFORM_INFO, 1) == 0
        m.until("HLT")
        got = (refused, m.console, m.msrs(None, MSR_PLATFORM_INFO)[0])
    finally:
        m.close()
    assert got == ("G", "G", 1)          # #GP while disabled; read by the guest once enabled

@pytest.mark.parametrize("sc", BACKENDS)
def test_set_nr_mmu_pages_is_the_hosts(sc):
    m = guestvm.Machine(sc, mode=None, ram=0)
    try:
        got = [_errno(lambda n=n: sc.ioctl(m.vm_fd, uapi.KVM_SET_NR_MMU_PAGES, n)) for n in (63, 64, 4096)]
    finally:
        m.close()
    assert got == ["EINVAL", 0, 0]

def _supported(sc, kvm_fd):
    cpuid = uapi.with_entries(uapi.kvm_cpuid2, 256)()
    cpuid.nent = 256
    sc.ioctl(kvm_fd, uapi.KVM_GET_SUPPORTED_CPUID, cpuid)
    return cpuid

def _has(cpuid, name):
    leaf, subleaf, reg, bit = features.FEATURES[name]
    for e in (cpuid.entries[i] for i in range(cpuid.nent)):
        if e.function == leaf and e.index == subleaf:
            return bool(getattr(e, reg) >> bit & 1)
    return False

def _set_cr4(sc, vcpu_fd, bit):
    sregs = uapi.kvm_sregs()
    sc.ioctl(vcpu_fd, uapi.KVM_GET_SREGS, sregs)
    sregs.cr4 |= bit
    if bit == hd.CR4_PCIDE:                      # PCIDE needs long mode
        sregs.cr0 |= hd.CR0_PE | hd.CR0_PG
        sregs.cr4 |= hd.CR4_PAE
        sregs.efer |= hd.EFER_LME | hd.EFER_LMA
        sregs.cs.l, sregs.cs.db = 1, 0
    return _errno(lambda: sc.ioctl(vcpu_fd, uapi.KVM_SET_SREGS, sregs))

def test_cr4_feature_bits_follow_the_cpuid(soft_kvm):
    """Each bit: settable before KVM_SET_CPUID2 if its feature is supported (EINVAL if not),
    and EINVAL once the vCPU's CPUID is the supported one without that feature -- Linux's
    rule, which KVM's set_sregs_test checks.  Not compared with this machine's host: its
    KVM (kvm_pvm) accepts all six bits, supported or not, before and after KVM_SET_CPUID2
    (measured; set_sregs_test fails there)."""
    from kvmpy import syscalls as sc
    vm = rawvmm._Vm(sc)
    try:
        kvm_fd = vm.open("/dev/kvm")
        supported = _supported(sc, kvm_fd)
        got, expected = {}, {}
        for bit, name in kcpuid.CR4_FEATURE_BITS:
            vm_fd = vm.adopt(sc.ioctl(kvm_fd, uapi.KVM_CREATE_VM, 0))
            vcpu_fd = vm.adopt(sc.ioctl(vm_fd, uapi.KVM_CREATE_VCPU, 0))
            before = _set_cr4(sc, vcpu_fd, bit)
            leaf, subleaf, reg, bitno = features.FEATURES[name]
            cpuid = _supported(sc, kvm_fd)
            for e in (cpuid.entries[i] for i in range(cpuid.nent)):
                if e.function == leaf and e.index == subleaf:
                    setattr(e, reg, getattr(e, reg) & ~(1 << bitno))
            vcpu2_fd = vm.adopt(sc.ioctl(vm_fd, uapi.KVM_CREATE_VCPU, 1))
            sc.ioctl(vcpu2_fd, uapi.KVM_SET_CPUID2, cpuid)
            got[name] = (before, _set_cr4(sc, vcpu2_fd, bit))
            expected[name] = (0 if _has(supported, name) else "EINVAL", "EINVAL")
    finally:
        vm.close()
    assert got == expected


def _set_vapic_addr(m, addr):
    return _errno(lambda: m.sc.ioctl(m.vcpu_fd, uapi.KVM_SET_VAPIC_ADDR, uapi.kvm_vapic_addr(vapic_addr=addr)))


@pytest.mark.parametrize("sc", BACKENDS)
def test_set_vapic_addr_0_is_the_hosts(sc):
    """QEMU sets the vapic address to 0 at each reset of an in-kernel LAPIC and aborts if
    that fails; without an in-kernel LAPIC the ioctl is EINVAL."""
    plain = guestvm.Machine(sc, mode=None, ram=0)
    irqchip = guestvm.Machine(sc, mode=None, ram=0, vm_setup=guestvm.create_irqchip)
    try:
        got = (_set_vapic_addr(plain, 0), _set_vapic_addr(irqchip, 0))
    finally:
        plain.close()
        irqchip.close()
    assert got == ("EINVAL", 0)


def test_kvmpy_has_no_vapic_page(soft_kvm):
    from kvmpy import syscalls as sc
    m = guestvm.Machine(sc, mode=None, ram=0, vm_setup=guestvm.create_irqchip)
    try:
        got = (sc.ioctl(m.vm_fd, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_VAPIC), _set_vapic_addr(m, 0x1000))
    finally:
        m.close()
    assert got == (0, "EINVAL")
