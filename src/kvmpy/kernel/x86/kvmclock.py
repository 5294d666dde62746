"""x86.c's time keeping: the guest TSC, KVM_GET/SET_CLOCK, KVM_GET/SET_TSC_KHZ, the time MSRs
(IA32_TSC, IA32_TSC_ADJUST, IA32_TSC_DEADLINE) and kvmclock (the KVM paravirtual CPUID
leaves, MSR_KVM_WALL_CLOCK_NEW and MSR_KVM_SYSTEM_TIME_NEW with their pvclock structures, and
their first numbers MSR_KVM_WALL_CLOCK and MSR_KVM_SYSTEM_TIME, which KVM still serves: QEMU
writes both pairs at every vCPU reset).

Every time here derives from the VM clock (``kvm.clock``, kernel/hrtimer.py), so the TSC,
kvmclock and the timers agree and are reproducible on the virtual clock.  kvmpy's "host" TSC
runs at HOST_TSC_KHZ on that clock: one tick a nanosecond, so on the virtual clock a guest
at the default frequency sees one TSC tick per retired instruction.  A vCPU's TSC is
``tsc_offset + now_ns * virtual_tsc_khz / 10**6``; kvmpy scales in software, so any
frequency below MAX_GUEST_TSC_KHZ can be set (KVM_CAP_TSC_CONTROL).
"""

from __future__ import annotations

import ctypes
import errno
import time

from ... import uapi
from ...hw import memory as hm
from ..fs import copy_from_user, copy_to_user, kernel_error
from ..kvm_host import gfn_to_memslot, mark_page_dirty_in_slot
from . import cpuid as kcpuid
from .cpuid import KVM_CPUID_FEATURES, KVM_FEATURE_CLOCKSOURCE, KVM_FEATURE_CLOCKSOURCE2
from . import x86

HOST_TSC_KHZ = 1_000_000
NSEC_PER_SEC = 1_000_000_000
MAX_GUEST_TSC_KHZ = 0xFFFFFFFF
MSR_IA32_TSC, MSR_IA32_TSC_ADJUST, MSR_IA32_TSC_DEADLINE = 0x10, 0x3B, 0x6E0
MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D00, 0x4B564D01
MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME = 0x11, 0x12
# each kvmclock MSR -> the KVM_CPUID_FEATURES bit a guest needs to use it
KVMCLOCK_MSR_FEATURE = {MSR_KVM_WALL_CLOCK: KVM_FEATURE_CLOCKSOURCE, MSR_KVM_SYSTEM_TIME: KVM_FEATURE_CLOCKSOURCE,
                        MSR_KVM_WALL_CLOCK_NEW: KVM_FEATURE_CLOCKSOURCE2,
                        MSR_KVM_SYSTEM_TIME_NEW: KVM_FEATURE_CLOCKSOURCE2}
WALL_CLOCK_MSRS = (MSR_KVM_WALL_CLOCK, MSR_KVM_WALL_CLOCK_NEW)
KVM_CLOCK_VALID_FLAGS = uapi.KVM_CLOCK_TSC_STABLE | uapi.KVM_CLOCK_REALTIME | uapi.KVM_CLOCK_HOST_TSC
PVCLOCK_TSC_STABLE_BIT = 1


class PvclockVcpuTimeInfo(ctypes.LittleEndianStructure):
    """struct pvclock_vcpu_time_info (32 bytes, in guest memory)."""
    _pack_ = 1
    _fields_ = [("version", ctypes.c_uint32), ("pad0", ctypes.c_uint32), ("tsc_timestamp", ctypes.c_uint64),
                ("system_time", ctypes.c_uint64), ("tsc_to_system_mul", ctypes.c_uint32),
                ("tsc_shift", ctypes.c_int8), ("flags", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 2)]


class PvclockWallClock(ctypes.LittleEndianStructure):
    """struct pvclock_wall_clock (12 bytes)."""
    _pack_ = 1
    _fields_ = [("version", ctypes.c_uint32), ("sec", ctypes.c_uint32), ("nsec", ctypes.c_uint32)]


