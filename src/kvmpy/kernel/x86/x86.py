"""The x86 architecture layer of KVM (arch/x86/kvm/x86.c): the ``kvm_arch_*`` hooks generic
KVM calls, the vCPU state ioctls (REGS, SREGS, FPU, MSRS, CPUID2, MP_STATE, VCPU_EVENTS,
DEBUGREGS, XCRS, INTERRUPT) and the common MSR code.

The guest's architectural registers live in the vendor's processor object,
``vcpu.arch.cpu`` (a ``kvmpy.hw.state.CPUState``), which plays the VMCS/VMCB guest-state area;
the ioctls translate between it and the uapi structures.  The vendor module is reached through
``kvm_x86_ops``, registered by ``kvm_arch_init`` (called from ``kvm_init``).

Events waiting for injection (the run path, ``kvmpy.kernel.x86.run``, injects them on entry):
``vcpu.arch.exception`` is None or ``(vector, error_code or None, cr2 or None)``;
``vcpu.arch.interrupt`` is None or the vector queued by ``KVM_INTERRUPT`` (no in-kernel
irqchip), which like Linux's ``interrupt.injected`` goes in at the next entry whatever IF says
(the VMM checks ``ready_for_interrupt_injection`` first), while ``interrupt_nr`` keeps the last
vector for KVM_GET_VCPU_EVENTS; NMIs: ``nmi_queued`` (KVM_NMI), folded by ``process_nmi`` into ``nmi_pending``,
and ``nmi_injected`` (an NMI restored by KVM_SET_VCPU_EVENTS, to re-inject first).  Once
injected, an NMI is the processor's ``pending_event`` (the entry's event injection, consumed
by the entry; an event whose delivery an exit interrupted comes back into these queues
through the vendor's complete_interrupts), and the processor's
``nmi_masked`` is NMI blocking (set by delivery, cleared by IRET).
"""

from __future__ import annotations

import ctypes
import errno

from ... import uapi
from kvmpy.hw import events as hs_events, features, state as hs, x86defs as hd
from kvmpy.hw.fpu import xsave as hxsave
from ...hw.events import NMI, Fault
from ...hw.msr_index import (MSR_CSTAR, MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_IA32_APICBASE, MSR_IA32_CR_PAT,
                             MSR_IA32_MISC_ENABLE, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_EIP,
                             MSR_IA32_SYSENTER_ESP, MSR_IA32_TSC, MSR_IA32_UCODE_REV, MSR_KERNEL_GS_BASE,
                             MSR_LSTAR, MSR_MTRRcap, MSR_MTRRdefType, MSR_MTRRfix4K_C0000, MSR_MTRRfix4K_F8000,
                             MSR_MTRRfix16K_80000, MSR_MTRRfix16K_A0000, MSR_MTRRfix64K_00000,
                             MSR_MTRRphysBase0, MSR_PLATFORM_INFO, MSR_STAR, MSR_SYSCALL_MASK, MSR_TSC_AUX)
from ..fs import copy_from_user, copy_to_user, kernel_error
from ..kvm_host import KVM_IRQCHIP_KERNEL, KVM_IRQCHIP_NONE, KVM_IRQCHIP_SPLIT  # noqa: F401  (x86.KVM_IRQCHIP_*)
from ..kvm_host import kvm_make_request, kvm_vcpu_kick
from ..trace import traced
from . import cpuid as kcpuid
from kvmpy.kernel.x86.mmu import mmu

_vendor_ops = None           # the vendor module's KvmX86Ops (vmx_x86_ops / svm_x86_ops), set by kvm_arch_init


def kvm_x86_ops():
    """The registered vendor ops (the kernel's global ``kvm_x86_ops``)."""
    return _vendor_ops

# ----------------------------------------------------------------------------------------
# MSRs
# ----------------------------------------------------------------------------------------
KVM_NR_VAR_MTRR = 8
MTRR_FIXED = (MSR_MTRRfix64K_00000, MSR_MTRRfix16K_80000, MSR_MTRRfix16K_A0000) + tuple(
    range(MSR_MTRRfix4K_C0000, MSR_MTRRfix4K_F8000 + 1))
MTRR_VAR = tuple(range(MSR_MTRRphysBase0, MSR_MTRRphysBase0 + 2 * KVM_NR_VAR_MTRR))
MTRR_CAP_VALUE = KVM_NR_VAR_MTRR | 1 << 8 | 1 << 10          # VCNT, FIX, WC
MSR_IA32_MISC_ENABLE_FAST_STRING = 1
MSR_PLATFORM_INFO_CPUID_FAULT = 1 << 31
PAT_DEFAULT = 0x0007040600070406
MAX_IO_MSRS = 256
KVM_MIN_ALLOC_MMU_PAGES = 64

# Plain MSRs kept in cpu.msrs with no side effects beyond a validity check.
_CANONICAL_MSRS = (MSR_LSTAR, MSR_CSTAR, MSR_KERNEL_GS_BASE)
_PLAIN_MSRS = (MSR_STAR, MSR_SYSCALL_MASK, MSR_IA32_SYSENTER_CS) + _CANONICAL_MSRS

# KVM_GET_MSR_INDEX_LIST: what KVM_GET/SET_MSRS save and restore
msrs_to_save = (
    MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP, MSR_STAR, MSR_CSTAR,
    MSR_KERNEL_GS_BASE, MSR_SYSCALL_MASK, MSR_LSTAR, MSR_IA32_TSC, MSR_IA32_CR_PAT, MSR_TSC_AUX,
)
emulated_msrs = (MSR_IA32_MISC_ENABLE, MSR_PLATFORM_INFO, MSR_IA32_UCODE_REV)
# MSRs that another module of the x86 layer owns: index -> (get(vcpu, index, host_initiated),
# set(vcpu, index, data, host_initiated)), registered by that module (kvmclock.py: the time MSRs)
msr_handlers: dict = {}
# kvmclock.py's kvm_synchronize_tsc, registered by it (it imports this module)
kvm_synchronize_tsc = None
msr_based_features = (MSR_IA32_UCODE_REV,)

_EFER_FEATURE = ((hd.EFER_SCE, "syscall"), (hd.EFER_LME | hd.EFER_LMA, "lm"), (hd.EFER_NXE, "nx"))


def _efer_supported() -> int:
    bits = 0
    for mask, name in _EFER_FEATURE:
        if features.implemented(name):
            bits |= mask
    return bits


# Capabilities kvmpy's x86 layer implements, for KVM_CHECK_EXTENSION.  Modules that implement
# more (in-kernel devices, the run path) add their entries here.
supported_caps = {
    uapi.KVM_CAP_SET_TSS_ADDR: 1,
    uapi.KVM_CAP_SET_IDENTITY_MAP_ADDR: 1,
    uapi.KVM_CAP_EXT_CPUID: 1,
    uapi.KVM_CAP_MP_STATE: 1,
    uapi.KVM_CAP_VCPU_EVENTS: 1,
    uapi.KVM_CAP_DEBUGREGS: 1,
    uapi.KVM_CAP_READONLY_MEM: 1,
    uapi.KVM_CAP_GET_MSR_FEATURES: 1,
    uapi.KVM_CAP_MSR_PLATFORM_INFO: 1,
    uapi.KVM_CAP_HLT: 1,
    uapi.KVM_CAP_NOP_IO_DELAY: 1,
    uapi.KVM_CAP_NR_VCPUS: uapi.KVM_SOFT_MAX_VCPUS,
    uapi.KVM_CAP_MAX_VCPUS: uapi.KVM_MAX_VCPUS,
    uapi.KVM_CAP_MAX_VCPU_ID: uapi.KVM_MAX_VCPU_IDS,
    # implemented by the run path (run.py): kvm_run.immediate_exit and the sync-regs area
    uapi.KVM_CAP_IMMEDIATE_EXIT: 1,
    uapi.KVM_CAP_SYNC_REGS: uapi.KVM_SYNC_X86_VALID_FIELDS,
    uapi.KVM_CAP_USER_NMI: 1,               # KVM_NMI
    # XSAVE state and XCR0 (kvmpy.hw.fpu.xsave): KVM_GET/SET_XSAVE, KVM_GET/SET_XCRS
    uapi.KVM_CAP_XSAVE: int(features.implemented("xsave")),
    uapi.KVM_CAP_XCRS: int(features.implemented("xsave")),
    # KVM_SET_GUEST_DEBUG (KVM_CAP_SET_GUEST_DEBUG2, its flags, is set with them below)
    uapi.KVM_CAP_SET_GUEST_DEBUG: 1,
}


def vendor_name() -> str:
    return _vendor_ops.name


# ----------------------------------------------------------------------------------------
# Module and VM hooks
# ----------------------------------------------------------------------------------------
@traced
def kvm_arch_init(ops) -> None:
    global _vendor_ops
    if _vendor_ops is not None:
        raise kernel_error(errno.EEXIST)
    if ops.name not in kcpuid.VENDORS:
        raise kernel_error(errno.EOPNOTSUPP)
    _vendor_ops = ops


def kvm_arch_exit() -> None:
    global _vendor_ops
    _vendor_ops = None


@traced
def kvm_arch_hardware_setup() -> None:
    _vendor_ops.hardware_setup()


def kvm_arch_hardware_enable() -> None:
    _vendor_ops.hardware_enable()


def kvm_arch_hardware_disable() -> None:
    _vendor_ops.hardware_disable()


def kvm_vm_ioctl_check_extension(kvm, ext: int) -> int:
    return int(supported_caps.get(ext, 0))


class KvmArch:
    """struct kvm_arch: x86 per-VM state, every field declared here."""

    def __init__(self):
        self.tss_addr = 0                   # KVM_SET_TSS_ADDR
        self.ept_identity_map_addr = 0      # KVM_SET_IDENTITY_MAP_ADDR
        self.bsp_vcpu_id = 0                # KVM_SET_BOOT_CPU_ID
        self.irqchip_mode = KVM_IRQCHIP_NONE    # KVM_CREATE_IRQCHIP (kernel) / KVM_CAP_SPLIT_IRQCHIP
        self.guest_can_read_msr_platform_info = True    # KVM_ENABLE_CAP(KVM_CAP_MSR_PLATFORM_INFO)
        self.max_vcpu_ids = 0               # KVM_ENABLE_CAP(KVM_CAP_MAX_VCPU_ID), or fixed by the first vCPU
        self.n_requested_mmu_pages = 0      # KVM_SET_NR_MMU_PAGES
        self.tdp = mmu.TdpTable()           # the VM's EPT/NPT table, shared by its vCPUs (kvm_mmu_init_vm)
        self.vpit = None                    # KVM_CREATE_PIT2 (i8254.KvmPit)
        self.vpic = None                    # KVM_CREATE_IRQCHIP (i8259.KvmPic)
        self.vioapic = None                 # KVM_CREATE_IRQCHIP (ioapic.KvmIoapic)
        self.nr_reserved_ioapic_pins = 0    # KVM_CAP_SPLIT_IRQCHIP: GSIs of user space's IOAPIC


