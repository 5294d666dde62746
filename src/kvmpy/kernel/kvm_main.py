"""Generic KVM (virt/kvm/kvm_main.c): the device, VMs, vCPUs, memslots and their files.

The seed's chains live here with the kernel's names (seed steps 1-6):

* ``kvm_init(ops)`` -> ``kvm_arch_init`` -> ``kvm_irqfd_init`` -> ``kvm_arch_hardware_setup``
  -> ``misc_register(kvm_dev)``: ``/dev/kvm`` exists, its file operations are
  ``kvm_chardev_ops`` (``kvm_dev_ioctl``).
* ``KVM_CREATE_VM`` -> ``kvm_dev_ioctl_create_vm`` -> ``kvm_create_vm`` (``kvm_arch_init_vm``,
  ``hardware_enable_all``, ``kvm_arch_post_init_vm``, add to ``vm_list``) ->
  ``anon_inode_getfile("kvm-vm", kvm_vm_fops)``.
* ``KVM_CREATE_VCPU`` -> ``kvm_vm_ioctl_create_vcpu`` -> ``kvm_arch_vcpu_precreate`` ->
  ``kvm_vcpu_init`` -> ``kvm_arch_vcpu_create`` -> ``kvm_get_kvm`` -> ``create_vcpu_fd`` ->
  ``kvm_arch_vcpu_postcreate``; the vCPU file (``kvm_vcpu_fops``) maps ``kvm_run``.

Everything architecture-specific is delegated to ``kvmpy.kernel.x86.x86`` under the
``kvm_arch_*`` names the kernel uses.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .. import uapi
from ..hw import memory as hm
from ..uapi import PAGE_SHIFT, PAGE_SIZE
from . import fs, run_token, signals
from .fs import kernel_error
from .kvm_host import (RUN_PAGES, Kvm, KvmMemorySlot, KvmVcpu, RunArea, kvm_flush_remote_tlbs,
                       kvm_get_vcpu_by_id, kvm_vcpu_srcu_read_lock, kvm_vcpu_srcu_read_unlock)
from .srcu import synchronize_srcu_expedited
from .stats import VCPU_STATS, VM_STATS, KvmStats, stats_id_vcpu, stats_id_vm
from .trace import traced
from . import eventfd
from .hrtimer import kvm_clock_create
from kvmpy.kernel.x86 import i8254, irqchip_ioctls, kvmclock, mce, params, pmu, run as x86_run, x86 as arch   # noqa: F401  (i8254, irqchip_ioctls, kvmclock, mce and pmu register their ioctls and MSRs)
from kvmpy.kernel.x86.mmu import mmu

__all__ = [
    "KVM_MINOR", "KVM_ADDRESS_SPACE_NUM", "KVM_MEM_MAX_NR_PAGES",
    "vm_list", "kvm_lock", "kvm_dev", "kvm_chardev_ops", "kvm_vm_fops", "kvm_vcpu_fops",
    "kvm_init", "kvm_exit", "kvm_irqfd_init", "kvm_dev_ioctl", "kvm_dev_ioctl_create_vm",
    "kvm_create_vm", "kvm_destroy_vm", "hardware_enable_all", "hardware_disable_all",
    "kvm_get_kvm", "kvm_put_kvm", "kvm_vm_ioctl", "kvm_vm_release", "kvm_vm_ioctl_create_vcpu",
    "kvm_vcpu_init", "create_vcpu_fd", "kvm_vcpu_ioctl", "kvm_vcpu_mmap", "kvm_vcpu_release",
    "kvm_vm_ioctl_check_extension_generic", "kvm_vm_ioctl_set_memory_region",
    "kvm_set_memory_region", "kvm_vm_ioctl_get_dirty_log", "kvm_vcpu_mmap_size",
    "kvm_vm_ioctl_get_stats_fd", "kvm_vcpu_ioctl_get_stats_fd",
]

KVM_MINOR = 232
KVM_ADDRESS_SPACE_NUM = 1          # no SMM: one address space (KVM_CAP_MULTI_ADDRESS_SPACE = 0)
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1
TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE
KVM_VALID_MEM_FLAGS = uapi.KVM_MEM_LOG_DIRTY_PAGES | uapi.KVM_MEM_READONLY


def kvm_vcpu_on_spin(vcpu) -> None:
    """A PAUSE-loop exit: the vCPU spins on a lock another vCPU holds.  Linux yields the
    physical CPU to a preempted vCPU of the VM; kvmpy's vCPUs share one run token, which the
    exit gives up when its handling ends, and the first vCPU waiting for it takes it next."""
    vcpu.stat["directed_yield_attempted"] += 1
    if run_token.kvm_run_token_contended(vcpu):
        vcpu.stat["directed_yield_successful"] += 1


def kvm_vcpu_mmap_size() -> int:
    return RUN_PAGES * PAGE_SIZE


vm_list: list = []                  # every live VM, like the kernel's vm_list
kvm_lock = threading.RLock()
kvm_usage_count = 0
irqfd_cleanup_wq: ThreadPoolExecutor | None = None


# --------------------------------------------------------------------------------------
# Module init (seed step 1) and the device file (step 2)
# --------------------------------------------------------------------------------------
@traced
def kvm_irqfd_init() -> None:
    """Create the workqueue that shuts irqfds down outside the caller's context."""
    global irqfd_cleanup_wq
    irqfd_cleanup_wq = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvm-irqfd-cleanup")


