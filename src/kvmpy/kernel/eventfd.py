"""Eventfds and irq ack notifiers (virt/kvm/eventfd.c).

KVM_IRQFD: a signal on an eventfd injects a GSI (an edge, or with a resample fd a level the
guest's EOI lowers); KVM_IOEVENTFD: a guest write to a port or MMIO address signals an
eventfd inside KVM_RUN, with no exit to user space (a device on the VM's kvm_io_bus).  Both
work on real ``compat.eventfd`` descriptors that another thread or process polls or signals.

Ack notifiers: a device that must know when the guest has finished with an interrupt (the
PIT's tick reinjection, an irqfd's resampler) registers a ``KvmIrqAckNotifier`` for a GSI;
the in-kernel interrupt controllers call ``kvm_notify_acked_gsi`` (or
``kvm_notify_acked_irq`` with a chip and pin) when the guest EOIs it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import selectors
import threading

from .. import compat, uapi
from . import irq_hook
from .fs import copy_from_user, kernel_error
from .irqchip import kvm_irq_map_chip_pin
from .iodev import KVM_MMIO_BUS, KVM_PIO_BUS, KvmIoDevice, kvm_io_bus_register_dev, kvm_io_bus_unregister_dev


class KvmIrqAckNotifier:
    """struct kvm_irq_ack_notifier: ``irq_acked(self)`` runs when GSI ``gsi`` is acknowledged."""

    __slots__ = ("gsi", "irq_acked")

    def __init__(self, gsi: int, irq_acked):
        self.gsi = gsi
        self.irq_acked = irq_acked


def kvm_register_irq_ack_notifier(kvm, kian: KvmIrqAckNotifier) -> None:
    with kvm.lock:
        kvm.irq_ack_notifier_list = kvm.irq_ack_notifier_list + [kian]


def kvm_unregister_irq_ack_notifier(kvm, kian: KvmIrqAckNotifier) -> None:
    with kvm.lock:
        kvm.irq_ack_notifier_list = [k for k in kvm.irq_ack_notifier_list if k is not kian]


def kvm_notify_acked_gsi(kvm, gsi: int) -> None:
    """The guest acknowledged GSI ``gsi``: run its notifiers (the list is replaced, never
    changed in place, so a notifier may unregister itself)."""
    for kian in kvm.irq_ack_notifier_list:
        if kian.gsi == gsi:
            kian.irq_acked(kian)


def kvm_notify_acked_irq(kvm, irqchip: int, pin: int) -> None:
    """The guest acknowledged ``pin`` of an in-kernel interrupt controller (an EOI to the
    PIC or the IOAPIC): notify for the GSI routed there, if any."""
    gsi = kvm_irq_map_chip_pin(kvm, irqchip, pin)
    if gsi != -1:
        kvm_notify_acked_gsi(kvm, gsi)


# ------------------------------------------------------------------ eventfd files
def eventfd_ctx_fdget(fd: int) -> int:
    """Take a reference on the eventfd behind ``fd`` (a duplicate descriptor, which the
    caller closes when done), as the kernel holds the eventfd's context: EBADF for a closed
    descriptor, EINVAL for a file that is not an eventfd."""
    try:
        with open("/proc/self/fdinfo/%d" % fd) as f:
            info = f.read()
    except (OSError, OverflowError):
        raise kernel_error(errno.EBADF) from None
    if "eventfd-count:" not in info:
        raise kernel_error(errno.EINVAL)
    return os.dup(fd)


def eventfd_id(fd: int):
    """What tells two descriptors of one eventfd apart from another eventfd's (the kernel
    compares the context pointers): its eventfd-id, or the descriptor on kernels without one."""
    with open("/proc/self/fdinfo/%d" % fd) as f:
        for line in f:
            if line.startswith("eventfd-id:"):
                return int(line.split()[1])
    return ("fd", fd)


def eventfd_signal(fd: int) -> None:
    try:
        compat.eventfd_write(fd, 1)
    except BlockingIOError:         # the counter is at its maximum: the reader is behind anyway
        pass


# ------------------------------------------------------------------ KVM_IRQFD
class KvmKernelIrqfdResampler:
    """struct kvm_kernel_irqfd_resampler: the irqfds with resample fds on one GSI share its
    line (source KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID); the guest's EOI lowers it and tells
    each resample fd, so user space can look whether the device still asserts it."""

    def __init__(self, kvm, gsi: int):
        self.kvm = kvm
        self.list: list = []
        self.notifier = KvmIrqAckNotifier(gsi, lambda kian: irqfd_resampler_ack(self))


def irqfd_resampler_ack(resampler) -> None:
    """The guest's EOI: lower the shared line, then ask the device (its resample fds)."""
    irq_hook.kvm_set_irq(resampler.kvm, irq_hook.KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, resampler.notifier.gsi, 0)
    irqfd_resampler_notify(resampler)


