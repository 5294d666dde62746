"""include/linux/kvm_host.h: the structures generic KVM and the architecture share (struct
kvm, kvm_vcpu, kvm_memory_slot, the vCPU's shared pages), and the generic functions the
architecture code calls on them: memslot lookup, dirty logging, host pages, requests, kicks
and guest mode.

Linux declares these in kvm_host.h and defines some in kvm_main.c; here they live below
both ``kvm_main`` (the device, VM and vCPU files and their ioctls) and the x86 layer, so that
``kernel.x86`` needs nothing from ``kvm_main`` and ``kvm_main`` calls the ``kvm_arch_*``
hooks without an import cycle.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import mmap as _mmap
import os
import threading
import time

from .. import uapi
from ..uapi import PAGE_SIZE
from ..hw import memory as hm
from .iodev import KVM_NR_BUSES, KvmIoBus
from .run_token import RunToken
from .srcu import SrcuStruct, srcu_read_lock, srcu_read_unlock
from .stats import KvmStats

RUN_PAGES = 3                       # kvm_run, PIO data page, coalesced MMIO ring
OUTSIDE_GUEST_MODE, IN_GUEST_MODE = 0, 1      # kvm_vcpu.mode
KVM_REQ_TLB_FLUSH = "tlb_flush"     # a KVM_REQUEST_WAIT request: the sender waits for guest exits
_KICK_POLL = 0.0002                 # s between looks at a kicked vCPU (the wait releases the GIL)
# enum kvm_irqchip_mode (asm/kvm_host.h), kvm.arch.irqchip_mode: here, below both the x86 layer
# and the generic interrupt code (eventfd.py, irqchip.py) that asks which irqchip a VM has.
KVM_IRQCHIP_NONE, KVM_IRQCHIP_KERNEL, KVM_IRQCHIP_SPLIT = 0, 1, 2


class KvmMemorySlot:
    """struct kvm_memory_slot: a range of guest frames backed by user memory, in place.

    Like KVM, kvmpy accepts any user address at KVM_SET_USER_MEMORY_REGION time; the memory
    is only checked, page by page, when the MMU maps it (``hva_to_pfn``).
    """

    __slots__ = ("id", "as_id", "base_gfn", "npages", "userspace_addr", "flags", "dirty_bitmap")

    def __init__(self, id, as_id, base_gfn, npages, userspace_addr, flags):
        self.id = id
        self.as_id = as_id
        self.base_gfn = base_gfn
        self.npages = npages
        self.userspace_addr = userspace_addr
        self.flags = flags
        self.dirty_bitmap = bytearray((npages + 7) // 8) if flags & uapi.KVM_MEM_LOG_DIRTY_PAGES else None

    @property
    def end_gfn(self) -> int:
        return self.base_gfn + self.npages

    def __repr__(self):
        return "<memslot %d gfn %#x+%#x at %#x flags %d>" % (
            self.id, self.base_gfn, self.npages, self.userspace_addr, self.flags)


class Kvm:
    """struct kvm: one virtual machine."""

    def __init__(self, vm_type: int):
        self.vm_type = vm_type
        self.users_count = 1
        self.lock = threading.RLock()
        self.slots_lock = threading.RLock()
        self.vcpus: list = []                  # by vcpu_idx (creation order)
        self.created_vcpus = 0
        self.online_vcpus = 0
        self.max_vcpus = uapi.KVM_MAX_VCPUS
        self.memslots: dict[int, KvmMemorySlot] = {}
        self.memslots_generation = 0
        self.srcu = SrcuStruct()               # readers: vCPUs using the memslots
        self.run_token = RunToken()            # the vCPU executing guest code (run_token.py)
        self.mmu_mapped_slots: set = set()     # ids of slots the MMU mapped pages of
        self._slots_by_gfn: list = []          # sorted (base_gfn, slot) for gfn_to_memslot
        self.nr_memslot_pages = 0
        self.buses = [KvmIoBus() for _ in range(KVM_NR_BUSES)]     # kvm_io_bus_register_dev (iodev.py)
        self.stat: KvmStats | None = None      # set by kvm_create_vm (stats.VM_STATS)
        self.clock = None                      # set by kvm_create_vm (hrtimer.kvm_clock_create)
        self.irq_routing = None                # irqchip.KvmIrqRoutingTable (KVM_CREATE_IRQCHIP, KVM_SET_GSI_ROUTING)
        self.irq_ack_notifier_list: list = []  # eventfd.kvm_register_irq_ack_notifier
        self.irqfds: list = []                 # KVM_IRQFD (eventfd.py), under irqfds_lock
        self.irqfds_lock = threading.RLock()
        self.irqfd_resampler_list: list = []
        self.irqfd_poller = None               # eventfd.IrqfdPoller, made by the first irqfd
        self.ioeventfds: list = []             # KVM_IOEVENTFD (eventfd.py), under slots_lock
        self.arch = None                       # set by kvm_arch_init_vm
        self.destroyed = False

    def __repr__(self):
        return "<kvm %#x vcpus=%d slots=%d>" % (id(self), self.online_vcpus, len(self.memslots))


class RunArea:
    """The vCPU's shared pages (kvm_run, PIO data, coalesced MMIO ring) in a memfd.

    The kernel maps the memfd once; user space maps the vCPU descriptor, a duplicate of the
    same memfd, so both see the same bytes as with the kernel's page.
    """

    __slots__ = ("memfd", "map", "run", "map_lock")

    def __init__(self, name: str):
        self.map_lock = threading.Lock()
        self.memfd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, RUN_PAGES * PAGE_SIZE)
        self.map = _mmap.mmap(self.memfd, RUN_PAGES * PAGE_SIZE, _mmap.MAP_SHARED,
                              _mmap.PROT_READ | _mmap.PROT_WRITE)
        self.run = uapi.kvm_run.from_buffer(self.map)

    def page(self, n: int) -> memoryview:
        return memoryview(self.map)[n * PAGE_SIZE:(n + 1) * PAGE_SIZE]

    def map_user(self, length: int, offset: int, flags: int, prot: int, access: int):
        """A user mapping of the pages: any length and offset, as KVM allows (kvm_vcpu_mmap).

        Pages 0-2 are kvm_run, the PIO data page and the coalesced MMIO ring, at the offsets
        KVM gives them; a page past them faults with SIGBUS when touched (kvm_vcpu_fault).
        Python's mmap refuses a length past the end of the file, so the memfd is grown for the
        call and shrunk back: the mapping keeps its length, and the pages past the end of the
        file raise SIGBUS, as the kernel's do.
        """
        size = RUN_PAGES * PAGE_SIZE
        with self.map_lock:
            if offset + length <= size:
                return _mmap.mmap(self.memfd, length, flags, prot, access, offset)
            os.ftruncate(self.memfd, offset + length)
            try:
                return _mmap.mmap(self.memfd, length, flags, prot, access, offset)
            finally:
                os.ftruncate(self.memfd, size)

    def free(self) -> None:
        self.run = None
        os.close(self.memfd)


class KvmVcpu:
    """struct kvm_vcpu: generic per-vCPU state; ``arch`` holds the x86 part."""

    def __init__(self):
        self.kvm = None
        self.vcpu_id = 0
        self.vcpu_idx = -1
        self.run_area: RunArea | None = None
        self.run = None                 # the kernel's view of kvm_run (ctypes over run_area)
        self.pio_data = None            # page 1 (io.data_offset = 4096)
        self.mutex = threading.RLock()
        self.sigset = None              # KVM_SET_SIGNAL_MASK's mask, a bit set, or None
        self.sigmask_saved = None       # the thread's signal mask while it is in KVM_RUN (signals.py)
        self.sigmask_interrupting = 0     # signals that end KVM_RUN, a bit set (signals.py)
        self.handlers_diverted: dict = {}   # signal -> Python handler, set aside during KVM_RUN
        self.signals_arrived: list = []     # signals the diverted handlers recorded (signals.py)
        self.stat: KvmStats | None = None      # set by kvm_vcpu_init (stats.VCPU_STATS)
        self.arch = None
        self.guest_debug = 0
        self.mode = OUTSIDE_GUEST_MODE
        self.guest_entries = 0          # VM entries so far (a kicker waits for the next exit)
        self.requests: set = set()      # KVM_REQ_* pending (set from any thread)
        self.wait = threading.Event()   # a blocked (halted) vCPU waits on it; kvm_vcpu_kick sets it
        self.srcu_idx = None
        self.srcu_thread = None         # the thread in the vCPU's SRCU read section

    def __repr__(self):
        return "<vcpu %d>" % self.vcpu_id



def kvm_get_vcpu_by_id(kvm: Kvm, vcpu_id: int):
    for v in kvm.vcpus:
        if v.vcpu_id == vcpu_id:
            return v
    return None


def gfn_to_memslot(kvm: Kvm, gfn: int) -> KvmMemorySlot | None:
    """The memslot containing guest frame ``gfn``, or None (an MMIO gap)."""
    table = kvm._slots_by_gfn
    # (gfn, inf) sorts after every (gfn, id, slot) entry; bisect's key= is Python 3.10+.
    i = bisect.bisect_right(table, (gfn, math.inf)) - 1
    if i >= 0:
        slot = table[i][2]
        if gfn < slot.base_gfn + slot.npages:
            return slot
    return None


def hva_to_pfn(hva: int, write_fault: bool):
    """The host page at user address ``hva``, faulted in for the access as get_user_pages
    does; None when it is not mapped with the needed permission.  (kvmpy's "pfn" is the
    host page's user address: the processor reaches it through ``kvmpy.hw.memory``.)"""
    return None if hm.populate(hva, PAGE_SIZE, write_fault) else hva & ~(PAGE_SIZE - 1)


def mark_page_dirty_in_slot(kvm: Kvm, slot: KvmMemorySlot, gfn: int) -> None:
    """Record a guest write for the dirty log (no-op unless the slot logs)."""
    if slot is not None and slot.dirty_bitmap is not None:
        rel = gfn - slot.base_gfn
        slot.dirty_bitmap[rel >> 3] |= 1 << (rel & 7)


def mark_page_dirty(kvm: Kvm, gfn: int) -> None:
    mark_page_dirty_in_slot(kvm, gfn_to_memslot(kvm, gfn), gfn)


class KvmLapicIrq:
    """struct kvm_lapic_irq: one interrupt message as the IOAPIC, an MSI or a LAPIC's ICR
    sends it, before a destination is chosen (kvm_irq_delivery_to_apic)."""

    __slots__ = ("vector", "delivery_mode", "dest_mode", "level", "trig_mode", "shorthand",
                 "dest_id", "msi_redir_hint")

    def __init__(self, vector=0, delivery_mode=0, dest_mode=0, level=True, trig_mode=0,
                 shorthand=0, dest_id=0, msi_redir_hint=False):
        self.vector, self.delivery_mode, self.dest_mode = vector, delivery_mode, dest_mode
        self.level, self.trig_mode, self.shorthand = level, trig_mode, shorthand
        self.dest_id, self.msi_redir_hint = dest_id, msi_redir_hint


def kvm_vcpu_kick(vcpu: KvmVcpu) -> None:
    """The IPI that makes a vCPU in guest mode exit: the processor leaves at the next block."""
    vcpu.arch.cpu.request_exit()
    vcpu.wait.set()


def kvm_make_request(req, vcpu: KvmVcpu) -> None:
    """Post ``req`` for the vCPU's own thread to serve before its next entry."""
    vcpu.requests.add(req)


def kvm_make_all_cpus_request(kvm: Kvm, req) -> None:
    """Post ``req`` to every vCPU and kick those in guest mode; return once each of them has
    left guest mode or served the request (KVM_REQUEST_WAIT).  A vCPU outside guest mode
    serves it before its next entry."""
    me = threading.get_ident()
    kicked = []
    for vcpu in list(kvm.vcpus):
        kvm_make_request(req, vcpu)
        if vcpu.mode == IN_GUEST_MODE and vcpu.srcu_thread != me:
            kicked.append((vcpu, vcpu.guest_entries))
            kvm_vcpu_kick(vcpu)
    for vcpu, entries in kicked:
        while vcpu.mode == IN_GUEST_MODE and vcpu.guest_entries == entries and req in vcpu.requests:
            time.sleep(_KICK_POLL)


def kvm_flush_remote_tlbs(kvm: Kvm) -> None:
    kvm_make_all_cpus_request(kvm, KVM_REQ_TLB_FLUSH)
    kvm.stat["remote_tlb_flush"] += 1


def kvm_check_request(req, vcpu: KvmVcpu) -> bool:
    if req in vcpu.requests:
        vcpu.requests.discard(req)
        return True
    return False


def kvm_guest_mode_run(vcpu: KvmVcpu, vcpu_run):
    """The part of vcpu_enter_guest in guest mode: ``vcpu_run(vcpu)`` (the vendor's VM
    entry) with the vCPU marked IN_GUEST_MODE and out of its SRCU read section, as the
    kernel drops kvm->srcu while the guest runs.  Requests posted before the mode was set
    are served first; later ones kick the processor out."""
    vcpu.arch.cpu.exit_request = False
    vcpu.guest_entries += 1
    vcpu.mode = IN_GUEST_MODE
    kvm_vcpu_srcu_read_unlock(vcpu)
    try:
        if kvm_check_request(KVM_REQ_TLB_FLUSH, vcpu):
            vcpu.arch.cpu.flush_tlb()
        return vcpu_run(vcpu)
    finally:
        vcpu.mode = OUTSIDE_GUEST_MODE
        kvm_vcpu_srcu_read_lock(vcpu)
        # a memslot update that waited for this exit returns now and its VMM may unmap the
        # old memory: the exit's handling (the emulator) must not reach it through the TLB
        if kvm_check_request(KVM_REQ_TLB_FLUSH, vcpu):
            vcpu.arch.cpu.flush_tlb()


@contextlib.contextmanager
def kvm_vcpu_srcu_dropped(vcpu: KvmVcpu):
    """Out of the vCPU's SRCU read section for a wait (a halt, the run token), as x86's
    vcpu_block drops kvm->srcu around kvm_vcpu_halt: a memslot update must not wait for a
    vCPU that waits for an event -- the event may come from the very thread that updates
    (QEMU's SeaBIOS changes slots while its APs wait for INIT)."""
    held = vcpu.srcu_idx is not None
    if held:
        kvm_vcpu_srcu_read_unlock(vcpu)
    try:
        yield
    finally:
        if held:
            kvm_vcpu_srcu_read_lock(vcpu)


def kvm_vcpu_srcu_read_lock(vcpu: KvmVcpu) -> None:
    vcpu.srcu_idx = srcu_read_lock(vcpu.kvm.srcu)
    vcpu.srcu_thread = threading.get_ident()


def kvm_vcpu_srcu_read_unlock(vcpu: KvmVcpu) -> None:
    idx, vcpu.srcu_idx, vcpu.srcu_thread = vcpu.srcu_idx, None, None
    srcu_read_unlock(vcpu.kvm.srcu, idx)
