"""In-kernel I/O devices and the buses they sit on (virt/kvm/iodev.h, kvm_main.c's kvm_io_bus_*).

A VM has one bus per address space (``kvm.buses[KVM_PIO_BUS]``, ``kvm.buses[KVM_MMIO_BUS]``).
A device registers an address range on a bus; an access the guest makes there is served by the
device inside KVM_RUN, without an exit to user space, when the device handles it.  An access
no device handles goes to user space as KVM_EXIT_IO or KVM_EXIT_MMIO.  The PIT, LAPIC, IOAPIC
and ioeventfds register here.

Like the kernel's, a bus is replaced, never changed in place: registering builds a new sorted
range table, publishes it and waits for the vCPUs still reading the old one
(``synchronize_srcu_expedited``), so a vCPU looks a device up without a lock.
"""

from __future__ import annotations

import bisect
import errno

from .fs import kernel_error
from .srcu import synchronize_srcu_expedited

KVM_MMIO_BUS, KVM_PIO_BUS = 0, 1        # enum kvm_bus (kvmpy has no virtio-ccw or fast-MMIO bus)
KVM_NR_BUSES = 2
NR_IOBUS_DEVS = 1000


class KvmIoDevice:
    """struct kvm_io_device with its kvm_io_device_ops.

    ``read`` fills ``data`` (``length`` bytes, little-endian) and ``write`` takes them; each
    returns True when the device handled the access, False to let the next device on the
    range, or user space, have it (the kernel's 0 / -EOPNOTSUPP).  The defaults handle
    nothing, as a device without the op does in Linux.
    """

    def read(self, vcpu, addr: int, length: int, data: bytearray) -> bool:
        return False

    def write(self, vcpu, addr: int, length: int, data: bytes) -> bool:
        return False


class KvmIoRange:
    """struct kvm_io_range: ``dev`` serves [addr, addr + len)."""

    __slots__ = ("addr", "len", "dev")

    def __init__(self, addr: int, length: int, dev: KvmIoDevice):
        self.addr, self.len, self.dev = addr, length, dev

    def covers(self, addr: int, length: int) -> bool:
        """kvm_io_bus_cmp == 0: the whole access lies in the range (a range of length 0,
        an ioeventfd that ignores the length, covers any access at its address)."""
        if not self.len:
            return addr == self.addr
        return self.addr <= addr and addr + length <= self.addr + self.len


class KvmIoBus:
    """struct kvm_io_bus: ranges sorted by address (then length), never changed once published."""

    __slots__ = ("range", "addrs")

    def __init__(self, ranges=()):
        self.range = sorted(ranges, key=lambda r: (r.addr, r.len))
        self.addrs = [r.addr for r in self.range]      # for bisect (no key= before Python 3.10)

    @property
    def dev_count(self) -> int:
        return len(self.range)

    def devices_for(self, addr: int, length: int):
        """The ranges that cover the access, in table order (kvm_io_bus_get_first_dev on)."""
        end = bisect.bisect_right(self.addrs, addr)
        return [r for r in self.range[:end] if r.covers(addr, length)]


def kvm_io_bus_register_dev(kvm, bus_idx: int, addr: int, length: int, dev: KvmIoDevice) -> int:
    """Put ``dev`` on the bus for [addr, addr + length); ENOSPC when the bus is full."""
    with kvm.slots_lock:
        bus = kvm.buses[bus_idx]
        if bus.dev_count >= NR_IOBUS_DEVS:
            raise kernel_error(errno.ENOSPC)
        kvm.buses[bus_idx] = KvmIoBus(bus.range + [KvmIoRange(addr, length, dev)])
    synchronize_srcu_expedited(kvm.srcu)
    return 0


def kvm_io_bus_unregister_dev(kvm, bus_idx: int, dev: KvmIoDevice) -> None:
    """Take ``dev``'s range off the bus; when this returns, no vCPU still calls the device."""
    with kvm.slots_lock:
        bus = kvm.buses[bus_idx]
        ranges = list(bus.range)
        for i, r in enumerate(ranges):
            if r.dev is dev:
                del ranges[i]
                break
        else:
            return
        kvm.buses[bus_idx] = KvmIoBus(ranges)
    synchronize_srcu_expedited(kvm.srcu)


def kvm_io_bus_write(vcpu, bus_idx: int, addr: int, length: int, data: bytes) -> bool:
    """Offer a guest write to the devices covering it; True once one handled it."""
    bus = vcpu.kvm.buses[bus_idx]
    if not bus.range:
        return False
    return any(r.dev.write(vcpu, addr, length, data) for r in bus.devices_for(addr, length))


def kvm_io_bus_read(vcpu, bus_idx: int, addr: int, length: int, data: bytearray) -> bool:
    """Offer a guest read to the devices covering it; True once one filled ``data``."""
    bus = vcpu.kvm.buses[bus_idx]
    if not bus.range:
        return False
    return any(r.dev.read(vcpu, addr, length, data) for r in bus.devices_for(addr, length))
