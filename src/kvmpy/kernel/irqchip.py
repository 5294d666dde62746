"""GSI routing and ``kvm_set_irq`` (virt/kvm/irqchip.c): how a raised line finds its chips.

Every interrupt a device or user space raises names a GSI.  The VM's routing table
(``kvm.irq_routing``, a ``KvmIrqRoutingTable``) maps each GSI to one or more entries: pins
of the in-kernel interrupt controllers (the 8259 pair, the IOAPIC) or an MSI message.  Each
entry carries its ``set`` function, chosen by the architecture when the table is built
(irq_comm.kvm_set_routing_entry), so this generic code delivers without knowing the chips.
The table is replaced, never changed in place, so a delivery never sees a half-built one.

Several sources may drive the same line (user space, the PIT, resampling irqfds); each has
an irq source id, and the chips OR their levels.
"""

from __future__ import annotations

import errno

from .. import uapi
from .fs import kernel_error
from .srcu import synchronize_srcu_expedited

# include/linux/kvm_host.h: the sources that drive interrupt lines
KVM_USERSPACE_IRQ_SOURCE_ID = 0
KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID = 1
KVM_PIT_IRQ_SOURCE_ID = 2

KVM_MAX_IRQ_ROUTES = 4096           # KVM_CAP_IRQ_ROUTING's answer
KVM_NR_IRQCHIPS = uapi.KVM_NR_IRQCHIPS
KVM_IRQCHIP_NUM_PINS = uapi.KVM_IOAPIC_NUM_PINS


class KvmKernelIrqRoutingEntry:
    """struct kvm_kernel_irq_routing_entry: one route of a GSI.  ``set(e, kvm, irq_source_id,
    level, line_status)`` delivers it and returns the chip's status (1 delivered, 0
    coalesced, -1 masked or not delivered)."""

    __slots__ = ("gsi", "type", "set", "irqchip", "pin", "msi")

    def __init__(self, gsi: int, type_: int):
        self.gsi = gsi
        self.type = type_
        self.set = None
        self.irqchip = self.pin = None      # KVM_IRQ_ROUTING_IRQCHIP (pin 8-15: the slave PIC)
        self.msi = None                     # KVM_IRQ_ROUTING_MSI: (address_lo, address_hi, data)


class KvmIrqRoutingTable:
    """struct kvm_irq_routing_table: entries by GSI, and the reverse map chip -> pin -> GSI
    that EOIs use to find the GSI to acknowledge."""

    def __init__(self, nr_rt_entries: int):
        self.nr_rt_entries = nr_rt_entries
        self.map = {}
        self.chip = [[-1] * KVM_IRQCHIP_NUM_PINS for _ in range(KVM_NR_IRQCHIPS)]


def setup_routing_entry(kvm, rt: KvmIrqRoutingTable, e: KvmKernelIrqRoutingEntry, ue, set_routing_entry) -> None:
    """Add one user entry; a GSI may go to several chips but to each chip once, and a
    non-irqchip (MSI) route must be its GSI's only route."""
    for ei in rt.map.get(ue.gsi, ()):
        if (ei.type != uapi.KVM_IRQ_ROUTING_IRQCHIP or ue.type != uapi.KVM_IRQ_ROUTING_IRQCHIP
                or ue.u.irqchip.irqchip == ei.irqchip):
            raise kernel_error(errno.EINVAL)
    set_routing_entry(kvm, e, ue)
    if e.type == uapi.KVM_IRQ_ROUTING_IRQCHIP:
        rt.chip[e.irqchip][e.pin] = e.gsi
    rt.map.setdefault(e.gsi, []).append(e)


def kvm_set_irq_routing(kvm, ues, flags: int, set_routing_entry) -> None:
    """KVM_SET_GSI_ROUTING: build the whole new table, then publish it; any bad entry leaves
    the old one in place.  ``set_routing_entry(kvm, e, ue)`` is the architecture's check and
    choice of ``set`` (kvm_set_routing_entry)."""
    if len(ues) > KVM_MAX_IRQ_ROUTES or flags:
        raise kernel_error(errno.EINVAL)
    nr_rt_entries = 0
    for ue in ues:
        if ue.gsi >= KVM_MAX_IRQ_ROUTES:
            raise kernel_error(errno.EINVAL)
        nr_rt_entries = max(nr_rt_entries, ue.gsi + 1)
    rt = KvmIrqRoutingTable(nr_rt_entries)
    for ue in ues:
        if ue.flags:
            raise kernel_error(errno.EINVAL)
        setup_routing_entry(kvm, rt, KvmKernelIrqRoutingEntry(ue.gsi, ue.type), ue, set_routing_entry)
    with kvm.lock:
        kvm.irq_routing = rt
    synchronize_srcu_expedited(kvm.srcu)


def kvm_irq_map_gsi(kvm, gsi: int):
    """The routes of ``gsi`` in the current table (none for an unrouted GSI)."""
    rt = kvm.irq_routing
    if rt is None:
        return ()
    return rt.map.get(gsi, ())


def kvm_irq_map_chip_pin(kvm, irqchip: int, pin: int) -> int:
    """The GSI routed to ``pin`` of ``irqchip``, or -1."""
    rt = kvm.irq_routing
    if rt is None:
        return -1
    return rt.chip[irqchip][pin]


def kvm_set_irq(kvm, irq_source_id: int, gsi: int, level: int, line_status: bool = False) -> int:
    """Drive GSI ``gsi`` to ``level`` for ``irq_source_id`` on every chip it is routed to.

    Returns -1 if no route took it (unrouted, masked everywhere), else the sum of the
    routes' statuses: > 0 delivered, 0 coalesced with a request still pending."""
    ret = -1
    for e in list(kvm_irq_map_gsi(kvm, gsi)):
        r = e.set(e, kvm, irq_source_id, level, line_status)
        if r < 0:
            continue
        ret = r + (0 if ret < 0 else ret)
    return ret
