"""The in-kernel 8259A pair (arch/x86/kvm/i8259.c): the PC's master and slave PIC.

KVM_CREATE_IRQCHIP makes one per VM (``kvm.arch.vpic``).  Guests program it through ports
0x20/0x21 (master), 0xa0/0xa1 (slave) and the ELCR at 0x4d0/0x4d1, served on the PIO bus
without an exit; devices and KVM_IRQ_LINE drive its 16 input pins through ``kvm_set_irq``
(irq_comm.kvm_set_pic_irq).  The slave's output is the master's pin 2 (the cascade).  The
master's output (``output``) is the INTR line of the vCPU whose LAPIC accepts ExtINT; the
run path asks ``kvm_cpu_has_extint`` and reads the vector with ``kvm_pic_read_irq`` (the
INTA cycle).

Each chip keeps the kvm_pic_state fields of the uapi (IRR, IMR, ISR, the rotation offset
``priority_add``, the vector base, the initialization sequence, poll, auto-EOI, special mask
and special fully nested modes, the ELCR), so KVM_GET/SET_IRQCHIP copy them as they are.
Pins are edge-triggered unless their ELCR bit is set (level); ``last_irr`` is the line as
last driven, which is how an edge is seen.
"""

from __future__ import annotations

import threading

from ...uapi import kvm as uapi
from ..eventfd import kvm_notify_acked_irq
from ..iodev import KVM_PIO_BUS, KvmIoDevice, kvm_io_bus_register_dev, kvm_io_bus_unregister_dev
from ..kvm_host import kvm_vcpu_kick
from .lapic import kvm_apic_accept_pic_intr

PIC_NUM_PINS = 16
_STATE_FIELDS = [name for name, _ in uapi.kvm_pic_state._fields_]
ELCR_MASKS = (0xF8, 0xDE)        # pins whose trigger mode the ELCR may set: not 0-2 / not 8, 13
CASCADE_PIN = 2


class KvmKpicState:
    """struct kvm_kpic_state: one 8259A."""

    def __init__(self, pics_state, elcr_mask: int):
        self.pics_state = pics_state
        for name in _STATE_FIELDS:
            setattr(self, name, 0)
        self.elcr_mask = elcr_mask

    @property
    def is_master(self) -> bool:
        return self is self.pics_state.pics[0]


class KvmPic:
    """struct kvm_pic: the two chips, their lock, their output and the per-source pin states
    (a pin is the OR of what every irq source drives on it)."""

    def __init__(self, kvm):
        self.kvm = kvm
        self.lock = threading.RLock()
        self.pics = [KvmKpicState(self, mask) for mask in ELCR_MASKS]
        self.irq_states = [0] * PIC_NUM_PINS
        self.output = False
        self.wakeup_needed = False
        self.devs = [PicDevice(self, 0x20), PicDevice(self, 0xA0), PicDevice(self, 0x4D0)]


# ------------------------------------------------------------------ priorities
def get_priority(s: KvmKpicState, mask: int) -> int:
    """Priority level (0 highest) of the best bit in ``mask``, counted from the rotation
    offset; 8 when ``mask`` is empty."""
    if mask == 0:
        return 8
    priority = 0
    while not mask & (1 << ((priority + s.priority_add) & 7)):
        priority += 1
    return priority


def pic_get_irq(s: KvmKpicState) -> int:
    """The pin the chip would present now, or -1: the best unmasked request, if it beats the
    best in service.  In special fully nested mode the master lets the cascade pin's
    service not block the slave's further requests; in special mask mode a masked pin's
    service blocks nothing (8259A datasheet)."""
    priority = get_priority(s, s.irr & ~s.imr)
    if priority == 8:
        return -1
    mask = s.isr
    if s.special_mask:
        mask &= ~s.imr
    if s.special_fully_nested_mode and s.is_master:
        mask &= ~(1 << CASCADE_PIN)
    if priority < get_priority(s, mask):
        return (priority + s.priority_add) & 7
    return -1


def pic_set_irq1(s: KvmKpicState, irq: int, level: int) -> int:
    """Drive pin ``irq``: 1 if a new request was latched, 0 if it coalesced with one still
    pending, -1 if the pin is masked (the value KVM_IRQ_LINE_STATUS reports)."""
    mask = 1 << irq
    ret = 1
    if s.elcr & mask:                           # level-triggered
        if level:
            ret = int(not s.irr & mask)
            s.irr |= mask
            s.last_irr |= mask
        else:
            s.irr &= ~mask
            s.last_irr &= ~mask
    elif level:                                 # edge-triggered: latch a rising edge
        if not s.last_irr & mask:
            ret = int(not s.irr & mask)
            s.irr |= mask
        s.last_irr |= mask
    else:
        s.last_irr &= ~mask
    return -1 if s.imr & mask else ret


