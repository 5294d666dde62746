"""x86.c's machine-check architecture: KVM_CAP_MCE, KVM_X86_GET_MCE_CAP_SUPPORTED,
KVM_X86_SETUP_MCE, and the MCE MSRs (MCG_CAP, MCG_STATUS, MCG_CTL, each bank's MCi_CTL,
MCi_STATUS, MCi_ADDR, MCi_MISC and MCi_CTL2).

KVM keeps the guest's machine-check state as plain registers: nothing in kvmpy raises a
machine check, but VMMs save and restore the MSRs, and QEMU's CPU models with MCE and MCA
write the MCG and bank MSRs of every bank at each vCPU reset (KVM_SET_MSRS fails the VMM if
one is refused).  As in KVM, a new vCPU has KVM_MAX_MCE_BANKS banks until user space picks
its MCG_CAP with KVM_X86_SETUP_MCE.  kvmpy supports MCG_CTL_P and MCG_SER_P (what generic KVM
offers; the vendor extras LMCE and CMCI are not implemented), and injects no machine check
(KVM_X86_SET_MCE is not implemented: EINVAL).
"""

from __future__ import annotations

import errno

from ... import uapi
from ...hw.msr_index import (MSR_IA32_MC0_CTL, MSR_IA32_MC0_CTL2, MSR_IA32_MCG_CAP, MSR_IA32_MCG_CTL,
                             MSR_IA32_MCG_STATUS, MSR_IA32_P5_MC_ADDR, MSR_IA32_P5_MC_TYPE)
from ..fs import copy_from_user, copy_to_user, kernel_error
from . import x86

KVM_MAX_MCE_BANKS = 32
MCG_BANKCNT_MASK, MCG_EXT_CNT_MASK = 0xFF, 0xFF0000
MCG_CTL_P, MCG_CMCI_P, MCG_SER_P = 1 << 8, 1 << 10, 1 << 24
SUPPORTED_MCE_CAP = MCG_CTL_P | MCG_SER_P
MCI_CTL2_CMCI_EN, MCI_CTL2_CMCI_THRESHOLD_MASK = 1 << 30, 0x7FFF
ALL_ONES = (1 << 64) - 1
# IA32_MCi_CTL takes 0 or all ones, or all ones but bit 10 (Linux's AMD K8 GART workaround)
# or bit 0 (UnixWare's): anything else is architecturally undefined and refused
MCI_CTL_TOLERATED = 1 << 10 | 1


class KvmVcpuMce:
    """The machine-check fields of struct kvm_vcpu_arch."""

    def __init__(self):
        self.mcg_cap = KVM_MAX_MCE_BANKS
        self.mcg_status = 0
        self.mcg_ctl = 0
        self.banks = [0] * (4 * KVM_MAX_MCE_BANKS)     # CTL, STATUS, ADDR, MISC per bank
        self.ctl2 = [0] * KVM_MAX_MCE_BANKS

    @property
    def bank_num(self) -> int:
        return self.mcg_cap & MCG_BANKCNT_MASK


def vcpu_mce(vcpu) -> KvmVcpuMce:
    mce = getattr(vcpu.arch, "mce", None)
    if mce is None:
        mce = vcpu.arch.mce = KvmVcpuMce()
    return mce


# ------------------------------------------------------------------ the MSRs
def set_msr_mce(vcpu, index: int, data: int, host_initiated: bool) -> int:
    mce = vcpu_mce(vcpu)
    if index == MSR_IA32_MCG_STATUS:
        mce.mcg_status = data
    elif index == MSR_IA32_MCG_CTL:
        if not mce.mcg_cap & MCG_CTL_P and (data or not host_initiated):
            return 1
        if data not in (0, ALL_ONES):
            return 1
        mce.mcg_ctl = data
    elif MSR_IA32_MC0_CTL2 <= index < MSR_IA32_MC0_CTL2 + KVM_MAX_MCE_BANKS:
        bank = index - MSR_IA32_MC0_CTL2
        if bank >= mce.bank_num:
            return 1
        if not mce.mcg_cap & MCG_CMCI_P and (data or not host_initiated):
            return 1
        if data & ~(MCI_CTL2_CMCI_EN | MCI_CTL2_CMCI_THRESHOLD_MASK):
            return 1
        mce.ctl2[bank] = data
    else:                                   # a bank's CTL, STATUS, ADDR or MISC
        offset = index - MSR_IA32_MC0_CTL
        if offset >= 4 * mce.bank_num:
            return 1
        if offset % 4 == 0 and data != 0 and data | MCI_CTL_TOLERATED != ALL_ONES:
            return 1
        # 0 clears MCi_STATUS; other values are for AMD's HWCR.McStatusWrEn, which kvmpy
        # does not have, so only the VMM may write them
        if offset % 4 == 1 and data != 0 and not host_initiated:
            return 1
        mce.banks[offset] = data
    return 0