def irqfd_resampler_notify(resampler) -> None:
    for irqfd in resampler.list:
        eventfd_signal(irqfd.resamplefd)


def kvm_notify_irqfd_resampler(kvm, irqchip: int, pin: int) -> bool:
    """Signal the resample fds of the GSI routed to ``pin`` of ``irqchip``, if it has a
    resampler: the IOAPIC asks this way whether a level line that was latched while masked
    is still asserted.  False when there is none to ask."""
    gsi = kvm_irq_map_chip_pin(kvm, irqchip, pin)
    if gsi == -1:
        return False
    for resampler in list(kvm.irqfd_resampler_list):
        if resampler.notifier.gsi == gsi:
            irqfd_resampler_notify(resampler)
            return True
    return False


class KvmKernelIrqfd:
    """struct kvm_kernel_irqfd: a signal on ``eventfd`` injects GSI ``gsi``."""

    def __init__(self, kvm, gsi: int, eventfd: int, ident):
        self.kvm, self.gsi, self.eventfd, self.ident = kvm, gsi, eventfd, ident
        self.resampler = None
        self.resamplefd = None


def irqfd_inject(irqfd) -> None:
    """The eventfd was signalled: an edge on the GSI, or with a resampler, the level held
    until the guest's EOI."""
    kvm, gsi = irqfd.kvm, irqfd.gsi
    if irqfd.resampler is None:
        irq_hook.kvm_set_irq(kvm, irq_hook.KVM_USERSPACE_IRQ_SOURCE_ID, gsi, 1)
        irq_hook.kvm_set_irq(kvm, irq_hook.KVM_USERSPACE_IRQ_SOURCE_ID, gsi, 0)
    else:
        irq_hook.kvm_set_irq(kvm, irq_hook.KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, gsi, 1)


class IrqfdPoller:
    """The VM's irqfds' wait-queue entries: one thread waits on all their eventfds, reads
    each one that becomes readable (consuming its count, as irqfd_wakeup does) and injects.
    Another thread or process signals the eventfd; no vCPU needs to run for it."""

    def __init__(self, kvm):
        self.kvm = kvm
        self.selector = selectors.DefaultSelector()
        self.wake = compat.eventfd(0, compat.EFD_NONBLOCK | compat.EFD_CLOEXEC)
        self.selector.register(self.wake, selectors.EVENT_READ, None)
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="kvm-irqfd", daemon=True)
        self.thread.start()

    def add(self, irqfd) -> None:
        with self.lock:
            self.selector.register(irqfd.eventfd, selectors.EVENT_READ, irqfd)
        eventfd_signal(self.wake)

    def remove(self, irqfd) -> None:
        with self.lock:
            self.selector.unregister(irqfd.eventfd)
        eventfd_signal(self.wake)

    def stop(self) -> None:
        self.stopping = True
        eventfd_signal(self.wake)
        self.thread.join()
        self.selector.close()
        os.close(self.wake)

    def _loop(self) -> None:
        while not self.stopping:
            for key, _ in self.selector.select():
                if key.data is None:
                    _drain(self.wake)
                    continue
                with self.lock:
                    live = self.selector.get_map().get(key.fd) is key
                if live and _drain(key.fd):
                    irqfd_inject(key.data)


def _drain(fd: int) -> bool:
    try:
        compat.eventfd_read(fd)
        return True
    except (BlockingIOError, OSError):
        return False


def kvm_irqfd_assign(kvm, args, arch_allowed) -> int:
    resample = bool(args.flags & uapi.KVM_IRQFD_FLAG_RESAMPLE)
    if not arch_allowed(kvm, resample):
        raise kernel_error(errno.EINVAL)
    fd = eventfd_ctx_fdget(args.fd)
    irqfd = KvmKernelIrqfd(kvm, args.gsi, fd, eventfd_id(fd))
    try:
        if resample:
            irqfd.resamplefd = eventfd_ctx_fdget(args.resamplefd)
        with kvm.irqfds_lock:
            if any(other.ident == irqfd.ident for other in kvm.irqfds):
                raise kernel_error(errno.EBUSY)     # this eventfd already injects a GSI
            if resample:
                _attach_resampler(kvm, irqfd)
            kvm.irqfds.append(irqfd)
            if kvm.irqfd_poller is None:
                kvm.irqfd_poller = IrqfdPoller(kvm)
            kvm.irqfd_poller.add(irqfd)           # a count already there injects at once
    except BaseException:
        _close(irqfd)
        raise
    return 0