def kvm_irqfd_exit() -> None:
    global irqfd_cleanup_wq
    if irqfd_cleanup_wq is not None:
        irqfd_cleanup_wq.shutdown(wait=True)
        irqfd_cleanup_wq = None


@traced
def kvm_init(vendor_ops) -> None:
    """Load KVM with a vendor module's ops (called by vmx_init / svm_init)."""
    if fs.misc_is_registered(kvm_dev.nodename):
        raise kernel_error(errno.EEXIST)       # "already loaded vendor module"
    arch.kvm_arch_init(vendor_ops)
    try:
        kvm_irqfd_init()
        arch.kvm_arch_hardware_setup()
        fs.misc_register(kvm_dev)
    except BaseException:
        kvm_irqfd_exit()
        arch.kvm_arch_exit()
        raise


def kvm_exit() -> None:
    """Unload: EBUSY while a VM still exists (the module is in use)."""
    with kvm_lock:
        if vm_list:
            raise kernel_error(errno.EBUSY)
        fs.misc_deregister(kvm_dev)
        kvm_irqfd_exit()
        arch.kvm_arch_exit()


@traced
def kvm_dev_ioctl(file, cmd: int, arg):
    """unlocked_ioctl of /dev/kvm."""
    if cmd == uapi.KVM_GET_API_VERSION:
        if arg:
            raise kernel_error(errno.EINVAL)
        return uapi.KVM_API_VERSION
    if cmd == uapi.KVM_CREATE_VM:
        return kvm_dev_ioctl_create_vm(arg)
    if cmd == uapi.KVM_CHECK_EXTENSION:
        return kvm_vm_ioctl_check_extension_generic(None, arg)
    if cmd == uapi.KVM_GET_VCPU_MMAP_SIZE:
        if arg:
            raise kernel_error(errno.EINVAL)
        return kvm_vcpu_mmap_size()
    return arch.kvm_arch_dev_ioctl(file, cmd, arg)


kvm_chardev_ops = fs.FileOperations("kvm_chardev_ops", unlocked_ioctl=kvm_dev_ioctl,
                                    compat_ioctl=kvm_dev_ioctl, llseek=fs.noop_llseek)
kvm_dev = fs.MiscDevice(KVM_MINOR, "kvm", kvm_chardev_ops)