def irqchip_in_kernel(kvm) -> bool:
    """An in-kernel interrupt controller (KVM_CREATE_IRQCHIP, or split) serves interrupts."""
    return kvm.arch.irqchip_mode != KVM_IRQCHIP_NONE


def irqchip_split(kvm) -> bool:
    """KVM_CAP_SPLIT_IRQCHIP: the LAPICs are in the kernel, the PIC and IOAPIC in user space."""
    return kvm.arch.irqchip_mode == KVM_IRQCHIP_SPLIT


def kvm_make_scan_ioapic_request(kvm) -> None:
    """The IOAPIC's entries or the MSI routes changed: every vCPU recomputes which vectors'
    EOIs go to the IOAPIC before its next entry (a running one is kicked out to do so; no
    wait, as the IOAPIC may call this from any thread)."""
    for vcpu in list(kvm.vcpus):
        kvm_make_request(KVM_REQ_SCAN_IOAPIC, vcpu)
        kvm_vcpu_kick(vcpu)


def pic_in_kernel(kvm) -> bool:
    """The PIC is in the kernel (KVM_CREATE_IRQCHIP; a split irqchip leaves it to user space)."""
    return kvm.arch.irqchip_mode == KVM_IRQCHIP_KERNEL


def kvm_arch_irqfd_allowed(kvm, resample: bool) -> bool:
    """x86: an irqfd needs an in-kernel irqchip; a resampling one the full in-kernel one (a
    split irqchip's IOAPIC is in user space, which sees the EOIs itself)."""
    mode = kvm.arch.irqchip_mode
    return mode == KVM_IRQCHIP_KERNEL if resample else mode != KVM_IRQCHIP_NONE


@traced
def kvm_arch_init_vm(kvm, vm_type: int) -> None:
    if vm_type != uapi.KVM_X86_DEFAULT_VM:
        raise kernel_error(errno.EINVAL)
    kvm.arch = KvmArch()
    _vendor_ops.vm_init(kvm)


@traced
def kvm_arch_post_init_vm(kvm) -> None:
    """Linux starts the MMU's NX-huge-page recovery thread here (kvm_mmu_post_init_vm);
    kvmpy's MMU maps no huge pages, so there is nothing to start."""


def kvm_arch_destroy_vm(kvm) -> None:
    for vcpu in kvm.vcpus:
        kvm_arch_vcpu_destroy(vcpu)
    _vendor_ops.vm_destroy(kvm)


def kvm_arch_prepare_memory_region(kvm, base_gfn: int, npages: int, flags: int) -> None:
    if base_gfn + npages > 1 << (kcpuid.PHYS_ADDR_BITS - 12):       # kvm_mmu_max_gfn()
        raise kernel_error(errno.EINVAL)


def kvm_vm_ioctl_set_tss_addr(kvm, addr: int) -> int:
    """KVM_SET_TSS_ADDR: the three pages at ``addr`` must lie below 4 GiB, so the highest
    accepted address is (u32)(-3 * PAGE_SIZE) = 0xffffd000."""
    if addr > -3 * uapi.PAGE_SIZE & 0xFFFFFFFF:
        raise kernel_error(errno.EINVAL)
    kvm.arch.tss_addr = addr
    return 0


def kvm_vm_ioctl_set_identity_map_addr(kvm, arg: int) -> int:
    """KVM_SET_IDENTITY_MAP_ADDR: refused (EINVAL) once a vCPU exists, before the u64 at
    ``arg`` is even read (so a bad pointer then is EINVAL, not EFAULT)."""
    with kvm.lock:
        if kvm.created_vcpus:
            raise kernel_error(errno.EINVAL)
        kvm.arch.ept_identity_map_addr = int.from_bytes(copy_from_user(arg, 8), "little")
    return 0


def kvm_vm_ioctl_set_boot_cpu_id(kvm, arg: int) -> int:
    """KVM_SET_BOOT_CPU_ID: EBUSY once a vCPU exists, EINVAL for an id above KVM_MAX_VCPU_IDS."""
    with kvm.lock:
        if kvm.created_vcpus:
            raise kernel_error(errno.EBUSY)
        if arg > uapi.KVM_MAX_VCPU_IDS:
            raise kernel_error(errno.EINVAL)
        kvm.arch.bsp_vcpu_id = arg
    return 0


def kvm_vm_ioctl_set_nr_mmu_pages(kvm, arg: int) -> int:
    """KVM_SET_NR_MMU_PAGES: at least KVM_MIN_ALLOC_MMU_PAGES.  KVM zaps shadow pages above
    the limit; kvmpy keeps the number, but its MMU holds its shadow pages without one."""
    if arg < KVM_MIN_ALLOC_MMU_PAGES:
        raise kernel_error(errno.EINVAL)
    kvm.arch.n_requested_mmu_pages = arg
    return 0


def kvm_vm_enable_max_vcpu_id(kvm, cap) -> int:
    """KVM_CAP_MAX_VCPU_ID: the highest vCPU id + 1, at most KVM_MAX_VCPU_IDS; once set (or
    fixed at KVM_MAX_VCPU_IDS by the first vCPU), only the same value again is accepted."""
    limit = cap.args[0]
    if limit > uapi.KVM_MAX_VCPU_IDS:
        raise kernel_error(errno.EINVAL)
    with kvm.lock:
        if kvm.arch.max_vcpu_ids not in (0, limit):
            raise kernel_error(errno.EINVAL)
        kvm.arch.max_vcpu_ids = limit
    return 0


def kvm_vm_enable_msr_platform_info(kvm, cap) -> int:
    """KVM_CAP_MSR_PLATFORM_INFO: whether the guest may read MSR_PLATFORM_INFO."""
    kvm.arch.guest_can_read_msr_platform_info = bool(cap.args[0])
    return 0


@traced
def kvm_arch_vm_ioctl(file, cmd: int, arg):
    kvm = file.private_data
    if cmd == uapi.KVM_SET_NR_MMU_PAGES:
        return kvm_vm_ioctl_set_nr_mmu_pages(kvm, arg)
    if cmd == uapi.KVM_SET_TSS_ADDR:
        return kvm_vm_ioctl_set_tss_addr(kvm, arg)
    if cmd == uapi.KVM_SET_IDENTITY_MAP_ADDR:
        return kvm_vm_ioctl_set_identity_map_addr(kvm, arg)
    if cmd == uapi.KVM_SET_BOOT_CPU_ID:
        return kvm_vm_ioctl_set_boot_cpu_id(kvm, arg)
    handler = vm_ioctl_handlers.get(cmd)
    if handler is None:
        raise kernel_error(errno.ENOTTY)
    return handler(kvm, arg)


# In-kernel devices register their VM ioctls here (KVM_CREATE_IRQCHIP, KVM_IRQ_LINE, ...).
vm_ioctl_handlers: dict = {}
# ... and the capabilities KVM_ENABLE_CAP turns on: cap -> handler(kvm, cap), e.g. KVM_CAP_SPLIT_IRQCHIP.
vm_enable_cap_handlers: dict = {uapi.KVM_CAP_MAX_VCPU_ID: kvm_vm_enable_max_vcpu_id,
                                uapi.KVM_CAP_MSR_PLATFORM_INFO: kvm_vm_enable_msr_platform_info}


def kvm_vm_ioctl_enable_cap(kvm, cap) -> int:
    """KVM_ENABLE_CAP on a VM: flags must be 0; a capability nobody registered is EINVAL."""
    if cap.flags:
        raise kernel_error(errno.EINVAL)
    handler = vm_enable_cap_handlers.get(cap.cap)
    if handler is None:
        raise kernel_error(errno.EINVAL)
    return handler(kvm, cap)


# ----------------------------------------------------------------------------------------
# System ioctls
# ----------------------------------------------------------------------------------------
def _msr_list_ioctl(arg: int, indices) -> int:
    """Write the count back, then E2BIG if the caller's array is too small (like KVM)."""
    n = uapi.kvm_msr_list.from_buffer_copy(copy_from_user(arg, 4)).nmsrs
    copy_to_user(arg, uapi.kvm_msr_list(len(indices)))
    if n < len(indices):
        raise kernel_error(errno.E2BIG)
    copy_to_user(arg + 4, (ctypes.c_uint32 * len(indices))(*indices))
    return 0


def kvm_get_msr_feature(index: int):
    """Value of a feature MSR (KVM_GET_MSRS on the system fd), or None if not one."""
    return {MSR_IA32_UCODE_REV: 0}.get(index)


# /dev/kvm ioctls another module of the x86 layer owns: cmd -> handler(arg) (mce.py's)
dev_ioctl_handlers: dict = {}


@traced
def kvm_arch_dev_ioctl(file, cmd: int, arg):
    if cmd in dev_ioctl_handlers:
        return dev_ioctl_handlers[cmd](arg)
    if cmd == uapi.KVM_GET_MSR_INDEX_LIST:
        return _msr_list_ioctl(arg, msrs_to_save + emulated_msrs)
    if cmd == uapi.KVM_GET_MSR_FEATURE_INDEX_LIST:
        return _msr_list_ioctl(arg, msr_based_features)
    if cmd == uapi.KVM_GET_SUPPORTED_CPUID:
        return kcpuid.kvm_dev_ioctl_get_supported_cpuid(arg, vendor_name())
    if cmd == uapi.KVM_GET_MSRS:
        return _msr_io(arg, lambda e: _feature_msr(e), writeback=True)
    raise kernel_error(errno.EINVAL)


def _feature_msr(entry) -> bool:
    value = kvm_get_msr_feature(entry.index)
    if value is None:
        return False
    entry.data = value
    return True


# ----------------------------------------------------------------------------------------
# vCPU creation (seed step 5)
# ----------------------------------------------------------------------------------------
class KvmMtrrState:
    """The guest's MTRRs (kvm_vcpu_mtrr_init): default type, fixed and variable ranges."""

    def __init__(self):
        self.deftype = 0
        self.fixed = dict.fromkeys(MTRR_FIXED, 0)
        self.var = dict.fromkeys(MTRR_VAR, 0)