class KvmVcpuTime:
    """The vCPU's time fields of struct kvm_vcpu_arch."""

    def __init__(self, tsc_khz: int):
        self.virtual_tsc_khz = tsc_khz
        self.tsc_offset = 0                 # the guest TSC minus the scaled clock
        self.ia32_tsc_adjust_msr = 0
        self.time = 0                       # MSR_KVM_SYSTEM_TIME_NEW as written
        self.pvclock_version = 0


def kvm_arch_time(kvm):
    """The VM's time fields of struct kvm_arch, made on first use."""
    arch = kvm.arch
    if getattr(arch, "kvmclock_offset", None) is None:
        arch.kvmclock_offset = 0            # kvmclock = VM clock + offset (KVM_SET_CLOCK)
        arch.default_tsc_khz = HOST_TSC_KHZ
        arch.wall_clock = 0                 # MSR_KVM_WALL_CLOCK_NEW as written
    return arch


def vcpu_time(vcpu) -> KvmVcpuTime:
    t = getattr(vcpu.arch, "time", None)
    if t is None:
        t = vcpu.arch.time = KvmVcpuTime(kvm_arch_time(vcpu.kvm).default_tsc_khz)
    return t


# ------------------------------------------------------------------ the TSC
def kvm_scale_tsc(vcpu, ns: int) -> int:
    return ns * vcpu_time(vcpu).virtual_tsc_khz // 1_000_000


def kvm_read_l1_tsc(vcpu) -> int:
    """The TSC the guest reads now."""
    return (vcpu_time(vcpu).tsc_offset + kvm_scale_tsc(vcpu, vcpu.kvm.clock.now_ns())) & 0xFFFFFFFFFFFFFFFF


def kvm_vcpu_write_tsc(vcpu, value: int) -> None:
    """Make the TSC read ``value`` now (the offset moves)."""
    vcpu_time(vcpu).tsc_offset = value - kvm_scale_tsc(vcpu, vcpu.kvm.clock.now_ns())


def kvm_synchronize_tsc(vcpu) -> None:
    """Let the vCPU's processor read its TSC from the clock (the processor's host TSC input),
    in step with the VM's other vCPUs."""
    others = [v for v in vcpu.kvm.vcpus if v is not vcpu and getattr(v.arch, "time", None) is not None]
    cpu = vcpu.arch.cpu
    cpu.tsc = 0
    cpu.host_tsc = lambda: kvm_read_l1_tsc(vcpu)
    kvm_vcpu_write_tsc(vcpu, kvm_read_l1_tsc(others[0]) if others else 0)


# ------------------------------------------------------------------ kvmclock
def kvm_get_time_scale(hz: int):
    """(mul, shift) with ns = ((tsc << shift) or (tsc >> -shift)) * mul >> 32: the smallest
    shift whose multiplier fits 32 bits, for the most precise one."""
    for shift in range(-31, 32):
        base = hz << shift if shift >= 0 else hz >> -shift
        if base and (NSEC_PER_SEC << 32) // base < 1 << 32:
            return (NSEC_PER_SEC << 32) // base, shift
    raise ValueError("TSC frequency out of range")


def get_kvmclock_ns(kvm) -> int:
    return kvm.clock.now_ns() + kvm_arch_time(kvm).kvmclock_offset


def _guest_write(kvm, gpa: int, data: bytes) -> bool:
    """Copy ``data`` into guest memory at ``gpa`` (kvm_write_guest); False outside RAM."""
    done = 0
    while done < len(data):
        addr = gpa + done
        slot = gfn_to_memslot(kvm, addr >> 12)
        if slot is None or slot.flags & uapi.KVM_MEM_READONLY:
            return False
        n = min(len(data) - done, 4096 - (addr & 0xFFF))
        hva = slot.userspace_addr + (addr - (slot.base_gfn << 12))
        if hm.populate(hva, n, True):
            return False
        ctypes.memmove(hva, data[done:done + n], n)
        mark_page_dirty_in_slot(kvm, slot, addr >> 12)
        done += n
    return True