def kvm_vm_ioctl_check_extension_generic(kvm, arg: int) -> int:
    """KVM_CHECK_EXTENSION: what kvmpy implements (answers truthfully, 0 otherwise)."""
    generic = {
        uapi.KVM_CAP_USER_MEMORY: 1,
        uapi.KVM_CAP_DESTROY_MEMORY_REGION_WORKS: 1,
        uapi.KVM_CAP_JOIN_MEMORY_REGIONS_WORKS: 1,
        uapi.KVM_CAP_INTERNAL_ERROR_DATA: 1,
        uapi.KVM_CAP_CHECK_EXTENSION_VM: 1,
        uapi.KVM_CAP_ENABLE_CAP_VM: 1,
        uapi.KVM_CAP_BINARY_STATS_FD: 1,
        uapi.KVM_CAP_NR_MEMSLOTS: uapi.KVM_USER_MEM_SLOTS,
        uapi.KVM_CAP_MULTI_ADDRESS_SPACE: KVM_ADDRESS_SPACE_NUM if KVM_ADDRESS_SPACE_NUM > 1 else 0,
        **eventfd.EVENTFD_CAPS,
    }
    arg &= 0xFFFFFFFFFFFFFFFF
    if arg in generic:
        return generic[arg]
    return arch.kvm_vm_ioctl_check_extension(kvm, arg)


# --------------------------------------------------------------------------------------
# VMs (seed steps 3-4)
# --------------------------------------------------------------------------------------
@traced
def hardware_enable_all() -> None:
    """Turn virtualisation on in the processor when the first VM is created."""
    global kvm_usage_count
    with kvm_lock:
        kvm_usage_count += 1
        if kvm_usage_count == 1:
            arch.kvm_arch_hardware_enable()


def hardware_disable_all() -> None:
    global kvm_usage_count
    with kvm_lock:
        kvm_usage_count -= 1
        if kvm_usage_count == 0:
            arch.kvm_arch_hardware_disable()


@traced
def kvm_create_vm(vm_type: int) -> Kvm:
    kvm = Kvm(vm_type)
    kvm.clock = kvm_clock_create(kvm, params.clock)
    arch.kvm_arch_init_vm(kvm, vm_type)
    kvm.stat = KvmStats(stats_id_vm(), VM_STATS)
    hardware_enable_all()
    try:
        arch.kvm_arch_post_init_vm(kvm)
    except BaseException:
        hardware_disable_all()
        kvm.stat.free()
        raise
    with kvm_lock:
        vm_list.append(kvm)
    return kvm


@traced
def kvm_dev_ioctl_create_vm(vm_type: int) -> int:
    kvm = kvm_create_vm(vm_type)
    try:
        fd = fs.get_unused_fd_flags(os.O_CLOEXEC, "kvm-vm")
    except BaseException:
        kvm_put_kvm(kvm)
        raise
    file = fs.anon_inode_getfile("kvm-vm", kvm_vm_fops, kvm, os.O_RDWR)
    fs.fd_install(fd, file)
    return fd


@traced
def kvm_get_kvm(kvm: Kvm) -> None:
    with kvm_lock:
        kvm.users_count += 1


def kvm_put_kvm(kvm: Kvm) -> None:
    with kvm_lock:
        kvm.users_count -= 1
        last = kvm.users_count == 0
    if last:
        kvm_destroy_vm(kvm)


@traced
def kvm_destroy_vm(kvm: Kvm) -> None:
    with kvm_lock:
        if kvm in vm_list:
            vm_list.remove(kvm)
    arch.kvm_arch_destroy_vm(kvm)           # destroys the vCPUs
    for vcpu in kvm.vcpus:
        _kvm_vcpu_free_files(vcpu)
    kvm.vcpus = []
    kvm.stat.free()
    _replace_memslots(kvm, {})
    eventfd.kvm_eventfd_release(kvm)
    hardware_disable_all()
    kvm.destroyed = True