class GuestFpu:
    """struct fpu_guest: the guest's FPU register file, installed in the processor."""

    def __init__(self):
        self.fpstate = hs.FPUState()


class KvmVcpuArch:
    """struct kvm_vcpu_arch: x86 per-vCPU state that is KVM's, not the processor's; every
    field declared here."""

    def __init__(self):
        self.cpu = None                     # the vendor's processor (guest-state area)
        self.mmu = None
        self.guest_fpu = None
        self.pmu = None
        self.hyperv = None
        self.mtrr_state = None
        self.cpuid_entries: list = []
        self.maxphyaddr = 36
        self.gbpages = False                # the guest's CPUID shows 1-GByte pages
        self.cr4_guest_rsvd_bits = 0        # CR4 bits the guest's CPUID denies (none before KVM_SET_CPUID2)
        self.exception = None               # (vector, error_code, cr2) waiting for injection
        self.interrupt = None               # external interrupt vector waiting for injection
        self.interrupt_nr = 0               # kvm_queued_interrupt.nr: stays after delivery
        self.nmi_queued = 0                 # KVM_NMI calls not yet seen by process_nmi
        self.nmi_pending = 0
        self.nmi_injected = False
        self.ap_reset_hold = False          # halted by KVM_SET_MP_STATE(AP_RESET_HOLD), not by HLT
        self.apic = None                    # in-kernel LAPIC (lapic.KvmLapic), when there is one
        self.ioapic_handled_vectors = set() # split irqchip: vectors whose EOI goes to user space
        self.pending_ioapic_eoi = 0         # the vector of the KVM_EXIT_IOAPIC_EOI to make
        self.pending_external_vector = None # split irqchip: user space's PIC's ExtINT (KVM_INTERRUPT)
        self.ia32_misc_enable_msr = 0
        self.msr_platform_info = MSR_PLATFORM_INFO_CPUID_FAULT
        self.microcode_version = 0
        self.has_run = False                # set by the run path at the first VM entry
        self.insn_limit = None              # processor icount at which to signal (params.insn_limit)
        self.loaded = False
        self.last_exit = None               # the vendor's exit record of the last VM exit
        self.complete_userspace_io = None   # finishes an exit user space served, at the next KVM_RUN
        self.emulate_ctxt = None            # the emulator's state across exits (emulate.py)
        # KVM_SET_GUEST_DEBUG: the guest's own DR0-3 and DR7 while user space's breakpoints
        # (KVM_GUESTDBG_USE_HW_BP) are in the processor, and the linear RIP single-stepping
        # began at (kvm_set_rflags sets TF only there)
        self.db = [0, 0, 0, 0]
        self.dr7 = hd.DR7_FIXED_1
        self.singlestep_rip = 0
        self.eff_db = [0, 0, 0, 0]          # ... user space's breakpoints (debugreg[0..3], [7])
        self.guest_debug_dr7 = hd.DR7_FIXED_1


@traced
def fpu_alloc_guest_fpstate(vcpu) -> None:
    vcpu.arch.guest_fpu = GuestFpu()


@traced
def kvm_pmu_init(vcpu) -> None:
    """No architectural PMU is advertised (CPUID.0xA is zero): the PMU has no counters."""
    vcpu.arch.pmu = {"version": 0, "nr_arch_gp_counters": 0, "nr_arch_fixed_counters": 0}


@traced
def kvm_hv_vcpu_init(vcpu) -> None:
    """Hyper-V per-vCPU state; only the VP index, since no Hyper-V leaf is advertised."""
    vcpu.arch.hyperv = {"vp_index": vcpu.vcpu_idx if vcpu.vcpu_idx >= 0 else len(vcpu.kvm.vcpus)}


@traced
def kvm_vcpu_mtrr_init(vcpu) -> None:
    vcpu.arch.mtrr_state = KvmMtrrState()


@traced
def vcpu_load(vcpu) -> None:
    """Make the vCPU current on this (host) CPU: the vendor loads its VMCS/VMCB."""
    vcpu.arch.loaded = True
    _vendor_ops.vcpu_load(vcpu)


def vcpu_put(vcpu) -> None:
    _vendor_ops.vcpu_put(vcpu)
    vcpu.arch.loaded = False


def kvm_vcpu_is_bsp(vcpu) -> bool:
    return vcpu.vcpu_id == vcpu.kvm.arch.bsp_vcpu_id


@traced
def kvm_vcpu_reset(vcpu, init_event: bool) -> None:
    """Power-on (or INIT) state: the processor's reset values plus KVM's own registers."""
    cpu = vcpu.arch.cpu
    kept = (dict(cpu.msrs), cpu.tsc, cpu.apic_base) if init_event else None  # INIT keeps MSRs and the TSC
    cpu.reset()
    kvm_guest_debug_reset(vcpu)
    if init_event:
        cpu.msrs.update(kept[0])
        cpu.tsc, cpu.apic_base = kept[1], kept[2]
    else:
        cpu.apic_base = 0xFEE00000 | 0x800 | (0x100 if kvm_vcpu_is_bsp(vcpu) else 0)
        cpu.msrs[MSR_IA32_CR_PAT] = PAT_DEFAULT
        vcpu.arch.ia32_misc_enable_msr = MSR_IA32_MISC_ENABLE_FAST_STRING
        if vcpu.arch.mtrr_state is not None:
            vcpu.arch.mtrr_state.__init__()
    entry = kcpuid.kvm_find_cpuid_entry(vcpu, 1)
    cpu.regs[hd.RDX] = entry.eax if entry is not None else kcpuid.FAMILY_MODEL_STEPPING
    if vcpu.arch.guest_fpu is not None:
        vcpu.arch.guest_fpu.fpstate.reset()
        cpu.fpu = vcpu.arch.guest_fpu.fpstate
    vcpu.arch.exception = None
    vcpu.arch.interrupt = None
    vcpu.arch.nmi_queued = vcpu.arch.nmi_pending = 0
    vcpu.arch.nmi_injected = False
    cpu.vnmi_pending = cpu.nmi_window_exiting = False
    if vcpu.arch.apic is not None:
        vcpu.arch.apic.reset(init_event)
        cpu.cr8 = vcpu.arch.apic.get_cr8()
    _vendor_ops.vcpu_reset(vcpu, init_event)
    _state_changed(vcpu)


@traced
def kvm_arch_vcpu_precreate(kvm, vcpu_id: int) -> None:
    with kvm.lock:
        if not kvm.arch.max_vcpu_ids:
            kvm.arch.max_vcpu_ids = uapi.KVM_MAX_VCPU_IDS
    if vcpu_id >= kvm.arch.max_vcpu_ids:
        raise kernel_error(errno.EINVAL)
    _vendor_ops.vcpu_precreate(kvm)


@traced
def kvm_arch_vcpu_create(vcpu) -> None:
    """Build the x86 vCPU, step by step as the seed lists them."""
    vcpu.arch = KvmVcpuArch()
    mmu.kvm_mmu_create(vcpu)
    fpu_alloc_guest_fpstate(vcpu)
    kvm_pmu_init(vcpu)
    kvm_hv_vcpu_init(vcpu)
    _vendor_ops.vcpu_create(vcpu)
    vcpu.arch.cpu.fpu = vcpu.arch.guest_fpu.fpstate
    if irqchip_in_kernel(vcpu.kvm):
        lapic_factory(vcpu)
    kvm_vcpu_mtrr_init(vcpu)
    vcpu_load(vcpu)
    kvm_vcpu_reset(vcpu, False)
    if irqchip_in_kernel(vcpu.kvm) and not kvm_vcpu_is_bsp(vcpu):
        vcpu.arch.cpu.mp_state = uapi.KVM_MP_STATE_UNINITIALIZED     # an AP waits for INIT and SIPI
    mmu.kvm_init_mmu(vcpu)
    vcpu_put(vcpu)


@traced
def kvm_arch_vcpu_postcreate(vcpu) -> None:
    kvm_synchronize_tsc(vcpu)         # a new vCPU's TSC starts in step with the VM's others
    if irqchip_in_kernel(vcpu.kvm):
        kvm_make_request(KVM_REQ_SCAN_IOAPIC, vcpu)     # its first entry learns the IOAPIC's vectors


def kvm_arch_vcpu_destroy(vcpu) -> None:
    _vendor_ops.vcpu_free(vcpu)


def _state_changed(vcpu) -> None:
    """User space or KVM rewrote guest state: the processor recomputes its derived state."""
    vcpu.arch.cpu.refresh()


# builds vcpu.arch.apic (lapic.kvm_create_lapic, which installs itself: it sits above here)
lapic_factory = None


def lapic_in_kernel(vcpu) -> bool:
    """The vCPU has an in-kernel LAPIC: every vCPU of a VM with an in-kernel irqchip (full
    or split) does, since KVM_CREATE_IRQCHIP is refused once a vCPU exists."""
    return irqchip_in_kernel(vcpu.kvm)


# ----------------------------------------------------------------------------------------
# REGS / SREGS / FPU
# ----------------------------------------------------------------------------------------
# kvm_regs field i <- CPUState.regs[_REGS_MAP[i]] (kvm_regs order: rax rbx rcx rdx rsi rdi rsp rbp)
_REGS_MAP = (hd.RAX, hd.RBX, hd.RCX, hd.RDX, hd.RSI, hd.RDI, hd.RSP, hd.RBP) + tuple(range(8, 16))


def _get_user(arg: int, ctype):
    return ctype.from_buffer_copy(copy_from_user(arg, ctypes.sizeof(ctype)))


def kvm_arch_vcpu_ioctl_get_regs(vcpu) -> uapi.kvm_regs:
    cpu = vcpu.arch.cpu
    r = uapi.kvm_regs(*[cpu.regs[i] for i in _REGS_MAP])
    r.rip = cpu.rip
    r.rflags = kvm_get_rflags(vcpu)
    return r


def kvm_arch_vcpu_ioctl_set_regs(vcpu, r: uapi.kvm_regs) -> None:
    cpu = vcpu.arch.cpu
    values = [getattr(r, f) for f in uapi.REGS_FIELDS]
    for i, reg in enumerate(_REGS_MAP):
        cpu.regs[reg] = values[i]
    cpu.rip = r.rip
    kvm_set_rflags(vcpu, r.rflags)
    _state_changed(vcpu)