def _attach_resampler(kvm, irqfd) -> None:
    resampler = next((r for r in kvm.irqfd_resampler_list if r.notifier.gsi == irqfd.gsi), None)
    if resampler is None:
        resampler = KvmKernelIrqfdResampler(kvm, irqfd.gsi)
        kvm.irqfd_resampler_list.append(resampler)
        kvm_register_irq_ack_notifier(kvm, resampler.notifier)
    resampler.list = resampler.list + [irqfd]
    irqfd.resampler = resampler


def irqfd_shutdown(kvm, irqfd) -> None:
    """Take the irqfd off its eventfd; the last irqfd of a resampler lowers its line."""
    kvm.irqfd_poller.remove(irqfd)
    resampler = irqfd.resampler
    if resampler is not None:
        resampler.list = [i for i in resampler.list if i is not irqfd]
        if not resampler.list:
            kvm_unregister_irq_ack_notifier(kvm, resampler.notifier)
            kvm.irqfd_resampler_list.remove(resampler)
            irq_hook.kvm_set_irq(kvm, irq_hook.KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID, resampler.notifier.gsi, 0)
    _close(irqfd)


def _close(irqfd) -> None:
    for fd in (irqfd.eventfd, irqfd.resamplefd):
        if fd is not None:
            os.close(fd)


def kvm_irqfd_deassign(kvm, args) -> int:
    """Remove the irqfd of this eventfd and GSI; none is not an error."""
    fd = eventfd_ctx_fdget(args.fd)
    try:
        ident = eventfd_id(fd)
    finally:
        os.close(fd)
    with kvm.irqfds_lock:
        for irqfd in [i for i in kvm.irqfds if i.ident == ident and i.gsi == args.gsi]:
            kvm.irqfds.remove(irqfd)
            irqfd_shutdown(kvm, irqfd)
    return 0


def kvm_irqfd(kvm, arg, arch_allowed) -> int:
    """KVM_IRQFD; ``arch_allowed(kvm, resample)`` is the architecture's kvm_arch_irqfd_allowed
    (generic KVM passes it: this module sits below the architecture code)."""
    args = uapi.kvm_irqfd.from_buffer_copy(copy_from_user(arg, ctypes.sizeof(uapi.kvm_irqfd)))
    if args.flags & ~(uapi.KVM_IRQFD_FLAG_DEASSIGN | uapi.KVM_IRQFD_FLAG_RESAMPLE):
        raise kernel_error(errno.EINVAL)
    if args.flags & uapi.KVM_IRQFD_FLAG_DEASSIGN:
        return kvm_irqfd_deassign(kvm, args)
    return kvm_irqfd_assign(kvm, args, arch_allowed)


def kvm_irqfd_release(kvm) -> None:
    """The VM file is closed: shut every irqfd down and stop the poller."""
    with kvm.irqfds_lock:
        for irqfd in kvm.irqfds:
            irqfd_shutdown(kvm, irqfd)
        kvm.irqfds = []
        if kvm.irqfd_poller is not None:
            kvm.irqfd_poller.stop()
            kvm.irqfd_poller = None


# ------------------------------------------------------------------ KVM_IOEVENTFD
KVM_IOEVENTFD_VALID_FLAG_MASK = (uapi.KVM_IOEVENTFD_FLAG_DATAMATCH | uapi.KVM_IOEVENTFD_FLAG_PIO
                                 | uapi.KVM_IOEVENTFD_FLAG_DEASSIGN | uapi.KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY)