def kvm_vm_release(inode, file) -> int:
    eventfd.kvm_irqfd_release(file.private_data)
    kvm_put_kvm(file.private_data)
    return 0


@traced
def kvm_vm_ioctl(file, cmd: int, arg):
    """unlocked_ioctl of a VM file."""
    kvm: Kvm = file.private_data
    if cmd == uapi.KVM_CREATE_VCPU:
        return kvm_vm_ioctl_create_vcpu(kvm, arg)
    if cmd == uapi.KVM_SET_USER_MEMORY_REGION:
        region = uapi.kvm_userspace_memory_region.from_buffer_copy(
            fs.copy_from_user(arg, ctypes.sizeof(uapi.kvm_userspace_memory_region)))
        return kvm_vm_ioctl_set_memory_region(kvm, region)
    if cmd == uapi.KVM_GET_DIRTY_LOG:
        log = uapi.kvm_dirty_log.from_buffer_copy(fs.copy_from_user(arg, ctypes.sizeof(uapi.kvm_dirty_log)))
        return kvm_vm_ioctl_get_dirty_log(kvm, log)
    if cmd == uapi.KVM_CHECK_EXTENSION:
        return kvm_vm_ioctl_check_extension_generic(kvm, arg)
    if cmd == uapi.KVM_GET_STATS_FD:
        return kvm_vm_ioctl_get_stats_fd(kvm)
    if cmd == uapi.KVM_IRQFD:
        return eventfd.kvm_irqfd(kvm, arg, arch.kvm_arch_irqfd_allowed)
    if cmd == uapi.KVM_IOEVENTFD:
        return eventfd.kvm_ioeventfd(kvm, arg)
    if cmd == uapi.KVM_ENABLE_CAP:
        cap = uapi.kvm_enable_cap.from_buffer_copy(fs.copy_from_user(arg, ctypes.sizeof(uapi.kvm_enable_cap)))
        return kvm_vm_ioctl_enable_cap_generic(kvm, cap)
    return arch.kvm_arch_vm_ioctl(file, cmd, arg)


def kvm_vm_ioctl_enable_cap_generic(kvm: Kvm, cap) -> int:
    """KVM_ENABLE_CAP on a VM: kvmpy has none of the generic ones (halt polling, dirty
    rings, ...), so every capability is the architecture's."""
    return arch.kvm_vm_ioctl_enable_cap(kvm, cap)


kvm_vm_fops = fs.FileOperations("kvm_vm_fops", release=kvm_vm_release, unlocked_ioctl=kvm_vm_ioctl,
                                compat_ioctl=kvm_vm_ioctl, llseek=fs.noop_llseek)


# --------------------------------------------------------------------------------------
# Memslots
# --------------------------------------------------------------------------------------
def _replace_memslots(kvm: Kvm, slots: dict, old: KvmMemorySlot | None = None,
                      new: KvmMemorySlot | None = None) -> None:
    """kvm_swap_active_memslots: publish a new set of memslots (``old`` taken out, ``new``
    put in), bump the generation (the MMU drops its caches at the next entry) and wait until
    no vCPU can still be using the old set (``synchronize_srcu_expedited(&kvm->srcu)``).
    The gfn-sorted table and the page count change by the one slot, so that a VMM adding
    thousands of slots (KVM_CAP_NR_MEMSLOTS of them: the selftest set_memory_region_test)
    pays for each no more than a copy.  Neither ``old`` nor ``new``: every slot goes (the
    VM's end)."""
    whole = old is None and new is None
    table = [] if whole else list(kvm._slots_by_gfn)
    if old is not None:
        del table[bisect.bisect_left(table, (old.base_gfn, old.id))]
    if new is not None:
        bisect.insort(table, (new.base_gfn, new.id, new))     # base_gfns differ: slots never overlap
    pages = 0 if whole else kvm.nr_memslot_pages - (old.npages if old else 0) + (new.npages if new else 0)
    with kvm.slots_lock:
        kvm.memslots = slots
        kvm._slots_by_gfn = table
        kvm.nr_memslot_pages = pages
        kvm.memslots_generation += 1
    synchronize_srcu_expedited(kvm.srcu)


