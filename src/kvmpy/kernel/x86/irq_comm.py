"""x86's routing entries (arch/x86/kvm/irq_comm.c): what a GSI route of each type does.

``kvm_set_routing_entry`` checks one KVM_SET_GSI_ROUTING entry and picks its ``set``:
a pin of the master or slave PIC (0-7 each), a pin of the IOAPIC (0-23), or an MSI.  The
default table that KVM_CREATE_IRQCHIP installs sends GSIs 0-15 to both the PIC pin and the
IOAPIC pin of the same number and GSIs 16-23 to the IOAPIC alone.  A split irqchip (the
PIC and IOAPIC in user space) takes MSI routes only.

An MSI is a write of ``data`` to an ``address`` in the LAPICs' window: ``kvm_set_msi_irq``
decodes the two into the message the LAPICs take.  The IOAPIC is reached only through the
methods of ``kvm.arch.vioapic`` (it sits above this module).
"""

from __future__ import annotations

import errno

from ...uapi import kvm as uapi
from ..fs import kernel_error
from ...hw.apicdef import APIC_DEST_NOSHORT
from ..irqchip import kvm_set_irq_routing
from ..kvm_host import KvmLapicIrq
from . import i8259, x86
from .lapic import kvm_apic_match_dest, kvm_irq_delivery_to_apic, kvm_lapic_irq_dest_mode  # noqa: F401 (ioapic.py)

PIC_PINS_PER_CHIP = i8259.PIC_NUM_PINS // 2
IOAPIC_NUM_PINS = uapi.KVM_IOAPIC_NUM_PINS

# MSI address (the LAPICs' window at 0xfee00000) and data fields
MSI_ADDR_DEST_MODE_LOGICAL = 1 << 2
MSI_ADDR_REDIRECTION_HINT = 1 << 3
MSI_ADDR_DEST_ID_SHIFT = 12             # bits 12-19: destination APIC ID
MSI_DATA_VECTOR = 0xFF
MSI_DATA_DELIVERY_MODE_SHIFT = 8        # 3 bits, APIC_DM_* >> 8
MSI_DATA_TRIGGER_LEVEL = 1 << 15



def kvm_set_pic_irq(e, kvm, irq_source_id: int, level: int, line_status: bool) -> int:
    return i8259.kvm_pic_set_irq(kvm.arch.vpic, e.pin, irq_source_id, level)


def kvm_set_ioapic_irq(e, kvm, irq_source_id: int, level: int, line_status: bool) -> int:
    return kvm.arch.vioapic.set_irq(e.pin, irq_source_id, level, line_status)


def kvm_set_msi_irq(kvm, address_lo: int, address_hi: int, data: int) -> KvmLapicIrq:
    """The message of an MSI: destination APIC ID (address bits 12-19), physical or logical
    (bit 2), the redirection hint (bit 3); vector, delivery mode and trigger from the data.
    An MSI always asserts (level 1), whatever its data's level bit.  (address_hi would carry
    destination bits 8-31 once KVM_CAP_X2APIC_API is enabled, which kvmpy does not offer.)"""
    return KvmLapicIrq(vector=data & MSI_DATA_VECTOR,
                       delivery_mode=(data >> MSI_DATA_DELIVERY_MODE_SHIFT & 7) << 8,
                       dest_mode=kvm_lapic_irq_dest_mode(bool(address_lo & MSI_ADDR_DEST_MODE_LOGICAL)),
                       level=1, trig_mode=int(bool(data & MSI_DATA_TRIGGER_LEVEL)),
                       shorthand=APIC_DEST_NOSHORT, dest_id=address_lo >> MSI_ADDR_DEST_ID_SHIFT & 0xFF,
                       msi_redir_hint=bool(address_lo & MSI_ADDR_REDIRECTION_HINT))


def kvm_set_msi(e, kvm, irq_source_id: int, level: int, line_status: bool) -> int:
    """An MSI route: a raised line sends the message (the number of LAPICs that took it, -1
    for none); lowering the line sends nothing (-1)."""
    if not level:
        return -1
    return kvm_irq_delivery_to_apic(kvm, None, kvm_set_msi_irq(kvm, *e.msi))


def kvm_scan_ioapic_irq(vcpu, irq: KvmLapicIrq, handled_vectors: set) -> None:
    """An EOI of ``irq``'s vector on ``vcpu`` must reach the IOAPIC when the vCPU is among
    the message's destinations."""
    if kvm_apic_match_dest(vcpu, None, APIC_DEST_NOSHORT, irq.dest_id, irq.dest_mode):
        handled_vectors.add(irq.vector)


def kvm_scan_ioapic_routes(vcpu, handled_vectors: set) -> None:
    """Split irqchip: user space's IOAPIC sends its pins as MSI routes on the first
    ``nr_reserved_ioapic_pins`` GSIs (KVM_ENABLE_CAP args[0]); the level-triggered ones
    name the vectors whose EOI goes to user space (KVM_EXIT_IOAPIC_EOI)."""
    kvm = vcpu.kvm
    rt = kvm.irq_routing
    if rt is None:
        return
    for gsi in range(min(rt.nr_rt_entries, kvm.arch.nr_reserved_ioapic_pins)):
        for e in rt.map.get(gsi, ()):
            if e.type != uapi.KVM_IRQ_ROUTING_MSI:
                continue
            irq = kvm_set_msi_irq(kvm, *e.msi)
            if irq.trig_mode:
                kvm_scan_ioapic_irq(vcpu, irq, handled_vectors)


def kvm_set_routing_entry(kvm, e, ue) -> None:
    if ue.type == uapi.KVM_IRQ_ROUTING_IRQCHIP:
        if x86.irqchip_split(kvm):
            raise kernel_error(errno.EINVAL)        # the PIC and IOAPIC are user space's
        chip, pin = ue.u.irqchip.irqchip, ue.u.irqchip.pin
        if chip in (uapi.KVM_IRQCHIP_PIC_MASTER, uapi.KVM_IRQCHIP_PIC_SLAVE):
            if pin >= PIC_PINS_PER_CHIP:
                raise kernel_error(errno.EINVAL)
            e.set = kvm_set_pic_irq
            pin += PIC_PINS_PER_CHIP * chip
        elif chip == uapi.KVM_IRQCHIP_IOAPIC:
            if pin >= IOAPIC_NUM_PINS:
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
    for gsi in range(IOAPIC_NUM_PINS):
        entries.append(_irqchip_entry(gsi, uapi.KVM_IRQCHIP_IOAPIC, gsi))
        if gsi < i8259.PIC_NUM_PINS:
            entries.append(_irqchip_entry(gsi, gsi // PIC_PINS_PER_CHIP, gsi % PIC_PINS_PER_CHIP))
    return entries


def kvm_setup_default_irq_routing(kvm) -> None:
    kvm_set_irq_routing(kvm, default_routing(), 0, kvm_set_routing_entry)
