"""Machine-check state (kernel/x86/mce.py) against the host: KVM_CAP_MCE, the supported
MCG_CAP, KVM_X86_SETUP_MCE's checks and initial values, and the host-initiated MCE MSRs as
QEMU writes them at each vCPU reset; then on both a guest reading MCG_CAP and a bank past
the last (#GP)."""

import pytest

from kvmpy.kernel.x86 import mce
from kvmpy.uapi import kvm as uapi
from tests.support import guestvm
from tests.support.guestvm import BACKENDS, errno_name as _errno

MCG_CAP, MCG_STATUS, MCG_CTL = 0x179, 0x17A, 0x17B
MC0_CTL, MC0_STATUS = 0x400, 0x401
ALL_ONES = (1 << 64) - 1


def _setup_mce(m, mcg_cap):
    return _errno(lambda: m.sc.ioctl(m.vcpu_fd, uapi.KVM_X86_SETUP_MCE,
                                     bytearray(mcg_cap.to_bytes(8, "little"))))


@pytest.mark.parametrize("sc", BACKENDS)
def test_mce_ioctls_and_msrs_are_the_hosts(sc):
    m = guestvm.Machine(sc, mode=None, ram=0)
    try:
        supported = bytearray(8)
        sc.ioctl(m.kvm_fd, uapi.KVM_X86_GET_MCE_CAP_SUPPORTED, supported)
        ten_banks = 10 | mce.MCG_CTL_P
        got = {
            "cap": sc.ioctl(m.vm_fd, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_MCE),
            # before KVM_X86_SETUP_MCE: KVM_MAX_MCE_BANKS banks, no MCG_CTL_P
            "default": m.msrs(None, MCG_CAP, MCG_CTL, MC0_CTL + 4 * 31),
            "no-banks": _setup_mce(m, mce.MCG_CTL_P),
            "33-banks": _setup_mce(m, 33),
            "unknown-bit": _setup_mce(m, 10 | 1 << 63),
            "setup": _setup_mce(m, ten_banks),
            "after": m.msrs(None, MCG_CAP, MCG_STATUS, MCG_CTL, MC0_CTL, MC0_STATUS,
                           MC0_CTL + 4 * 9, MC0_CTL + 4 * 10),
            # QEMU's reset: MCG_STATUS, MCG_CTL, then every bank's four MSRs
            "qemu-reset": m.msrs(0, MCG_STATUS, MCG_CTL, *range(MC0_CTL, MC0_CTL + 40)),
            "ctl-all-ones": m.msrs(ALL_ONES, MC0_CTL, MCG_CTL),
            "ctl-but-bit-10": m.msrs(ALL_ONES & ~(1 << 10), MC0_CTL + 16),
            "ctl-other": m.msrs(5, MC0_CTL),
            "mcg-ctl-other": m.msrs(5, MCG_CTL),
            "status-by-vmm": m.msrs(0x1234, MC0_STATUS),
            "mcg-cap-write": m.msrs(10, MCG_CAP),
            "read-back": m.msrs(None, MC0_CTL, MC0_STATUS, MC0_CTL + 16),
        }
    finally:
        m.close()
    supported = int.from_bytes(supported, "little")
    assert supported & mce.SUPPORTED_MCE_CAP == mce.SUPPORTED_MCE_CAP   # vendors may add more
    assert got == {
        "cap": 32, "default": (3, [32, 0, 0]),
        "no-banks": "EINVAL", "33-banks": "EINVAL", "unknown-bit": "EINVAL", "setup": 0,
        "after": (6, [ten_banks, 0, ALL_ONES, ALL_ONES, 0, ALL_ONES]),
        "qemu-reset": (42, [0] * 42),
        "ctl-all-ones": (2, [ALL_ONES, ALL_ONES]), "ctl-but-bit-10": (1, [ALL_ONES & ~(1 << 10)]),
        "ctl-other": (0, []), "mcg-ctl-other": (0, []), "status-by-vmm": (1, [0x1234]),
        "mcg-cap-write": (0, []),
        "read-back": (3, [ALL_ONES, 0x1234, ALL_ONES & ~(1 << 10)]),
    }


GUEST = guestvm.assemble(guestvm.prot32(f"""
 mov ${MCG_CAP:#x}, %ecx
 rdmsr
 mov %eax, %esi
 mov ${MC0_CTL + 4 * 32:#x}, %ecx
 rdmsr
 hlt
""", handlers={13: guestvm.GP_SKIP2}))


@pytest.mark.parametrize("sc", BACKENDS)
def test_a_guest_reads_mcg_cap_and_faults_past_the_banks(sc):
    m = guestvm.Machine(sc, GUEST)
    try:
        m.until("HLT")
        got = (m.console, m.regs("rsi"))
    finally:
        m.close()
    assert got == ("G", {"rsi": hex(mce.KVM_MAX_MCE_BANKS)})