def _seg_to_kvm(s: hs.Segment) -> uapi.kvm_segment:
    return uapi.kvm_segment(s.base, s.limit, s.selector, s.type, s.present, s.dpl, s.db, s.s, s.l,
                            s.g, s.avl, s.unusable)


def _seg_from_kvm(k: uapi.kvm_segment) -> hs.Segment:
    return hs.Segment(k.selector, k.base, k.limit, k.type, k.present, k.dpl, k.db, k.s, k.l, k.g,
                      k.avl, k.unusable)


_SREGS_SEG = (("cs", hd.CS), ("ds", hd.DS), ("es", hd.ES), ("fs", hd.FS), ("gs", hd.GS), ("ss", hd.SS))


def kvm_arch_vcpu_ioctl_get_sregs(vcpu) -> uapi.kvm_sregs:
    cpu = vcpu.arch.cpu
    s = uapi.kvm_sregs()
    for name, i in _SREGS_SEG:
        setattr(s, name, _seg_to_kvm(cpu.seg[i]))
    s.tr, s.ldt = _seg_to_kvm(cpu.tr), _seg_to_kvm(cpu.ldtr)
    s.gdt = uapi.kvm_dtable(cpu.gdt_base, cpu.gdt_limit)
    s.idt = uapi.kvm_dtable(cpu.idt_base, cpu.idt_limit)
    s.cr0, s.cr2, s.cr3, s.cr4, s.cr8 = cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, kvm_get_cr8(vcpu)
    s.efer, s.apic_base = cpu.efer, cpu.apic_base
    irq = vcpu.arch.interrupt
    if irq is not None:
        s.interrupt_bitmap[irq // 64] |= 1 << (irq % 64)
    return s


def kvm_is_valid_cr0(cr0: int) -> bool:
    if cr0 >> 32:
        return False
    if cr0 & hd.CR0_NW and not cr0 & hd.CR0_CD:
        return False
    return not (cr0 & hd.CR0_PG and not cr0 & hd.CR0_PE)


CR4_RESERVED = ~(hd.CR4_VME | hd.CR4_PVI | hd.CR4_TSD | hd.CR4_DE | hd.CR4_PSE | hd.CR4_PAE |
                 hd.CR4_MCE | hd.CR4_PGE | hd.CR4_PCE | hd.CR4_OSFXSR | hd.CR4_OSXMMEXCPT |
                 hd.CR4_UMIP | hd.CR4_FSGSBASE | hd.CR4_PCIDE | hd.CR4_OSXSAVE | hd.CR4_SMEP |
                 hd.CR4_SMAP) & 0xFFFFFFFFFFFFFFFF


CR4_FEATURES_UNSUPPORTED = kcpuid.cr4_reserved_bits(features.implemented)


def kvm_is_valid_cr4(vcpu, cr4: int) -> bool:
    """Not a bit kvmpy lacks, nor one of a feature it does not support or (after
    KVM_SET_CPUID2) the guest's CPUID does not show."""
    if cr4 & (CR4_RESERVED | CR4_FEATURES_UNSUPPORTED):
        return False
    return not cr4 & vcpu.arch.cr4_guest_rsvd_bits


def kvm_is_valid_sregs(vcpu, s: uapi.kvm_sregs) -> bool:
    if s.efer & hd.EFER_LME and s.cr0 & hd.CR0_PG:
        if not s.cr4 & hd.CR4_PAE or not s.efer & hd.EFER_LMA:
            return False
        if s.cr3 >> vcpu.arch.maxphyaddr:
            return False
    elif s.efer & hd.EFER_LMA or s.cs.l:
        return False
    return kvm_is_valid_cr4(vcpu, s.cr4) and kvm_is_valid_cr0(s.cr0)


def kvm_arch_vcpu_ioctl_set_sregs(vcpu, s: uapi.kvm_sregs) -> None:
    if not kvm_is_valid_sregs(vcpu, s):
        raise kernel_error(errno.EINVAL)
    if not valid_apic_base(vcpu, s.apic_base):
        raise kernel_error(errno.EINVAL)
    cpu = vcpu.arch.cpu
    for name, i in _SREGS_SEG:
        cpu.seg[i] = _seg_from_kvm(getattr(s, name))
    cpu.tr, cpu.ldtr = _seg_from_kvm(s.tr), _seg_from_kvm(s.ldt)
    cpu.gdt_base, cpu.gdt_limit = s.gdt.base, s.gdt.limit
    cpu.idt_base, cpu.idt_limit = s.idt.base, s.idt.limit
    cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, cpu.cr8 = s.cr0, s.cr2, s.cr3, s.cr4, s.cr8 & 0xF
    cpu.efer = s.efer
    kvm_set_apic_base(vcpu, s.apic_base)
    if vcpu.arch.apic is not None:
        vcpu.arch.apic.set_cr8(s.cr8)
    for word, bits in enumerate(s.interrupt_bitmap):
        if bits and not lapic_in_kernel(vcpu):
            kvm_queue_interrupt(vcpu, word * 64 + (bits & -bits).bit_length() - 1)
            break
    _state_changed(vcpu)


def _st_bytes(v: int) -> bytes:
    return (v & ((1 << 80) - 1)).to_bytes(10, "little") + bytes(6)


def kvm_arch_vcpu_ioctl_get_fpu(vcpu) -> uapi.kvm_fpu:
    fpu = vcpu.arch.cpu.fpu
    f = uapi.kvm_fpu()
    for i in range(8):       # fpr[i] is ST(i), relative to TOP, as in FXSAVE
        f.fpr[i][:] = _st_bytes(fpu.st[(fpu.top + i) & 7])
    f.fcw = fpu.fcw
    f.fsw = (fpu.fsw & ~0x3800) | (fpu.top << 11)
    f.ftwx = fpu.ftw
    f.last_opcode, f.last_ip, f.last_dp = fpu.fop, fpu.fip, fpu.fdp
    for i in range(16):
        f.xmm[i][:] = fpu.xmm[i].to_bytes(16, "little")
    f.mxcsr = fpu.mxcsr
    return f


def kvm_arch_vcpu_ioctl_set_fpu(vcpu, f: uapi.kvm_fpu) -> None:
    fpu = vcpu.arch.cpu.fpu
    fpu.top = (f.fsw >> 11) & 7
    for i in range(8):
        fpu.st[(fpu.top + i) & 7] = int.from_bytes(bytes(f.fpr[i])[:10], "little")
    fpu.fcw = f.fcw
    fpu.fsw = f.fsw & ~0x3800
    fpu.ftw = f.ftwx
    fpu.fop, fpu.fip, fpu.fdp = f.last_opcode, f.last_ip, f.last_dp
    fpu.xmm = [int.from_bytes(bytes(f.xmm[i]), "little") for i in range(16)]
    fpu.mxcsr = f.mxcsr


# ----------------------------------------------------------------------------------------
# MSRs
# ----------------------------------------------------------------------------------------
def max_host_virt_addr_bits() -> int:
    """57 when KVM supports LA57 (kvm_cpu_cap_has), else 48: what MSR addresses are
    checked against since Linux 6.13, whatever the guest's own paging mode."""
    return features.linear_address_bits()


def is_noncanonical_msr_address(la: int, vcpu) -> bool:
    return not hd.canonical(la, max_host_virt_addr_bits())


def kvm_get_cr8(vcpu) -> int:
    """CR8 is the LAPIC's TPR where the LAPIC is in the kernel."""
    apic = vcpu.arch.apic
    return apic.get_cr8() if apic is not None else vcpu.arch.cpu.cr8


def kvm_set_apic_base(vcpu, data: int) -> None:
    """A validated IA32_APIC_BASE: the in-kernel LAPIC follows it (IDs, the MMIO window)."""
    if vcpu.arch.apic is not None:
        vcpu.arch.apic.set_base(data)
    else:
        vcpu.arch.cpu.apic_base = data


def _apic_mode_change_allowed(old: int, new: int) -> bool:
    """A guest may not go from x2APIC to xAPIC mode, nor from disabled to x2APIC, without
    passing through the other state (SDM 11.12.5; kvm_apic_set_base)."""
    ext_en = 1 << 10 | 1 << 11
    old_mode, new_mode = old & ext_en, new & ext_en
    if old_mode == new_mode:
        return True
    return not (old_mode == ext_en and new_mode == 1 << 11) and not (old_mode == 0 and new_mode == ext_en)


def valid_apic_base(vcpu, data: int) -> bool:
    reserved = ((~0 << vcpu.arch.maxphyaddr) & ((1 << 64) - 1)) | 0x2FF
    if not kcpuid.guest_cpuid_has(vcpu, "x2apic"):
        reserved |= 0x400
    if data & reserved:
        return False
    enabled, x2apic = data >> 11 & 1, data >> 10 & 1
    return not (x2apic and not enabled)


def _valid_pat(data: int) -> bool:
    return all((data >> (8 * i)) & 0xFF in (0, 1, 4, 5, 6, 7) for i in range(8))


def _valid_mtrr_type(t: int) -> bool:
    return t in (0, 1, 4, 5, 6)


def _valid_mtrr(vcpu, index: int, data: int) -> bool:
    if index == MSR_MTRRdefType:
        return not data & ~0xCFF and _valid_mtrr_type(data & 0xFF)
    if index in MTRR_FIXED:
        return all(_valid_mtrr_type((data >> (8 * i)) & 0xFF) for i in range(8))
    phys_mask = ((1 << vcpu.arch.maxphyaddr) - 1) & ~0xFFF
    if (index - MSR_MTRRphysBase0) % 2 == 0:                          # physBase
        return not data & ~(phys_mask | 0xFF) and _valid_mtrr_type(data & 0xFF)
    return not data & ~(phys_mask | 0x800)                            # physMask


def kvm_set_efer(vcpu, efer: int, host_initiated: bool) -> int:
    cpu = vcpu.arch.cpu
    if efer & ~_efer_supported():
        return 1
    if not host_initiated:
        for mask, name in _EFER_FEATURE:
            if efer & mask & ~hd.EFER_LMA and not kcpuid.guest_cpuid_has(vcpu, name):
                return 1
        if cpu.cr0 & hd.CR0_PG and (cpu.efer ^ efer) & hd.EFER_LME:
            return 1
    cpu.efer = (efer & ~hd.EFER_LMA) | (cpu.efer & hd.EFER_LMA)      # LMA follows paging, not WRMSR
    _state_changed(vcpu)
    return 0


def kvm_set_msr_common(vcpu, index: int, data: int, host_initiated: bool) -> int:
    """Write an MSR; 0 on success, 1 if the write must fail (#GP for the guest)."""
    cpu = vcpu.arch.cpu
    data &= (1 << 64) - 1
    if index in msr_handlers:
        return msr_handlers[index][1](vcpu, index, data, host_initiated)
    if index == MSR_EFER:
        return kvm_set_efer(vcpu, data, host_initiated)
    if index in _PLAIN_MSRS:
        if index in _CANONICAL_MSRS and is_noncanonical_msr_address(data, vcpu):
            return 1
        cpu.msrs[index] = data
    elif index in (MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP):
        cpu.msrs[index] = data
    elif index in (MSR_FS_BASE, MSR_GS_BASE):
        if is_noncanonical_msr_address(data, vcpu):
            return 1
        cpu.seg[hd.FS if index == MSR_FS_BASE else hd.GS].base = data
        _state_changed(vcpu)
    elif index == MSR_TSC_AUX:
        if not host_initiated and not (kcpuid.guest_cpuid_has(vcpu, "rdtscp") or
                                       kcpuid.guest_cpuid_has(vcpu, "rdpid")):
            return 1
        # Intel reserves bits 63:32; AMD's CPUs ignore them: KVM checks them for an Intel
        # (compatible) guest and clears them for any other, whichever the host's vendor
        if data >> 32 and kcpuid.guest_cpuid_is_intel_compatible(vcpu):
            return 1
        cpu.msrs[index] = data & 0xFFFFFFFF  # the processor's: RDTSCP and RDPID read it
    elif index == MSR_IA32_APICBASE:
        if not valid_apic_base(vcpu, data) or not host_initiated and not _apic_mode_change_allowed(cpu.apic_base, data):
            return 1
        kvm_set_apic_base(vcpu, data)
    elif index == MSR_IA32_CR_PAT:
        if not _valid_pat(data):
            return 1
        cpu.msrs[index] = data
    elif index == MSR_MTRRdefType or index in MTRR_FIXED or index in MTRR_VAR:
        if not _valid_mtrr(vcpu, index, data):
            return 1
        mtrr = vcpu.arch.mtrr_state
        if index == MSR_MTRRdefType:
            mtrr.deftype = data
        else:
            (mtrr.fixed if index in MTRR_FIXED else mtrr.var)[index] = data
    elif index == MSR_IA32_MISC_ENABLE:
        vcpu.arch.ia32_misc_enable_msr = data
    elif index == MSR_PLATFORM_INFO:
        if not host_initiated:
            return 1
        vcpu.arch.msr_platform_info = data
    elif index == MSR_IA32_UCODE_REV:
        # a guest's write is ignored, not #GP (Linux's microcode loader writes 0 before
        # reading the revision back); only user space sets the revision
        if host_initiated:
            vcpu.arch.microcode_version = data
    else:
        return 1
    return 0


def kvm_get_msr_common(vcpu, index: int, host_initiated: bool = False) -> tuple[int, int]:
    """Read an MSR: ``(0, value)``, or ``(1, 0)`` if the read must fail."""
    cpu = vcpu.arch.cpu
    mtrr = vcpu.arch.mtrr_state
    if index in msr_handlers:
        return msr_handlers[index][0](vcpu, index, host_initiated)
    if index == MSR_EFER:
        return 0, cpu.efer
    if index in _PLAIN_MSRS or index in (MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP, MSR_IA32_CR_PAT):
        return 0, cpu.msrs.get(index, 0)
    if index in (MSR_FS_BASE, MSR_GS_BASE):
        return 0, cpu.seg[hd.FS if index == MSR_FS_BASE else hd.GS].base
    if index == MSR_TSC_AUX:
        if not host_initiated and not (kcpuid.guest_cpuid_has(vcpu, "rdtscp") or
                                       kcpuid.guest_cpuid_has(vcpu, "rdpid")):
            return 1, 0
        return 0, cpu.msrs.get(index, 0)
    if index == MSR_IA32_APICBASE:
        return 0, cpu.apic_base
    if index == MSR_MTRRcap:
        return 0, MTRR_CAP_VALUE
    if index == MSR_MTRRdefType:
        return 0, mtrr.deftype
    if index in MTRR_FIXED:
        return 0, mtrr.fixed[index]
    if index in MTRR_VAR:
        return 0, mtrr.var[index]
    if index == MSR_IA32_MISC_ENABLE:
        return 0, vcpu.arch.ia32_misc_enable_msr
    if index == MSR_PLATFORM_INFO:
        if not host_initiated and not vcpu.kvm.arch.guest_can_read_msr_platform_info:
            return 1, 0
        return 0, vcpu.arch.msr_platform_info
    if index == MSR_IA32_UCODE_REV:
        return 0, vcpu.arch.microcode_version
    return 1, 0


def kvm_get_msr(vcpu, index: int, host_initiated: bool = False) -> tuple[int, int]:
    """The vendor's get_msr (vmx_get_msr/svm_get_msr; kvm_get_msr_common unless it has MSRs of its own)."""
    return _vendor_ops.get_msr(vcpu, index, host_initiated)


def kvm_set_msr(vcpu, index: int, data: int, host_initiated: bool = False) -> int:
    return _vendor_ops.set_msr(vcpu, index, data, host_initiated)


def _msr_io(arg: int, do_msr, writeback: bool) -> int:
    """__msr_io: process entries until one fails; returns how many succeeded."""
    n = uapi.kvm_msrs.from_buffer_copy(copy_from_user(arg, 8)).nmsrs
    if n >= MAX_IO_MSRS:
        raise kernel_error(errno.E2BIG)
    t = uapi.with_entries(uapi.kvm_msrs, n)
    entries = t.from_buffer_copy(bytes(8) + copy_from_user(arg + 8, n * 16)).entries
    done = 0
    for e in entries:
        if not do_msr(e):
            break
        done += 1
    if writeback and n:
        copy_to_user(arg + 8, bytes(entries))
    return done


def _get_msr_entry(vcpu, e) -> bool:
    r, data = kvm_get_msr(vcpu, e.index, True)
    if r:
        return False
    e.data = data
    return True


def _set_msr_entry(vcpu, e) -> bool:
    return kvm_set_msr(vcpu, e.index, e.data, True) == 0


# ----------------------------------------------------------------------------------------
# MP state, events, debug registers, XCRs, interrupts
# ----------------------------------------------------------------------------------------
_MP_STATES = (uapi.KVM_MP_STATE_RUNNABLE, uapi.KVM_MP_STATE_UNINITIALIZED, uapi.KVM_MP_STATE_INIT_RECEIVED,
              uapi.KVM_MP_STATE_HALTED, uapi.KVM_MP_STATE_SIPI_RECEIVED, uapi.KVM_MP_STATE_AP_RESET_HOLD)
_HALTS = (uapi.KVM_MP_STATE_HALTED, uapi.KVM_MP_STATE_AP_RESET_HOLD)


def kvm_arch_vcpu_ioctl_set_mpstate(vcpu, mp_state: int) -> None:
    """KVM_SET_MP_STATE: without an in-kernel LAPIC only RUNNABLE; with one, the x86 states.
    HALTED and AP_RESET_HOLD are a halted, runnable processor (``cpu.halted``: KVM_RUN
    blocks until an event or a kick, as after a HLT), the latter remembered for
    KVM_GET_MP_STATE; SIPI_RECEIVED is INIT_RECEIVED with the SIPI latched in the LAPIC."""
    if mp_state not in _MP_STATES:
        raise kernel_error(errno.EINVAL)
    if not lapic_in_kernel(vcpu) and mp_state != uapi.KVM_MP_STATE_RUNNABLE:
        raise kernel_error(errno.EINVAL)
    cpu = vcpu.arch.cpu
    cpu.halted = mp_state in _HALTS
    vcpu.arch.ap_reset_hold = mp_state == uapi.KVM_MP_STATE_AP_RESET_HOLD
    if mp_state == uapi.KVM_MP_STATE_SIPI_RECEIVED:
        cpu.mp_state = uapi.KVM_MP_STATE_INIT_RECEIVED
        vcpu.arch.apic.set_sipi_pending()
    elif cpu.halted:
        cpu.mp_state = uapi.KVM_MP_STATE_RUNNABLE
    else:
        cpu.mp_state = mp_state


# lapic.kvm_apic_accept_events, which lapic.py installs (it sits above this module): KVM_GET_MP_STATE
# first takes the INIT or SIPI the LAPIC latched, as kvm_arch_vcpu_ioctl_get_mpstate does
apic_accept_events = None


def kvm_arch_vcpu_ioctl_get_mpstate(vcpu) -> int:
    """KVM_GET_MP_STATE: latched INIT/SIPI taken first; HALTED (or AP_RESET_HOLD, if user
    space set that) while the processor is halted."""
    if lapic_in_kernel(vcpu):
        apic_accept_events(vcpu)
    cpu = vcpu.arch.cpu
    if cpu.halted and cpu.mp_state == uapi.KVM_MP_STATE_RUNNABLE:
        return uapi.KVM_MP_STATE_AP_RESET_HOLD if vcpu.arch.ap_reset_hold else uapi.KVM_MP_STATE_HALTED
    return cpu.mp_state


def kvm_vcpu_ioctl_interrupt(vcpu, irq: int) -> int:
    """KVM_INTERRUPT: without an in-kernel irqchip, the vector to inject; with a split one,
    the ExtINT of user space's PIC, which the LAPIC takes when it accepts PIC interrupts
    (one at a time: EEXIST while one waits); the full in-kernel irqchip refuses it (ENXIO)."""
    if irq >= uapi.KVM_NR_INTERRUPTS:
        raise kernel_error(errno.EINVAL)
    if not irqchip_in_kernel(vcpu.kvm):
        kvm_queue_interrupt(vcpu, irq)
        return 0
    if pic_in_kernel(vcpu.kvm):
        raise kernel_error(errno.ENXIO)
    if vcpu.arch.pending_external_vector is not None:
        raise kernel_error(errno.EEXIST)
    vcpu.arch.pending_external_vector = irq
    return 0


def kvm_queue_interrupt(vcpu, vector: int) -> None:
    """Queue ``vector`` as an injected external interrupt; a newer vector replaces the old."""
    vcpu.arch.interrupt = vcpu.arch.interrupt_nr = vector


# ----------------------------------------------------------------------------------------
# NMIs
# ----------------------------------------------------------------------------------------
def kvm_vcpu_ioctl_nmi(vcpu) -> int:
    """KVM_NMI: queue an NMI; works with or without an in-kernel irqchip."""
    kvm_inject_nmi(vcpu)
    return 0


def kvm_inject_nmi(vcpu) -> None:
    """Queue an NMI (KVM_NMI, or an NMI message to the LAPIC) and wake the vCPU for it."""
    vcpu.arch.nmi_queued += 1
    kvm_vcpu_kick(vcpu)


def _nmi_in_injection(vcpu) -> bool:
    """An NMI is being injected: restored by user space, or programmed into the entry."""
    ev = vcpu.arch.cpu.pending_event
    return vcpu.arch.nmi_injected or (ev is not None and ev[0] == NMI)


def process_nmi(vcpu) -> None:
    """Fold the queued NMIs into ``nmi_pending``.

    Hardware latches one NMI behind the one it is handling; KVM allows two pending when
    none is running (one to inject now, one to latch), since several KVM_NMI calls may
    arrive between two entries, and one when an NMI is blocked or being injected.
    """
    a = vcpu.arch
    limit = 1 if a.cpu.nmi_masked or _nmi_in_injection(vcpu) else 2
    if a.cpu.vnmi_pending:
        limit -= 1                      # already pending in the processor (vNMI)
    a.nmi_pending = min(a.nmi_pending + a.nmi_queued, limit)
    a.nmi_queued = 0


def kvm_get_nr_pending_nmis(vcpu) -> int:
    """NMIs waiting for delivery: KVM's ``nmi_pending`` and the one the processor may hold
    (SVM's vNMI)."""
    return vcpu.arch.nmi_pending + (1 if vcpu.arch.cpu.vnmi_pending else 0)


def kvm_nmi_allowed(vcpu) -> bool:
    """The vendor's nmi_allowed: no NMI blocking and no STI / MOV SS shadow."""
    cpu = vcpu.arch.cpu
    return not cpu.nmi_masked and not cpu.interrupt_shadow


# ----------------------------------------------------------------------------------------
# Exceptions for the guest
# ----------------------------------------------------------------------------------------
KVM_REQ_TRIPLE_FAULT = "triple_fault"      # served by vcpu_enter_guest: KVM_EXIT_SHUTDOWN
KVM_REQ_EVENT = "event"                    # re-evaluate pending interrupts before entry
KVM_REQ_SCAN_IOAPIC = "scan_ioapic"        # recompute ioapic_handled_vectors
KVM_REQ_IOAPIC_EOI_EXIT = "ioapic_eoi_exit"  # split irqchip: KVM_EXIT_IOAPIC_EOI


def kvm_multiple_exception(vcpu, vector, error_code, cr2, reinject: bool) -> None:
    """Queue an exception for the guest, merged with the one already queued or being
    injected as the processor would merge them (SDM table 6-5): a contributory exception
    on a contributory one, or anything but a benign one on a #PF, is a #DF; any exception
    on a #DF is a triple fault, KVM_REQ_TRIPLE_FAULT; otherwise the new exception replaces
    the old (a fault comes back when its instruction is executed again).  ``reinject``: an
    exception whose delivery a VM exit interrupted, put back as it was."""
    a = vcpu.arch
    if reinject or a.exception is None:
        a.exception = (vector, error_code, cr2)
        return
    prev = a.exception[0]
    if prev == uapi.DF_VECTOR:
        kvm_make_request(KVM_REQ_TRIPLE_FAULT, vcpu)
        return
    if hs_events.is_double_fault(prev, vector):
        a.exception = (uapi.DF_VECTOR, 0, None)
    else:
        a.exception = (vector, error_code, cr2)


def kvm_queue_exception(vcpu, vector, error_code=None, cr2=None) -> None:
    kvm_multiple_exception(vcpu, vector, error_code, cr2, reinject=False)


def kvm_requeue_exception(vcpu, vector, error_code=None) -> None:
    """The exception a VM exit interrupted the delivery of, to inject again (its CR2, for a
    #PF, is already in the guest's CR2)."""
    kvm_multiple_exception(vcpu, vector, error_code, None, reinject=True)


def kvm_inject_gp(vcpu, error_code: int) -> None:
    """#GP(error_code) for the guest (asm/kvm_host.h)."""
    kvm_queue_exception(vcpu, uapi.GP_VECTOR, error_code)


def kvm_inject_page_fault(vcpu, error_code, address: int) -> None:
    """#PF for the guest, with CR2 = ``address`` delivered with it."""
    kvm_queue_exception(vcpu, uapi.PF_VECTOR, error_code, address)


# CPUState.interrupt_shadow: 1 = STI blocking, 2 = MOV SS blocking
_SHADOW_TO_KVM = {0: 0, 1: uapi.KVM_X86_SHADOW_INT_STI, 2: uapi.KVM_X86_SHADOW_INT_MOV_SS}


def kvm_vcpu_ioctl_x86_get_vcpu_events(vcpu) -> uapi.kvm_vcpu_events:
    a, cpu = vcpu.arch, vcpu.arch.cpu
    ev = uapi.kvm_vcpu_events()
    if a.exception is not None:         # no exception-payload capability: pending reads as injected
        vector, error_code, _ = a.exception
        ev.exception.injected = 1
        ev.exception.nr = vector
        ev.exception.has_error_code = error_code is not None
        ev.exception.error_code = error_code or 0
    ev.interrupt.injected = a.interrupt is not None
    ev.interrupt.nr = a.interrupt_nr
    ev.interrupt.shadow = _SHADOW_TO_KVM.get(cpu.interrupt_shadow, 0)
    process_nmi(vcpu)
    ev.nmi.injected = _nmi_in_injection(vcpu)
    ev.nmi.pending = kvm_get_nr_pending_nmis(vcpu)     # a count (at most 2), as the host reports it
    ev.nmi.masked = bool(cpu.nmi_masked)
    ev.sipi_vector = 0                      # never valid when reported to user space (KVM)
    ev.flags = (uapi.KVM_VCPUEVENT_VALID_NMI_PENDING | uapi.KVM_VCPUEVENT_VALID_SHADOW
                | uapi.KVM_VCPUEVENT_VALID_SMM)
    return ev


_VALID_EVENT_FLAGS = (uapi.KVM_VCPUEVENT_VALID_NMI_PENDING | uapi.KVM_VCPUEVENT_VALID_SIPI_VECTOR
                      | uapi.KVM_VCPUEVENT_VALID_SHADOW | uapi.KVM_VCPUEVENT_VALID_SMM)


def kvm_vcpu_ioctl_x86_set_vcpu_events(vcpu, ev: uapi.kvm_vcpu_events) -> None:
    if ev.flags & ~_VALID_EVENT_FLAGS:
        raise kernel_error(errno.EINVAL)
    ev.exception.pending = 0            # meaningful only with KVM_VCPUEVENT_VALID_PAYLOAD (not offered)
    exc_nr = ev.exception.nr
    if ev.exception.injected and (exc_nr > 31 or exc_nr == uapi.NMI_VECTOR):
        raise kernel_error(errno.EINVAL)
    if ev.flags & uapi.KVM_VCPUEVENT_VALID_SMM and (ev.smi.smm or ev.smi.pending or ev.smi.smm_inside_nmi):
        raise kernel_error(errno.EINVAL)                  # no SMM in kvmpy
    a, cpu = vcpu.arch, vcpu.arch.cpu
    process_nmi(vcpu)
    exc = ev.exception
    a.exception = ((exc.nr, exc.error_code if exc.has_error_code else None, None)
                   if exc.injected or exc.pending else None)
    a.interrupt_nr = ev.interrupt.nr
    a.interrupt = ev.interrupt.nr if ev.interrupt.injected else None
    if ev.flags & uapi.KVM_VCPUEVENT_VALID_SHADOW:
        shadow = ev.interrupt.shadow
        cpu.interrupt_shadow = (1 if shadow & uapi.KVM_X86_SHADOW_INT_STI else
                                2 if shadow & uapi.KVM_X86_SHADOW_INT_MOV_SS else 0)
    if cpu.pending_event is not None and cpu.pending_event[0] == NMI:
        cpu.pending_event = None            # nmi.injected below says whether it stays
    a.nmi_injected = bool(ev.nmi.injected)
    if ev.flags & uapi.KVM_VCPUEVENT_VALID_NMI_PENDING:
        a.nmi_pending = 0
        cpu.vnmi_pending = False            # the count restored is all there is
        a.nmi_queued = ev.nmi.pending
    cpu.nmi_masked = bool(ev.nmi.masked)
    if ev.flags & uapi.KVM_VCPUEVENT_VALID_SIPI_VECTOR and a.apic is not None:
        a.apic.sipi_vector = ev.sipi_vector  # where the LAPIC's start-up takes it from


def kvm_vcpu_ioctl_x86_get_debugregs(vcpu) -> uapi.kvm_debugregs:
    cpu = vcpu.arch.cpu
    db, dr7 = _guest_breakpoints(vcpu)
    d = uapi.kvm_debugregs()
    d.db[:] = db
    d.dr6, d.dr7 = cpu.dr[6], dr7
    return d


def kvm_vcpu_ioctl_x86_set_debugregs(vcpu, d: uapi.kvm_debugregs) -> None:
    if d.flags or d.dr6 >> 32 or d.dr7 >> 32:
        raise kernel_error(errno.EINVAL)
    a, dr = vcpu.arch, vcpu.arch.cpu.dr
    dr[4] = dr[6] = d.dr6
    if vcpu.guest_debug & uapi.KVM_GUESTDBG_USE_HW_BP:
        a.db[:], a.dr7 = list(d.db), d.dr7          # the processor keeps user space's
        return
    dr[:4] = list(d.db)
    dr[5] = dr[7] = d.dr7
    _state_changed(vcpu)


# ----------------------------------------------------------------------------------------
# KVM_SET_GUEST_DEBUG
# ----------------------------------------------------------------------------------------
# the control flags x86 KVM implements (asm/kvm_host.h), KVM_CAP_SET_GUEST_DEBUG2's answer
KVM_GUESTDBG_VALID_MASK = (uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_SINGLESTEP | uapi.KVM_GUESTDBG_USE_HW_BP
                           | uapi.KVM_GUESTDBG_USE_SW_BP | uapi.KVM_GUESTDBG_INJECT_BP
                           | uapi.KVM_GUESTDBG_INJECT_DB | uapi.KVM_GUESTDBG_BLOCKIRQ)
supported_caps[uapi.KVM_CAP_SET_GUEST_DEBUG2] = KVM_GUESTDBG_VALID_MASK
# guest debugging that takes #DB from the guest (its single-step and breakpoint traps)
_GUESTDBG_DB = uapi.KVM_GUESTDBG_SINGLESTEP | uapi.KVM_GUESTDBG_USE_HW_BP


def _guest_breakpoints(vcpu):
    """The guest's own DR0-3 and DR7: in the processor, unless user space's breakpoints
    are there (KVM_GUESTDBG_USE_HW_BP; Linux's vcpu->arch.db and dr7 against eff_db and
    guest_debug_dr7)."""
    if vcpu.guest_debug & uapi.KVM_GUESTDBG_USE_HW_BP:
        return list(vcpu.arch.db), vcpu.arch.dr7
    dr = vcpu.arch.cpu.dr
    return dr[:4], dr[7]


DR6_VOLATILE, DR7_VOLATILE = 0x0001E80F, 0xFFFF2BFF      # the bits a MOV to DR6 / DR7 can change


def kvm_get_dr(vcpu, dr: int) -> int:
    """The guest's own DRn (DR4/DR5: DR6/DR7), for its MOV from DR while the processor's
    are user space's breakpoints."""
    db, dr7 = _guest_breakpoints(vcpu)
    if dr < 4:
        return db[dr]
    return vcpu.arch.cpu.dr[6] if dr in (4, 6) else dr7


def kvm_set_dr(vcpu, dr: int, value: int) -> int:
    """The guest's MOV to DRn: 0, or 1 for a #GP (bits 63:32 of DR6 or DR7 set).  DR0-3 and
    DR7 reach the processor unless user space's breakpoints are there (KVM_GUESTDBG_USE_HW_BP)."""
    a, dr_regs = vcpu.arch, vcpu.arch.cpu.dr
    hw_bp = vcpu.guest_debug & uapi.KVM_GUESTDBG_USE_HW_BP
    if dr < 4:
        (a.db if hw_bp else dr_regs)[dr] = value
    elif value >> 32:
        return 1
    elif dr in (4, 6):
        dr_regs[4] = dr_regs[6] = value & DR6_VOLATILE | hd.DR6_ACTIVE_LOW
    elif hw_bp:
        a.dr7 = value & DR7_VOLATILE | hd.DR7_FIXED_1
    else:
        dr_regs[5] = dr_regs[7] = value & DR7_VOLATILE | hd.DR7_FIXED_1
    vcpu.arch.cpu.debug_refresh()
    return 0


def kvm_get_linear_rip(vcpu) -> int:
    """CS.base + RIP, as the processor fetches it (32 bits outside 64-bit mode)."""
    cpu = vcpu.arch.cpu
    return (cpu.sbase[hd.CS] + cpu.rip) & (0xFFFFFFFFFFFFFFFF if cpu.mode.code == 8 else 0xFFFFFFFF)


def kvm_get_rflags(vcpu) -> int:
    """RFLAGS as user space sees them: without the TF that single-stepping put there."""
    rflags = vcpu.arch.cpu.get_rflags()
    if vcpu.guest_debug & uapi.KVM_GUESTDBG_SINGLESTEP:
        rflags &= ~hd.TF
    return rflags


def kvm_set_rflags(vcpu, rflags: int) -> None:
    """Write RFLAGS; while single-stepping, with TF added as long as the vCPU is still at
    the instruction stepping began at (after user space moved RIP, its own TF stands)."""
    if vcpu.guest_debug & uapi.KVM_GUESTDBG_SINGLESTEP and kvm_get_linear_rip(vcpu) == vcpu.arch.singlestep_rip:
        rflags |= hd.TF
    vcpu.arch.cpu.set_rflags(rflags)


def kvm_update_exception_bitmap(vcpu) -> None:
    """The exceptions guest debugging intercepts (vmx/svm update_exception_bitmap): #DB
    while single-stepping or with hardware breakpoints, #BP with KVM_GUESTDBG_USE_SW_BP.
    Both vendors leave the guest its own #DB and #BP otherwise (the #PF bit is the MMU's)."""
    cpu, dbg = vcpu.arch.cpu, vcpu.guest_debug
    bits = 1 << uapi.DB_VECTOR | 1 << uapi.BP_VECTOR
    eb = cpu.exception_bitmap & ~bits
    if dbg & _GUESTDBG_DB:
        eb |= 1 << uapi.DB_VECTOR
    if dbg & uapi.KVM_GUESTDBG_USE_SW_BP:
        eb |= 1 << uapi.BP_VECTOR
    cpu.exception_bitmap = eb


def kvm_update_dr7(vcpu, db, dr7) -> None:
    """Load the breakpoints in force into the processor's DR0-3 and DR7 (Linux loads
    eff_db into the hardware before each entry and writes DR7 into the VMCS/VMCB)."""
    dr = vcpu.arch.cpu.dr
    dr[:4] = list(db)
    dr[5] = dr[7] = dr7
    _state_changed(vcpu)


def kvm_arch_vcpu_ioctl_set_guest_debug(vcpu, dbg: uapi.kvm_guest_debug) -> None:
    """KVM_SET_GUEST_DEBUG.  INJECT_DB / INJECT_BP queue #DB / #BP for the guest (EBUSY if
    an exception is already queued), whether or not ENABLE is set.  Without ENABLE, guest
    debugging is off; with it, SINGLESTEP traps after each instruction (TF in the guest's
    RFLAGS, hidden from KVM_GET_REGS), USE_SW_BP makes INT3 exit, USE_HW_BP loads
    ``arch.debugreg[0..3]`` and ``[7]`` into the processor in place of the guest's own,
    and each such #DB or #BP is a KVM_EXIT_DEBUG.  Control bits x86 KVM does not know are
    kept, not refused: the host takes them (arm64 and s390 return EINVAL)."""
    a, cpu = vcpu.arch, vcpu.arch.cpu
    if dbg.control & (uapi.KVM_GUESTDBG_INJECT_DB | uapi.KVM_GUESTDBG_INJECT_BP):
        if a.exception is not None:
            raise kernel_error(errno.EBUSY)
        kvm_queue_exception(vcpu, uapi.DB_VECTOR if dbg.control & uapi.KVM_GUESTDBG_INJECT_DB else uapi.BP_VECTOR)
    rflags = kvm_get_rflags(vcpu)           # with the old control: the TF it set is filtered out
    was_hw = vcpu.guest_debug & uapi.KVM_GUESTDBG_USE_HW_BP
    now_hw = dbg.control & uapi.KVM_GUESTDBG_ENABLE and dbg.control & uapi.KVM_GUESTDBG_USE_HW_BP
    if now_hw and not was_hw:               # the guest's breakpoints leave the processor
        a.db, a.dr7 = cpu.dr[:4], cpu.dr[7]
    vcpu.guest_debug = dbg.control if dbg.control & uapi.KVM_GUESTDBG_ENABLE else 0
    if now_hw:
        a.eff_db, a.guest_debug_dr7 = list(dbg.arch.debugreg[:4]), dbg.arch.debugreg[7]
        kvm_update_dr7(vcpu, a.eff_db, a.guest_debug_dr7)
    elif was_hw:                            # ... and come back
        kvm_update_dr7(vcpu, a.db, a.dr7)
    if vcpu.guest_debug & uapi.KVM_GUESTDBG_SINGLESTEP:
        a.singlestep_rip = kvm_get_linear_rip(vcpu)
    kvm_set_rflags(vcpu, rflags)            # adds TF, or takes away the TF it had added
    kvm_update_exception_bitmap(vcpu)
    cpu.intercept_dr = bool(now_hw)         # the guest's MOV DR goes to its own registers


def kvm_guest_debug_reset(vcpu) -> None:
    """Reset and INIT clear the guest's debug registers (the processor's reset did) but not
    user space's breakpoints: with KVM_GUESTDBG_USE_HW_BP they go back into the processor
    and the guest's cleared ones wait aside, as kvm_vcpu_reset's kvm_update_dr7 keeps them."""
    a = vcpu.arch
    if vcpu.guest_debug & uapi.KVM_GUESTDBG_USE_HW_BP:
        a.db, a.dr7 = [0, 0, 0, 0], hd.DR7_FIXED_1
        kvm_update_dr7(vcpu, a.eff_db, a.guest_debug_dr7)


def kvm_prepare_debug_exit(vcpu, vector: int, dr6=None, dr7=None) -> int:
    """KVM_EXIT_DEBUG for ``vector`` at the current linear RIP; ``dr6``/``dr7`` only where
    the vendor's handler writes them (a #BP exit leaves them as they were)."""
    arch = vcpu.run.debug.arch
    if dr6 is not None:
        arch.dr6 = dr6
    if dr7 is not None:
        arch.dr7 = dr7
    arch.pc = kvm_get_linear_rip(vcpu)
    arch.exception = vector
    vcpu.run.exit_reason = uapi.KVM_EXIT_DEBUG
    return 0


def kvm_queue_exception_p(vcpu, vector: int, payload: int) -> None:
    """Queue #DB with its DR6 bits for the guest (kvm_queue_exception_p; the bits go into
    the guest's DR6 now rather than at delivery, which nothing between can tell apart)."""
    vcpu.arch.cpu.dr[6] |= payload
    kvm_queue_exception(vcpu, vector)


def kvm_vcpu_do_singlestep(vcpu) -> int:
    """An instruction KVM carried out for the guest started with TF set: the single-step
    trap it would have taken.  Guest debugging single-steps: KVM_EXIT_DEBUG (its DR7 field
    is left as it was); else the guest's own TF: #DB with DR6.BS."""
    if vcpu.guest_debug & uapi.KVM_GUESTDBG_SINGLESTEP:
        return kvm_prepare_debug_exit(vcpu, uapi.DB_VECTOR, dr6=hd.DR6_BS | hd.DR6_ACTIVE_LOW)
    kvm_queue_exception_p(vcpu, uapi.DB_VECTOR, hd.DR6_BS)
    return 1


XCR_XFEATURE_ENABLED_MASK = 0


def _xsave_supported() -> bool:
    return features.implemented("xsave")


def kvm_vcpu_ioctl_x86_get_xcrs(vcpu) -> uapi.kvm_xcrs:
    x = uapi.kvm_xcrs()
    if _xsave_supported():
        x.nr_xcrs = 1
        x.xcrs[0].xcr = XCR_XFEATURE_ENABLED_MASK
        x.xcrs[0].value = vcpu.arch.cpu.xcr0
    return x


def guest_supported_xcr0(vcpu) -> int:
    """XCR0 bits the guest may set: its CPUID leaf 0xD.0 within what the processor has."""
    e = kcpuid.kvm_find_cpuid_entry(vcpu, 0xD, 0)
    return ((e.eax | e.edx << 32) if e is not None else 1) & hxsave.XCR0_SUPPORTED


def kvm_vcpu_ioctl_x86_set_xcrs(vcpu, x: uapi.kvm_xcrs) -> None:
    if not _xsave_supported() or x.nr_xcrs > uapi.KVM_MAX_XCRS or x.flags:
        raise kernel_error(errno.EINVAL)
    for i in range(x.nr_xcrs):
        if x.xcrs[i].xcr == XCR_XFEATURE_ENABLED_MASK:
            value = x.xcrs[i].value
            if not value & 1 or (value & 4 and not value & 2) or value & ~(guest_supported_xcr0(vcpu) | 1):
                raise kernel_error(errno.EINVAL)
            vcpu.arch.cpu.xcr0 = value


def kvm_vcpu_ioctl_x86_get_xsave(vcpu) -> uapi.kvm_xsave:
    """KVM_GET_XSAVE: the x87/SSE state in the standard XSAVE format (fill_xsave), the rest
    of the 4096-byte region zero."""
    x = uapi.kvm_xsave()
    ctypes.memmove(ctypes.addressof(x), hxsave.standard_image(vcpu.arch.cpu), hxsave.AREA_SIZE)
    return x


def kvm_vcpu_ioctl_x86_set_xsave(vcpu, x: uapi.kvm_xsave) -> None:
    """KVM_SET_XSAVE (load_xsave): EINVAL for components the processor lacks, a bad header
    or reserved MXCSR bits, before any change."""
    try:
        hxsave.load_standard_image(vcpu.arch.cpu, bytes(x)[:hxsave.AREA_SIZE])
    except hs_events.Fault:
        raise kernel_error(errno.EINVAL) from None


# ----------------------------------------------------------------------------------------
# kvm_run's synchronized registers (KVM_CAP_SYNC_REGS)
# ----------------------------------------------------------------------------------------
def store_regs(vcpu) -> None:
    """Copy the state user space asked for (``kvm_valid_regs``) into ``run.s.regs``."""
    run = vcpu.run
    sync = run.s.regs
    if run.kvm_valid_regs & uapi.KVM_SYNC_X86_REGS:
        sync.regs = kvm_arch_vcpu_ioctl_get_regs(vcpu)
    if run.kvm_valid_regs & uapi.KVM_SYNC_X86_SREGS:
        sync.sregs = kvm_arch_vcpu_ioctl_get_sregs(vcpu)
    if run.kvm_valid_regs & uapi.KVM_SYNC_X86_EVENTS:
        sync.events = kvm_vcpu_ioctl_x86_get_vcpu_events(vcpu)


def sync_regs(vcpu) -> None:
    """Load the state user space changed in ``run.s.regs`` (``kvm_dirty_regs``) before entry."""
    run = vcpu.run
    sync = run.s.regs
    if run.kvm_dirty_regs & uapi.KVM_SYNC_X86_REGS:
        kvm_arch_vcpu_ioctl_set_regs(vcpu, sync.regs)
        run.kvm_dirty_regs &= ~uapi.KVM_SYNC_X86_REGS
    if run.kvm_dirty_regs & uapi.KVM_SYNC_X86_SREGS:
        kvm_arch_vcpu_ioctl_set_sregs(vcpu, uapi.kvm_sregs.from_buffer_copy(sync.sregs))
        run.kvm_dirty_regs &= ~uapi.KVM_SYNC_X86_SREGS
    if run.kvm_dirty_regs & uapi.KVM_SYNC_X86_EVENTS:
        kvm_vcpu_ioctl_x86_set_vcpu_events(vcpu, uapi.kvm_vcpu_events.from_buffer_copy(sync.events))
        run.kvm_dirty_regs &= ~uapi.KVM_SYNC_X86_EVENTS


# ----------------------------------------------------------------------------------------
# The vCPU ioctl dispatcher
# ----------------------------------------------------------------------------------------
def _getter(fn):
    def ioctl(vcpu, arg):
        copy_to_user(arg, fn(vcpu))
        return 0
    return ioctl


def _setter(fn, ctype):
    def ioctl(vcpu, arg):
        fn(vcpu, _get_user(arg, ctype))
        return 0
    return ioctl


INVALID_GPA = (1 << 64) - 1


def kvm_mmu_gva_to_gpa_system(vcpu, gva: int) -> int:
    """KVM's own (supervisor, read) translation of a guest-linear address; INVALID_GPA if
    the guest's page tables do not map it."""
    try:
        gpa, _ = mmu.kvm_mmu_gva_to_gpa(vcpu, gva, 0, system=True)
    except Fault:
        return INVALID_GPA
    return gpa


def kvm_arch_vcpu_ioctl_translate(vcpu, tr: uapi.kvm_translation) -> None:
    """KVM_TRANSLATE: only ``physical_address`` and ``valid`` come from the walk; the kernel
    reports every translation writeable and not user-mode."""
    gpa = kvm_mmu_gva_to_gpa_system(vcpu, tr.linear_address)
    tr.physical_address = gpa
    tr.valid = gpa != INVALID_GPA
    tr.writeable = 1
    tr.usermode = 0


def _translate(vcpu, arg) -> int:
    tr = _get_user(arg, uapi.kvm_translation)
    kvm_arch_vcpu_ioctl_translate(vcpu, tr)
    copy_to_user(arg, tr)
    return 0


def kvm_vcpu_mem_enc_ioctl(vcpu, arg) -> int:
    """KVM_MEMORY_ENCRYPT_OP on a vCPU: ENOTTY, the answer of a vendor module without
    vcpu_mem_enc_ioctl (kvmpy has neither SEV nor TDX), not the EINVAL of an unknown ioctl."""
    raise kernel_error(errno.ENOTTY)


def kvm_vcpu_ioctl_set_vapic_addr(vcpu, arg) -> int:
    """KVM_SET_VAPIC_ADDR: where the guest's TPR-shadow ("vapic") page is, 0 for none.  kvmpy
    keeps no such page (KVM_CAP_VAPIC is 0), so only 0 -- what QEMU sets at every reset of
    an in-kernel LAPIC -- is accepted; an address is EINVAL, as is a vCPU without an
    in-kernel LAPIC (KVM's answer)."""
    if not lapic_in_kernel(vcpu):
        raise kernel_error(errno.EINVAL)
    if _get_user(arg, uapi.kvm_vapic_addr).vapic_addr:
        raise kernel_error(errno.EINVAL)
    return 0


vcpu_ioctl_handlers = {
    uapi.KVM_SET_VAPIC_ADDR: kvm_vcpu_ioctl_set_vapic_addr,
    uapi.KVM_GET_REGS: _getter(kvm_arch_vcpu_ioctl_get_regs),
    uapi.KVM_SET_REGS: _setter(kvm_arch_vcpu_ioctl_set_regs, uapi.kvm_regs),
    uapi.KVM_GET_SREGS: _getter(kvm_arch_vcpu_ioctl_get_sregs),
    uapi.KVM_SET_SREGS: _setter(kvm_arch_vcpu_ioctl_set_sregs, uapi.kvm_sregs),
    uapi.KVM_GET_FPU: _getter(kvm_arch_vcpu_ioctl_get_fpu),
    uapi.KVM_SET_FPU: _setter(kvm_arch_vcpu_ioctl_set_fpu, uapi.kvm_fpu),
    uapi.KVM_GET_MP_STATE: _getter(lambda v: uapi.kvm_mp_state(kvm_arch_vcpu_ioctl_get_mpstate(v))),
    uapi.KVM_SET_MP_STATE: _setter(lambda v, m: kvm_arch_vcpu_ioctl_set_mpstate(v, m.mp_state), uapi.kvm_mp_state),
    uapi.KVM_GET_VCPU_EVENTS: _getter(kvm_vcpu_ioctl_x86_get_vcpu_events),
    uapi.KVM_SET_VCPU_EVENTS: _setter(kvm_vcpu_ioctl_x86_set_vcpu_events, uapi.kvm_vcpu_events),
    uapi.KVM_GET_DEBUGREGS: _getter(kvm_vcpu_ioctl_x86_get_debugregs),
    uapi.KVM_SET_DEBUGREGS: _setter(kvm_vcpu_ioctl_x86_set_debugregs, uapi.kvm_debugregs),
    uapi.KVM_SET_GUEST_DEBUG: _setter(kvm_arch_vcpu_ioctl_set_guest_debug, uapi.kvm_guest_debug),
    uapi.KVM_GET_XCRS: _getter(kvm_vcpu_ioctl_x86_get_xcrs),
    uapi.KVM_SET_XCRS: _setter(kvm_vcpu_ioctl_x86_set_xcrs, uapi.kvm_xcrs),
    uapi.KVM_GET_XSAVE: _getter(kvm_vcpu_ioctl_x86_get_xsave),
    uapi.KVM_SET_XSAVE: _setter(kvm_vcpu_ioctl_x86_set_xsave, uapi.kvm_xsave),
    uapi.KVM_INTERRUPT: lambda v, arg: kvm_vcpu_ioctl_interrupt(v, _get_user(arg, uapi.kvm_interrupt).irq),
    uapi.KVM_GET_MSRS: lambda v, arg: _msr_io(arg, lambda e: _get_msr_entry(v, e), writeback=True),
    uapi.KVM_SET_MSRS: lambda v, arg: _msr_io(arg, lambda e: _set_msr_entry(v, e), writeback=False),
    uapi.KVM_SET_CPUID2: kcpuid.kvm_vcpu_ioctl_set_cpuid2,
    uapi.KVM_GET_CPUID2: kcpuid.kvm_vcpu_ioctl_get_cpuid2,
    uapi.KVM_NMI: lambda v, arg: kvm_vcpu_ioctl_nmi(v),
    uapi.KVM_TRANSLATE: _translate,
    uapi.KVM_MEMORY_ENCRYPT_OP: kvm_vcpu_mem_enc_ioctl,
}


@traced
def kvm_arch_vcpu_ioctl(file, cmd: int, arg):
    """The vCPU ioctls x86 implements; anything else is EINVAL (as on the host)."""
    handler = vcpu_ioctl_handlers.get(cmd)
    if handler is None:
        raise kernel_error(errno.EINVAL)
    return handler(file.private_data, arg)