def _overlaps(kvm: Kvm, slot_id: int, base_gfn: int, npages: int) -> bool:
    """Does another slot hold a frame of base_gfn..+npages?  The slots are disjoint and sorted,
    so only the last other one starting below the end can."""
    table = kvm._slots_by_gfn
    i = bisect.bisect_left(table, (base_gfn + npages,)) - 1
    while i >= 0 and table[i][1] == slot_id:        # the slot being moved
        i -= 1
    return i >= 0 and table[i][2].end_gfn > base_gfn


def _retire_memslot(kvm: Kvm, old: KvmMemorySlot) -> None:
    """After a delete or move has been published: zap what the MMU derived from the old slot
    and flush every vCPU's TLB, waiting for vCPUs in guest mode to exit
    (kvm_arch_flush_shadow_memslot).  Done after the SRCU grace period, so that no page fault
    still in flight can map the old memory again; when this returns nothing touches it."""
    kvm.mmu_mapped_slots.discard(old.id)
    mmu.kvm_arch_flush_shadow_memslot(kvm, old)
    kvm_flush_remote_tlbs(kvm)



def _check_memory_region_flags(flags: int) -> None:
    if flags & ~KVM_VALID_MEM_FLAGS:
        raise kernel_error(errno.EINVAL)


@traced
def kvm_set_memory_region(kvm: Kvm, mem) -> int:
    """__kvm_set_memory_region: validate, then create, delete, move or change flags."""
    _check_memory_region_flags(mem.flags)
    as_id, slot_id = mem.slot >> 16, mem.slot & 0xFFFF
    size, gpa, hva = mem.memory_size, mem.guest_phys_addr, mem.userspace_addr
    if size & (PAGE_SIZE - 1) or gpa & (PAGE_SIZE - 1):
        raise kernel_error(errno.EINVAL)
    if hva & (PAGE_SIZE - 1) or hva + size > TASK_SIZE_MAX + PAGE_SIZE:   # access_ok
        raise kernel_error(errno.EINVAL)
    if as_id >= KVM_ADDRESS_SPACE_NUM or slot_id >= uapi.KVM_USER_MEM_SLOTS:
        raise kernel_error(errno.EINVAL)
    if gpa + size >= 1 << 64:
        raise kernel_error(errno.EINVAL)
    if (size >> PAGE_SHIFT) > KVM_MEM_MAX_NR_PAGES:
        raise kernel_error(errno.EINVAL)

    with kvm.slots_lock:
        old = kvm.memslots.get(mem.slot)
        slots = dict(kvm.memslots)
        if size == 0:
            if old is None:
                raise kernel_error(errno.EINVAL)
            del slots[mem.slot]
            _replace_memslots(kvm, slots, old, None)
            _retire_memslot(kvm, old)
            return 0
        base_gfn, npages = gpa >> PAGE_SHIFT, size >> PAGE_SHIFT
        if old is not None:
            if hva != old.userspace_addr or npages != old.npages or (mem.flags ^ old.flags) & uapi.KVM_MEM_READONLY:
                raise kernel_error(errno.EINVAL)
            if base_gfn == old.base_gfn and mem.flags == old.flags:
                return 0
        moved = old is None or base_gfn != old.base_gfn
        if moved and _overlaps(kvm, mem.slot, base_gfn, npages):      # one address space
            raise kernel_error(errno.EEXIST)
        arch.kvm_arch_prepare_memory_region(kvm, base_gfn, npages, mem.flags)
        new = KvmMemorySlot(mem.slot, as_id, base_gfn, npages, hva, mem.flags)
        if old is not None and old.dirty_bitmap is not None and new.dirty_bitmap is not None:
            new.dirty_bitmap[:] = old.dirty_bitmap
        slots[mem.slot] = new
        _replace_memslots(kvm, slots, old, new)
        if old is not None:         # moved, or flags changed: nothing may keep the old mappings
            _retire_memslot(kvm, old)
    return 0