def pic_update_irq(s: KvmPic) -> None:
    """Propagate: the slave's request through the cascade pin, then the master's output."""
    if pic_get_irq(s.pics[1]) >= 0:
        pic_set_irq1(s.pics[0], CASCADE_PIN, 1)
        pic_set_irq1(s.pics[0], CASCADE_PIN, 0)
    pic_irq_request(s, pic_get_irq(s.pics[0]) >= 0)


def pic_irq_request(s: KvmPic, level: bool) -> None:
    """Set the master's INTR output; a rising output wakes the vCPU that takes it."""
    if level and not s.output:
        s.wakeup_needed = True
    s.output = level


def _pic_unlock_kick(s: KvmPic) -> None:
    """pic_unlock: after a rising output, kick the vCPU that accepts PIC interrupts."""
    if s.wakeup_needed:
        s.wakeup_needed = False
        for vcpu in s.kvm.vcpus:
            if kvm_apic_accept_pic_intr(vcpu):
                kvm_vcpu_kick(vcpu)
                break


def kvm_pic_set_irq(s: KvmPic, irq: int, irq_source_id: int, level: int) -> int:
    """One source drives pin ``irq`` (0-15) of the pair; returns pic_set_irq1's status."""
    with s.lock:
        if level:
            s.irq_states[irq] |= 1 << irq_source_id
        else:
            s.irq_states[irq] &= ~(1 << irq_source_id)
        ret = pic_set_irq1(s.pics[irq >> 3], irq & 7, int(bool(s.irq_states[irq])))
        pic_update_irq(s)
    _pic_unlock_kick(s)
    return ret


def kvm_pic_clear_all(s: KvmPic, irq_source_id: int) -> None:
    """A source goes away: it drives none of the pins any more."""
    with s.lock:
        for irq in range(PIC_NUM_PINS):
            s.irq_states[irq] &= ~(1 << irq_source_id)


# ------------------------------------------------------------------ acknowledge and EOI
def pic_clear_isr(s: KvmKpicState, irq: int) -> None:
    """End the service of pin ``irq`` and tell the ack notifiers (the PIT's reinjection,
    resampling irqfds) that its GSI was acknowledged."""
    s.isr &= ~(1 << irq)
    pin = irq if s.is_master else irq + 8
    chip = uapi.KVM_IRQCHIP_PIC_MASTER if s.is_master else uapi.KVM_IRQCHIP_PIC_SLAVE
    kvm_notify_acked_irq(s.pics_state.kvm, chip, pin)


def pic_intack(s: KvmKpicState, irq: int) -> None:
    """The INTA cycle on one chip: the pin goes in service; an edge request is consumed
    (a level one stays while its line is high); auto-EOI ends the service at once."""
    s.isr |= 1 << irq
    if not s.elcr & (1 << irq):
        s.irr &= ~(1 << irq)
    if s.auto_eoi:
        if s.rotate_on_auto_eoi:
            s.priority_add = (irq + 1) & 7
        pic_clear_isr(s, irq)


def kvm_pic_read_irq(kvm) -> int:
    """The vector the pair answers the vCPU's interrupt acknowledge with; with no request
    left (it went away), the spurious IRQ 7 of the chip that had none."""
    s = kvm.arch.vpic
    with s.lock:
        s.output = False
        master, slave = s.pics
        irq = pic_get_irq(master)
        if irq >= 0:
            pic_intack(master, irq)
            if irq == CASCADE_PIN:
                irq2 = pic_get_irq(slave)
                if irq2 >= 0:
                    pic_intack(slave, irq2)
                else:
                    irq2 = 7
                intno = slave.irq_base + irq2
            else:
                intno = master.irq_base + irq
        else:
            intno = master.irq_base + 7
        pic_update_irq(s)
    _pic_unlock_kick(s)
    return intno


# ------------------------------------------------------------------ the guest's ports
def kvm_pic_reset(s: KvmKpicState) -> None:
    """ICW1: start the initialization sequence.  Masks, rotation, special mask and the read
    register go back to their defaults; pending edges are dropped (and acknowledged, for the
    notifiers that wait for them); without ICW4 the ICW4 modes are cleared."""
    edge_irr = s.irr & ~s.elcr
    s.last_irr = 0
    s.irr &= s.elcr
    s.imr = 0
    s.priority_add = 0
    s.special_mask = 0
    s.read_reg_select = 0
    if not s.init4:
        s.special_fully_nested_mode = 0
        s.auto_eoi = 0
    s.init_state = 1
    if any(kvm_apic_accept_pic_intr(v) for v in s.pics_state.kvm.vcpus):
        for irq in range(8):
            if edge_irr & (1 << irq):
                pic_clear_isr(s, irq)