def kvm_guest_time_update(vcpu) -> None:
    """Write the vCPU's pvclock_vcpu_time_info (kvmclock enabled): the TSC and kvmclock at one
    instant and the TSC-to-ns scale.  Both are linear in the VM clock, so the structure
    stays right until the offset or a frequency changes, which write it again."""
    t = vcpu_time(vcpu)
    if not t.time & 1:
        return
    ns = vcpu.kvm.clock.now_ns()
    mul, shift = kvm_get_time_scale(t.virtual_tsc_khz * 1000)
    t.pvclock_version += 2
    info = PvclockVcpuTimeInfo(version=t.pvclock_version, tsc_timestamp=kvm_read_l1_tsc(vcpu),
                               system_time=ns + kvm_arch_time(vcpu.kvm).kvmclock_offset,
                               tsc_to_system_mul=mul, tsc_shift=shift, flags=PVCLOCK_TSC_STABLE_BIT)
    _guest_write(vcpu.kvm, t.time & ~1, bytes(info))


def kvm_write_wall_clock(kvm, gpa: int) -> None:
    """The wall-clock time at kvmclock 0.  On the virtual clock that is the Unix epoch, so
    that runs do not depend on when they happen; on the host clock it is the host's."""
    ka = kvm_arch_time(kvm)
    boot = 0 if kvm.clock.mode == "virtual" else time.time_ns() - get_kvmclock_ns(kvm)
    boot = max(0, boot)
    wc = PvclockWallClock(version=2, sec=(boot // 10**9) & 0xFFFFFFFF, nsec=boot % 10**9)
    ka.wall_clock = gpa
    _guest_write(kvm, gpa, bytes(wc))


def kvm_update_all_clocks(kvm) -> None:
    for v in kvm.vcpus:
        if v.arch is not None and getattr(v.arch, "time", None) is not None:
            kvm_guest_time_update(v)


# ------------------------------------------------------------------ the MSRs
def kvm_set_time_msr(vcpu, index: int, data: int, host_initiated: bool) -> int:
    t = vcpu_time(vcpu)
    if index == MSR_IA32_TSC:
        if host_initiated:
            kvm_vcpu_write_tsc(vcpu, data)
        else:                               # a guest write moves TSC_ADJUST by as much
            before = kvm_read_l1_tsc(vcpu)
            kvm_vcpu_write_tsc(vcpu, data)
            t.ia32_tsc_adjust_msr = (t.ia32_tsc_adjust_msr + data - before) & 0xFFFFFFFFFFFFFFFF
        kvm_guest_time_update(vcpu)
    elif index == MSR_IA32_TSC_ADJUST:
        if not host_initiated and not kcpuid.guest_cpuid_has(vcpu, "tsc_adjust"):
            return 1
        if not host_initiated:
            t.tsc_offset += data - t.ia32_tsc_adjust_msr
            kvm_guest_time_update(vcpu)
        t.ia32_tsc_adjust_msr = data
    elif index in KVMCLOCK_MSR_FEATURE:
        if not host_initiated and not _has_kvm_feature(vcpu, KVMCLOCK_MSR_FEATURE[index]):
            return 1
        if index in WALL_CLOCK_MSRS:
            kvm_write_wall_clock(vcpu.kvm, data)
        else:
            t.time = data
            kvm_guest_time_update(vcpu)
    return 0


def kvm_get_time_msr(vcpu, index: int, host_initiated: bool):
    t = vcpu_time(vcpu)
    if index == MSR_IA32_TSC:
        return 0, kvm_read_l1_tsc(vcpu)
    if index == MSR_IA32_TSC_ADJUST:
        if not host_initiated and not kcpuid.guest_cpuid_has(vcpu, "tsc_adjust"):
            return 1, 0
        return 0, t.ia32_tsc_adjust_msr
    if index in KVMCLOCK_MSR_FEATURE:
        if not host_initiated and not _has_kvm_feature(vcpu, KVMCLOCK_MSR_FEATURE[index]):
            return 1, 0
        return 0, kvm_arch_time(vcpu.kvm).wall_clock if index in WALL_CLOCK_MSRS else t.time
    return 1, 0


def _has_kvm_feature(vcpu, bit: int) -> bool:
    entry = kcpuid.kvm_find_cpuid_entry(vcpu, KVM_CPUID_FEATURES)
    return entry is not None and bool(entry.eax >> bit & 1)


TIME_MSRS = (MSR_IA32_TSC, MSR_IA32_TSC_ADJUST, MSR_IA32_TSC_DEADLINE) + tuple(KVMCLOCK_MSR_FEATURE)


# ------------------------------------------------------------------ the ioctls
def kvm_vm_ioctl_get_clock(kvm, arg) -> int:
    data = uapi.kvm_clock_data(clock=get_kvmclock_ns(kvm) & 0xFFFFFFFFFFFFFFFF)
    copy_to_user(arg, data)
    return 0


def kvm_vm_ioctl_set_clock(kvm, arg) -> int:
    data = uapi.kvm_clock_data.from_buffer_copy(copy_from_user(arg, ctypes.sizeof(uapi.kvm_clock_data)))
    if data.flags & ~KVM_CLOCK_VALID_FLAGS:
        raise kernel_error(errno.EINVAL)
    clock = data.clock
    if data.flags & uapi.KVM_CLOCK_REALTIME:
        clock += max(0, time.time_ns() - data.realtime)
    kvm_arch_time(kvm).kvmclock_offset = clock - kvm.clock.now_ns()
    kvm_update_all_clocks(kvm)
    return 0


def _user_tsc_khz(arg) -> int:
    khz = arg & 0xFFFFFFFF
    if khz >= MAX_GUEST_TSC_KHZ:
        raise kernel_error(errno.EINVAL)
    return khz or HOST_TSC_KHZ


def kvm_vm_ioctl_set_tsc_khz(kvm, arg) -> int:
    """The frequency of the vCPUs created from now on; EINVAL once one exists."""
    khz = _user_tsc_khz(arg)
    with kvm.lock:
        if kvm.created_vcpus:
            raise kernel_error(errno.EINVAL)
        kvm_arch_time(kvm).default_tsc_khz = khz
    return 0


def kvm_vm_ioctl_get_tsc_khz(kvm, arg) -> int:
    return kvm_arch_time(kvm).default_tsc_khz


def kvm_vcpu_ioctl_set_tsc_khz(vcpu, arg) -> int:
    khz = _user_tsc_khz(arg)
    now = kvm_read_l1_tsc(vcpu)
    vcpu_time(vcpu).virtual_tsc_khz = khz
    kvm_vcpu_write_tsc(vcpu, now)           # the TSC goes on from where it was, at the new rate
    kvm_guest_time_update(vcpu)
    return 0


def kvm_vcpu_ioctl_get_tsc_khz(vcpu, arg) -> int:
    return vcpu_time(vcpu).virtual_tsc_khz


x86.vm_ioctl_handlers.update({
    uapi.KVM_GET_CLOCK: kvm_vm_ioctl_get_clock, uapi.KVM_SET_CLOCK: kvm_vm_ioctl_set_clock,
    uapi.KVM_SET_TSC_KHZ: kvm_vm_ioctl_set_tsc_khz, uapi.KVM_GET_TSC_KHZ: kvm_vm_ioctl_get_tsc_khz,
})
x86.vcpu_ioctl_handlers.update({
    uapi.KVM_SET_TSC_KHZ: kvm_vcpu_ioctl_set_tsc_khz, uapi.KVM_GET_TSC_KHZ: kvm_vcpu_ioctl_get_tsc_khz,
})
x86.kvm_synchronize_tsc = kvm_synchronize_tsc
# (IA32_TSC_DEADLINE is listed here and served by the LAPIC's timer, lapic.py)
x86.msr_handlers.update({index: (kvm_get_time_msr, kvm_set_time_msr) for index in TIME_MSRS
                         if index != MSR_IA32_TSC_DEADLINE})
x86.emulated_msrs += tuple(i for i in TIME_MSRS if i not in x86.msrs_to_save)
x86.supported_caps.update({
    uapi.KVM_CAP_ADJUST_CLOCK: KVM_CLOCK_VALID_FLAGS, uapi.KVM_CAP_CLOCKSOURCE: 1,
    uapi.KVM_CAP_GET_TSC_KHZ: 1, uapi.KVM_CAP_TSC_CONTROL: 1, uapi.KVM_CAP_VM_TSC_CONTROL: 1,
    uapi.KVM_CAP_TSC_DEADLINE_TIMER: 1,
})