def kvm_vm_ioctl_set_memory_region(kvm: Kvm, mem) -> int:
    return kvm_set_memory_region(kvm, mem)



def kvm_mmu_notifier_invalidate_range_start(kvm: Kvm, start: int, end: int) -> None:
    """The process's address space changes in [start, end) (munmap, mprotect, mremap): zap
    every mapping the MMU made of pages there and flush the vCPUs' TLBs, so that the next
    access faults and checks the backing again.  kvmpy's own GuestMemory calls this before it
    unmaps; an interposed munmap/mprotect/mremap does for other VMMs (see ``mmu_notifier``)."""
    hit = False
    for slot in list(kvm.memslots.values()):
        lo = max(start, slot.userspace_addr)
        hi = min(end, slot.userspace_addr + (slot.npages << PAGE_SHIFT))
        if lo < hi and slot.id in kvm.mmu_mapped_slots:
            first = slot.base_gfn + ((lo - slot.userspace_addr) >> PAGE_SHIFT)
            last = slot.base_gfn + ((hi - 1 - slot.userspace_addr) >> PAGE_SHIFT)
            mmu.kvm_unmap_gfn_range(kvm, first, last + 1)
            hit = True
    if hit:
        kvm_flush_remote_tlbs(kvm)


def mmu_notifier_invalidate_range_start(start: int, end: int) -> None:
    """mm/mmu_notifier.c for kvmpy's one address space: tell every VM that [start, end) of
    the process's memory is about to change."""
    for kvm in list(vm_list):
        kvm_mmu_notifier_invalidate_range_start(kvm, start, end)


def kvm_check_mapped_memslots(kvm: Kvm) -> None:
    """At each KVM_RUN, for a VMM whose munmap kvmpy does not see: a slot the MMU mapped
    pages of whose user range is no longer wholly mapped gets those mappings zapped, as the
    mmu notifier would have.  One msync per such slot: the cost does not grow with the
    slot's size.  (An mprotect is only seen through the notifier.)"""
    for sid in list(kvm.mmu_mapped_slots):
        slot = kvm.memslots.get(sid)
        if slot is None:
            kvm.mmu_mapped_slots.discard(sid)
        elif not hm.mapped(slot.userspace_addr, slot.npages << PAGE_SHIFT):
            kvm_mmu_notifier_invalidate_range_start(
                kvm, slot.userspace_addr, slot.userspace_addr + (slot.npages << PAGE_SHIFT))
            kvm.mmu_mapped_slots.discard(sid)