class Ioeventfd(KvmIoDevice):
    """struct _ioeventfd: a guest write of ``length`` bytes at ``addr`` (with ``datamatch``'s
    value, unless a wildcard) signals ``eventfd`` inside KVM_RUN: no exit to user space.
    Length 0 matches any write at the address."""

    def __init__(self, bus_idx, addr, length, eventfd, ident, datamatch):
        self.bus_idx, self.addr, self.length = bus_idx, addr, length
        self.eventfd, self.ident = eventfd, ident
        self.wildcard = datamatch is None
        self.datamatch = datamatch

    def in_range(self, addr: int, length: int, data: bytes) -> bool:
        if addr != self.addr:
            return False
        if not self.length:
            return True
        if length != self.length:
            return False
        return self.wildcard or int.from_bytes(data[:length], "little") == self.datamatch

    def write(self, vcpu, addr, length, data):
        if not self.in_range(addr, length, data):
            return False
        eventfd_signal(self.eventfd)
        return True

    def collides(self, other) -> bool:
        return (self.bus_idx == other.bus_idx and self.addr == other.addr
                and (not self.length or not other.length
                     or (self.length == other.length
                         and (self.wildcard or other.wildcard or self.datamatch == other.datamatch))))


def _ioeventfd_bus(flags: int) -> int:
    if flags & uapi.KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY:
        raise kernel_error(errno.EINVAL)        # no virtio-ccw notify bus on x86
    return KVM_PIO_BUS if flags & uapi.KVM_IOEVENTFD_FLAG_PIO else KVM_MMIO_BUS


def kvm_assign_ioeventfd(kvm, args) -> int:
    if args.len not in (0, 1, 2, 4, 8):
        raise kernel_error(errno.EINVAL)        # natural word sizes, or 0: any write at addr
    if args.addr + args.len > 0xFFFFFFFFFFFFFFFF:
        raise kernel_error(errno.EINVAL)
    if args.flags & ~KVM_IOEVENTFD_VALID_FLAG_MASK:
        raise kernel_error(errno.EINVAL)
    if not args.len and args.flags & uapi.KVM_IOEVENTFD_FLAG_DATAMATCH:
        raise kernel_error(errno.EINVAL)
    bus_idx = _ioeventfd_bus(args.flags)
    fd = eventfd_ctx_fdget(args.fd)
    match = args.datamatch if args.flags & uapi.KVM_IOEVENTFD_FLAG_DATAMATCH else None
    p = Ioeventfd(bus_idx, args.addr, args.len, fd, eventfd_id(fd), match)
    try:
        with kvm.slots_lock:
            if any(p.collides(q) for q in kvm.ioeventfds):
                raise kernel_error(errno.EEXIST)
            kvm_io_bus_register_dev(kvm, bus_idx, p.addr, p.length, p)
            kvm.ioeventfds.append(p)
    except BaseException:
        os.close(fd)
        raise
    return 0


def kvm_deassign_ioeventfd(kvm, args) -> int:
    bus_idx = _ioeventfd_bus(args.flags)
    fd = eventfd_ctx_fdget(args.fd)
    try:
        ident = eventfd_id(fd)
    finally:
        os.close(fd)
    wildcard = not args.flags & uapi.KVM_IOEVENTFD_FLAG_DATAMATCH
    with kvm.slots_lock:
        for p in kvm.ioeventfds:
            if (p.bus_idx, p.ident, p.addr, p.length, p.wildcard) != (bus_idx, ident, args.addr, args.len, wildcard):
                continue
            if not p.wildcard and p.datamatch != args.datamatch:
                continue
            kvm_io_bus_unregister_dev(kvm, bus_idx, p)
            kvm.ioeventfds.remove(p)
            os.close(p.eventfd)
            return 0
    raise kernel_error(errno.ENOENT)


def kvm_ioeventfd(kvm, arg) -> int:
    args = uapi.kvm_ioeventfd.from_buffer_copy(copy_from_user(arg, ctypes.sizeof(uapi.kvm_ioeventfd)))
    if args.flags & uapi.KVM_IOEVENTFD_FLAG_DEASSIGN:
        return kvm_deassign_ioeventfd(kvm, args)
    return kvm_assign_ioeventfd(kvm, args)


def kvm_eventfd_release(kvm) -> None:
    """The VM is going away: drop the ioeventfds' references to their eventfds."""
    for p in kvm.ioeventfds:
        os.close(p.eventfd)
    kvm.ioeventfds = []


EVENTFD_CAPS = {uapi.KVM_CAP_IRQFD: 1, uapi.KVM_CAP_IRQFD_RESAMPLE: 1, uapi.KVM_CAP_IOEVENTFD: 1,
                uapi.KVM_CAP_IOEVENTFD_NO_LENGTH: 1, uapi.KVM_CAP_IOEVENTFD_ANY_LENGTH: 1}
