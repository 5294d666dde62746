"""x86's routing entries (arch/x86/kvm/irq_comm.c): what a GSI route of each type does.

``kvm_set_routing_entry`` checks one KVM_SET_GSI_ROUTING entry and picks its ``set``:
a pin of the master or slave PIC (0-7 each), a pin of the IOAPIC (0-23), or an MSI.  The
default table that KVM_CREATE_IRQCHIP installs sends GSIs 0-15 to both the PIC pin and the
IOAPIC pin of the same number and GSIs 16-23 to the IOAPIC alone.
"""

from __future__ import annotations

import errno

from ...uapi import kvm as uapi
from ..fs import kernel_error
from ..irqchip import kvm_set_irq_routing
from . import i8259, ioapic

PIC_PINS_PER_CHIP = i8259.PIC_NUM_PINS // 2


def kvm_set_pic_irq(e, kvm, irq_source_id: int, level: int, line_status: bool) -> int:
    return i8259.kvm_pic_set_irq(kvm.arch.vpic, e.pin, irq_source_id, level)


def kvm_set_ioapic_irq(e, kvm, irq_source_id: int, level: int, line_status: bool) -> int:
    return ioapic.kvm_ioapic_set_irq(kvm.arch.vioapic, e.pin, irq_source_id, level, line_status)


def kvm_irq_delivery_to_apic(kvm, src, irq, dest_map=None) -> int:
    """Deliver the message ``irq`` (a KvmLapicIrq) from LAPIC ``src`` (None: the IOAPIC or
    an MSI) to every LAPIC it names; the number of LAPICs that took it, -1 for none.
    Interface for lapic.c's delivery, which is not emulated yet: no LAPIC takes it."""
    return -1


def kvm_set_msi(e, kvm, irq_source_id: int, level: int, line_status: bool) -> int:
    """An MSI is a write of ``data`` to a LAPIC's ``address``; kvmpy has no in-kernel LAPIC
    to receive it yet, so none takes it (-1), as a lowered line never does either."""
    return -1


def kvm_set_routing_entry(e, ue) -> None:
    if ue.type == uapi.KVM_IRQ_ROUTING_IRQCHIP:
        chip, pin = ue.u.irqchip.irqchip, ue.u.irqchip.pin
        if chip in (uapi.KVM_IRQCHIP_PIC_MASTER, uapi.KVM_IRQCHIP_PIC_SLAVE):
            if pin >= PIC_PINS_PER_CHIP:
                raise kernel_error(errno.EINVAL)
            e.set = kvm_set_pic_irq
            pin += PIC_PINS_PER_CHIP * chip
        elif chip == uapi.KVM_IRQCHIP_IOAPIC:
            if pin >= ioapic.IOAPIC_NUM_PINS:
                raise kernel_error(errno.EINVAL)
            e.set = kvm_set_ioapic_irq
        else:
            raise kernel_error(errno.EINVAL)
        e.irqchip, e.pin = chip, pin
    elif ue.type == uapi.KVM_IRQ_ROUTING_MSI:
        m = ue.u.msi
        e.set = kvm_set_msi
        e.msi = (m.address_lo, m.address_hi, m.data)
    else:
        raise kernel_error(errno.EINVAL)


def _irqchip_entry(gsi: int, chip: int, pin: int):
    ue = uapi.kvm_irq_routing_entry(gsi=gsi, type=uapi.KVM_IRQ_ROUTING_IRQCHIP)
    ue.u.irqchip.irqchip, ue.u.irqchip.pin = chip, pin
    return ue


def default_routing():
    """GSI n -> IOAPIC pin n (0-23), and for n < 16 also the PIC pin n."""
    entries = []
    for gsi in range(ioapic.IOAPIC_NUM_PINS):
        entries.append(_irqchip_entry(gsi, uapi.KVM_IRQCHIP_IOAPIC, gsi))
        if gsi < i8259.PIC_NUM_PINS:
            entries.append(_irqchip_entry(gsi, gsi // PIC_PINS_PER_CHIP, gsi % PIC_PINS_PER_CHIP))
    return entries


def kvm_setup_default_irq_routing(kvm) -> None:
    kvm_set_irq_routing(kvm, default_routing(), 0, kvm_set_routing_entry)