def get_msr_mce(vcpu, index: int, host_initiated: bool):
    mce = vcpu_mce(vcpu)
    if index in (MSR_IA32_P5_MC_ADDR, MSR_IA32_P5_MC_TYPE):
        return 0, 0
    if index == MSR_IA32_MCG_CAP:
        return 0, mce.mcg_cap
    if index == MSR_IA32_MCG_STATUS:
        return 0, mce.mcg_status
    if index == MSR_IA32_MCG_CTL:
        if not mce.mcg_cap & MCG_CTL_P and not host_initiated:
            return 1, 0
        return 0, mce.mcg_ctl
    if MSR_IA32_MC0_CTL2 <= index < MSR_IA32_MC0_CTL2 + KVM_MAX_MCE_BANKS:
        bank = index - MSR_IA32_MC0_CTL2
        if bank >= mce.bank_num or not mce.mcg_cap & MCG_CMCI_P and not host_initiated:
            return 1, 0
        return 0, mce.ctl2[bank]
    offset = index - MSR_IA32_MC0_CTL
    if offset >= 4 * mce.bank_num:
        return 1, 0
    return 0, mce.banks[offset]


def _get_only(get):
    """The MSRs a write does not reach (MCG_CAP: KVM_X86_SETUP_MCE sets it; the P5 ones)."""
    return get, lambda vcpu, index, data, host_initiated: 1


MCE_MSRS = ((MSR_IA32_MCG_STATUS, MSR_IA32_MCG_CTL)
            + tuple(range(MSR_IA32_MC0_CTL2, MSR_IA32_MC0_CTL2 + KVM_MAX_MCE_BANKS))
            + tuple(range(MSR_IA32_MC0_CTL, MSR_IA32_MC0_CTL + 4 * KVM_MAX_MCE_BANKS)))


# ------------------------------------------------------------------ the ioctls
def kvm_dev_ioctl_get_mce_cap_supported(arg) -> int:
    copy_to_user(arg, SUPPORTED_MCE_CAP.to_bytes(8, "little"))
    return 0


def kvm_vcpu_ioctl_x86_setup_mce(vcpu, arg) -> int:
    """KVM_X86_SETUP_MCE: the vCPU's MCG_CAP (1 to 32 banks, supported capability bits);
    MCG_CTL (when present) and every bank's MCi_CTL start all ones, MCi_CTL2 zero."""
    mcg_cap = int.from_bytes(copy_from_user(arg, 8), "little")
    bank_num = mcg_cap & MCG_BANKCNT_MASK
    if not 0 < bank_num <= KVM_MAX_MCE_BANKS:
        raise kernel_error(errno.EINVAL)
    if mcg_cap & ~(SUPPORTED_MCE_CAP | MCG_BANKCNT_MASK | MCG_EXT_CNT_MASK):
        raise kernel_error(errno.EINVAL)
    mce = vcpu_mce(vcpu)
    mce.mcg_cap = mcg_cap
    if mcg_cap & MCG_CTL_P:
        mce.mcg_ctl = ALL_ONES
    for bank in range(bank_num):
        mce.banks[4 * bank] = ALL_ONES
        mce.ctl2[bank] = 0
    return 0


x86.dev_ioctl_handlers[uapi.KVM_X86_GET_MCE_CAP_SUPPORTED] = kvm_dev_ioctl_get_mce_cap_supported
x86.vcpu_ioctl_handlers[uapi.KVM_X86_SETUP_MCE] = kvm_vcpu_ioctl_x86_setup_mce
x86.msr_handlers.update({index: (get_msr_mce, set_msr_mce) for index in MCE_MSRS})
x86.msr_handlers.update({index: _get_only(get_msr_mce)
                         for index in (MSR_IA32_MCG_CAP, MSR_IA32_P5_MC_ADDR, MSR_IA32_P5_MC_TYPE)})
x86.emulated_msrs += (MSR_IA32_MCG_STATUS, MSR_IA32_MCG_CTL)
x86.supported_caps[uapi.KVM_CAP_MCE] = KVM_MAX_MCE_BANKS