def _ocw2(s: KvmKpicState, val: int) -> None:
    """OCW2: the rotate-on-auto-EOI setting, non-specific / specific EOI with or without
    rotation, and set-priority."""
    cmd = val >> 5
    if cmd in (0, 4):
        s.rotate_on_auto_eoi = cmd >> 2
        return
    if cmd in (1, 5):                           # non-specific EOI: the best pin in service
        priority = get_priority(s, s.isr)
        if priority == 8:
            return
        irq = (priority + s.priority_add) & 7
        if cmd == 5:
            s.priority_add = (irq + 1) & 7
    elif cmd in (3, 7):                         # specific EOI
        irq = val & 7
        if cmd == 7:
            s.priority_add = (irq + 1) & 7
    elif cmd == 6:                              # set priority: pin val&7 becomes the lowest
        s.priority_add = (val + 1) & 7
        pic_update_irq(s.pics_state)
        return
    else:
        return                                  # 2: no operation
    pic_clear_isr(s, irq)
    pic_update_irq(s.pics_state)


def pic_ioport_write(s: KvmKpicState, addr: int, val: int) -> None:
    if addr & 1 == 0:
        if val & 0x10:                          # ICW1
            s.init4 = val & 1
            kvm_pic_reset(s)
        elif val & 0x08:                        # OCW3
            if val & 0x04:
                s.poll = 1
            if val & 0x02:
                s.read_reg_select = val & 1
            if val & 0x40:
                s.special_mask = (val >> 5) & 1
        else:
            _ocw2(s, val)
        return
    if s.init_state == 0:                       # OCW1: the mask register
        s.imr = val
        pic_update_irq(s.pics_state)
    elif s.init_state == 1:                     # ICW2: the vector base
        s.irq_base = val & 0xF8
        s.init_state = 2
    elif s.init_state == 2:                     # ICW3: the cascade wiring (fixed here)
        s.init_state = 3 if s.init4 else 0
    else:                                       # ICW4
        s.special_fully_nested_mode = (val >> 4) & 1
        s.auto_eoi = (val >> 1) & 1
        s.init_state = 0


def pic_poll_read(s: KvmKpicState, addr: int) -> int:
    """Poll mode: the read is the acknowledge; bit 7 says a request was there, bits 0-2 which
    pin.  The service ends at once (the guest handles it by polling, not by a vector)."""
    ret = pic_get_irq(s)
    if ret < 0:
        pic_update_irq(s.pics_state)
        return 0x07
    if not s.is_master:
        master = s.pics_state.pics[0]
        master.isr &= ~(1 << CASCADE_PIN)
        master.irr &= ~(1 << CASCADE_PIN)
    s.irr &= ~(1 << ret)
    pic_clear_isr(s, ret)
    if not s.is_master or ret != CASCADE_PIN:
        pic_update_irq(s.pics_state)
    return ret | 0x80


def pic_ioport_read(s: KvmKpicState, addr: int) -> int:
    if s.poll:
        s.poll = 0
        return pic_poll_read(s, addr)
    if addr & 1:
        return s.imr
    return s.isr if s.read_reg_select else s.irr


class PicDevice(KvmIoDevice):
    """One of the three port pairs on the PIO bus (dev_master, dev_slave, dev_elcr).  Only
    byte accesses reach the chips; wider reads read 0 and wider writes are dropped, as KVM
    does (it logs them as unimplemented)."""

    def __init__(self, pic: KvmPic, base: int):
        self.pic = pic
        self.base = base

    def write(self, vcpu, addr, length, data):
        if length != 1:
            return True
        s = self.pic
        with s.lock:
            if self.base == 0x4D0:
                chip = s.pics[addr & 1]
                chip.elcr = data[0] & chip.elcr_mask
            else:
                pic_ioport_write(s.pics[self.base == 0xA0], addr, data[0])
        _pic_unlock_kick(s)
        return True

    def read(self, vcpu, addr, length, data):
        if length != 1:
            data[:] = bytes(length)
            return True
        s = self.pic
        with s.lock:
            if self.base == 0x4D0:
                data[0] = s.pics[addr & 1].elcr
            else:
                data[0] = pic_ioport_read(s.pics[self.base == 0xA0], addr)
        _pic_unlock_kick(s)
        return True


# ------------------------------------------------------------------ create / state
def kvm_pic_init(kvm) -> KvmPic:
    """Make the pair and put its three port pairs on the PIO bus."""
    s = KvmPic(kvm)
    registered = []
    try:
        for dev in s.devs:
            kvm_io_bus_register_dev(kvm, KVM_PIO_BUS, dev.base, 2, dev)
            registered.append(dev)
    except OSError:
        for dev in registered:
            kvm_io_bus_unregister_dev(kvm, KVM_PIO_BUS, dev)
        raise
    return s


def kvm_pic_get_state(s: KvmPic, chip: int) -> uapi.kvm_pic_state:
    with s.lock:
        kpic = s.pics[chip]
        return uapi.kvm_pic_state(*(getattr(kpic, n) for n in _STATE_FIELDS))


def kvm_pic_set_state(s: KvmPic, chip: int, state: uapi.kvm_pic_state) -> None:
    """KVM_SET_IRQCHIP: every field as given (elcr_mask included), then the outputs again."""
    with s.lock:
        kpic = s.pics[chip]
        for n in _STATE_FIELDS:
            setattr(kpic, n, getattr(state, n))
        pic_update_irq(s)
    _pic_unlock_kick(s)