@traced
def kvm_vm_ioctl_get_dirty_log(kvm: Kvm, log) -> int:
    """Copy the slot's dirty bitmap to user space and clear it (pages are write-protected
    again by the arch, so the next write is caught)."""
    as_id, slot_id = log.slot >> 16, log.slot & 0xFFFF
    if as_id >= KVM_ADDRESS_SPACE_NUM or slot_id >= uapi.KVM_USER_MEM_SLOTS:
        raise kernel_error(errno.EINVAL)          # not a slot number at all
    with kvm.slots_lock:
        slot = kvm.memslots.get(log.slot)
        if slot is None or slot.dirty_bitmap is None:
            raise kernel_error(errno.ENOENT)      # no such slot, or it does not log
        n = ((slot.npages + 63) // 64) * 8        # the user bitmap is in longs
        snapshot = bytes(slot.dirty_bitmap).ljust(n, b"\0")
        slot.dirty_bitmap[:] = bytes(len(slot.dirty_bitmap))
        dirty = [slot.base_gfn + i * 8 + b for i, byte in enumerate(snapshot) if byte
                 for b in range(8) if byte >> b & 1]
        if dirty:
            mmu.kvm_arch_mmu_enable_log_dirty_pt_masked(kvm, slot, dirty)
    fs.copy_to_user(log.dirty_bitmap or 0, snapshot)
    return 0


# --------------------------------------------------------------------------------------
# vCPUs (seed steps 5-6)
# --------------------------------------------------------------------------------------
@traced
def kvm_vcpu_init(vcpu: KvmVcpu, kvm: Kvm, vcpu_id: int) -> None:
    vcpu.kvm = kvm
    vcpu.vcpu_id = vcpu_id
    vcpu.run_area = RunArea("kvm-vcpu:%d" % vcpu_id)
    vcpu.run = vcpu.run_area.run
    vcpu.pio_data = vcpu.run_area.page(uapi.KVM_PIO_PAGE_OFFSET)
    vcpu.stat = KvmStats(stats_id_vcpu(vcpu_id), VCPU_STATS)


def _kvm_vcpu_free_files(vcpu: KvmVcpu) -> None:
    """Release the memfds behind the vCPU's kvm_run pages and its statistics."""
    if vcpu.run_area is not None:
        vcpu.run = vcpu.pio_data = None
        vcpu.run_area.free()
        vcpu.run_area = None
    if vcpu.stat is not None:
        vcpu.stat.free()


@traced
def create_vcpu_fd(vcpu: KvmVcpu) -> int:
    """The vCPU's file; its descriptor maps the vCPU's kvm_run pages."""
    return fs.anon_inode_getfd("kvm-vcpu:%d" % vcpu.vcpu_id, kvm_vcpu_fops, vcpu,
                               os.O_RDWR | os.O_CLOEXEC, share_fd=vcpu.run_area.memfd)


@traced
def kvm_vm_ioctl_create_vcpu(kvm: Kvm, vcpu_id: int) -> int:
    if vcpu_id >= uapi.KVM_MAX_VCPU_IDS:
        raise kernel_error(errno.EINVAL)
    with kvm.lock:
        if kvm.created_vcpus >= kvm.max_vcpus:
            raise kernel_error(errno.EINVAL)
        kvm.created_vcpus += 1
    vcpu = None
    try:
        arch.kvm_arch_vcpu_precreate(kvm, vcpu_id)
        vcpu = KvmVcpu()
        kvm_vcpu_init(vcpu, kvm, vcpu_id)
        arch.kvm_arch_vcpu_create(vcpu)
        with kvm.lock:
            if kvm_get_vcpu_by_id(kvm, vcpu_id) is not None:
                raise kernel_error(errno.EEXIST)
            vcpu.vcpu_idx = len(kvm.vcpus)
            kvm.vcpus.append(vcpu)
        kvm_get_kvm(kvm)
        try:
            fd = create_vcpu_fd(vcpu)
        except BaseException:
            with kvm.lock:
                kvm.vcpus.remove(vcpu)
            kvm_put_kvm(kvm)
            raise
    except BaseException:
        with kvm.lock:
            kvm.created_vcpus -= 1
        if vcpu is not None and vcpu not in kvm.vcpus:
            if vcpu.arch is not None:
                arch.kvm_arch_vcpu_destroy(vcpu)
            _kvm_vcpu_free_files(vcpu)
        raise
    with kvm.lock:
        kvm.online_vcpus += 1
    arch.kvm_arch_vcpu_postcreate(vcpu)
    return fd


def kvm_vcpu_release(inode, file) -> int:
    kvm_put_kvm(file.private_data.kvm)
    return 0


def kvm_vcpu_mmap(file, length: int, offset: int, flags: int, prot: int, access: int):
    """Map the vCPU's kvm_run pages (the same memory the kernel writes)."""
    vcpu: KvmVcpu = file.private_data
    return vcpu.run_area.map_user(length, offset, flags, prot, access)


def _vcpu_ioctl_run(vcpu: KvmVcpu, arg) -> int:
    if arg:
        raise kernel_error(errno.EINVAL)
    kvm_check_mapped_memslots(vcpu.kvm)
    signals.kvm_sigset_activate(vcpu)
    try:
        return x86_run.kvm_arch_vcpu_ioctl_run(vcpu)
    finally:
        signals.kvm_sigset_deactivate(vcpu)


def _vcpu_ioctl_set_signal_mask(vcpu: KvmVcpu, arg) -> int:
    if not arg:
        vcpu.sigset = None
        return 0
    hdr = uapi.kvm_signal_mask.from_buffer_copy(fs.copy_from_user(arg, 4))
    if hdr.len != 8:                         # sizeof(sigset_t) in the kernel
        raise kernel_error(errno.EINVAL)
    mask = int.from_bytes(fs.copy_from_user(arg + 4, 8), "little")
    vcpu.sigset = mask                       # bit s - 1: signal s blocked (signals.py)
    return 0


@traced
def kvm_vcpu_ioctl(file, cmd: int, arg):
    """unlocked_ioctl of a vCPU file."""
    vcpu: KvmVcpu = file.private_data
    with vcpu.mutex:
        kvm_vcpu_srcu_read_lock(vcpu)       # the memslots stay while the ioctl uses them
        try:
            if cmd == uapi.KVM_RUN:
                return _vcpu_ioctl_run(vcpu, arg)
            if cmd == uapi.KVM_SET_SIGNAL_MASK:
                return _vcpu_ioctl_set_signal_mask(vcpu, arg)
            if cmd == uapi.KVM_GET_STATS_FD:
                return kvm_vcpu_ioctl_get_stats_fd(vcpu)
            return arch.kvm_arch_vcpu_ioctl(file, cmd, arg)
        finally:
            kvm_vcpu_srcu_read_unlock(vcpu)


kvm_vcpu_fops = fs.FileOperations("kvm_vcpu_fops", release=kvm_vcpu_release,
                                  unlocked_ioctl=kvm_vcpu_ioctl, compat_ioctl=kvm_vcpu_ioctl,
                                  mmap=kvm_vcpu_mmap, llseek=fs.noop_llseek)


# --------------------------------------------------------------------------------------
# Binary statistics (KVM_GET_STATS_FD): a read-only file per call, holding a VM reference
# --------------------------------------------------------------------------------------
def kvm_stats_release(inode, file) -> int:
    kvm_put_kvm(file.private_data)
    return 0


kvm_vm_stats_fops = fs.FileOperations("kvm_vm_stats_fops", release=kvm_stats_release, llseek=fs.noop_llseek)
kvm_vcpu_stats_fops = fs.FileOperations("kvm_vcpu_stats_fops", release=kvm_stats_release,
                                        llseek=fs.noop_llseek)


def _stats_fd(kvm: Kvm, stat: KvmStats, name: str, fops) -> int:
    """Install a new read-only descriptor on ``stat``'s file image (see kvmpy.kernel.stats)."""
    fd = stat.open_fd()
    file = fs.anon_inode_getfile(name, fops, kvm, os.O_RDONLY)
    kvm_get_kvm(kvm)
    fs.fd_install(fd, file)
    return fd


@traced
def kvm_vm_ioctl_get_stats_fd(kvm: Kvm) -> int:
    return _stats_fd(kvm, kvm.stat, "kvm-vm-stats", kvm_vm_stats_fops)


@traced
def kvm_vcpu_ioctl_get_stats_fd(vcpu: KvmVcpu) -> int:
    return _stats_fd(vcpu.kvm, vcpu.stat, "kvm-vcpu-stats:%d" % vcpu.vcpu_id, kvm_vcpu_stats_fops)
