"""The in-kernel IOAPIC's state and input pins (arch/x86/kvm/ioapic.c).

KVM_CREATE_IRQCHIP makes one IOAPIC beside the 8259 pair, every GSI 0-23 routed to its pin
of the same number.  Its redirection table starts masked (the reset state), and KVM_GET/
SET_IRQCHIP save and restore it with the IRR.  A masked pin still latches its line in the
IRR, so KVM_IRQ_LINE_STATUS reports -1 for it, as on the host.  Unmasked delivery goes to a
LAPIC, which kvmpy does not emulate yet: it reports -1, not delivered.
"""

from __future__ import annotations

import threading

from ...uapi import kvm as uapi

IOAPIC_DEFAULT_BASE_ADDRESS = 0xFEC00000
IOAPIC_NUM_PINS = uapi.KVM_IOAPIC_NUM_PINS
_MASK = 1 << 16          # redirection entry bits
_TRIG_MODE = 1 << 15


class KvmIoapic:
    """struct kvm_ioapic: the registers of kvm_ioapic_state, per-source pin levels."""

    def __init__(self, kvm):
        self.kvm = kvm
        self.lock = threading.RLock()
        self.irq_states = [0] * IOAPIC_NUM_PINS
        kvm_ioapic_reset(self)


def kvm_ioapic_reset(ioapic: KvmIoapic) -> None:
    ioapic.base_address = IOAPIC_DEFAULT_BASE_ADDRESS
    ioapic.ioregsel = 0
    ioapic.id = 0
    ioapic.irr = 0
    ioapic.irr_delivered = 0
    ioapic.redirtbl = [_MASK] * IOAPIC_NUM_PINS


def ioapic_service(ioapic: KvmIoapic, irq: int, line_status: bool) -> int:
    """Send pin ``irq``'s message.  A masked pin, or a level one still waiting for its EOI,
    sends nothing (-1); an unmasked one needs the in-kernel LAPIC, not emulated yet, so its
    message finds no destination either (-1)."""
    return -1


def ioapic_set_irq(ioapic: KvmIoapic, irq: int, irq_level: int, line_status: bool) -> int:
    mask = 1 << irq
    edge = not ioapic.redirtbl[irq] & _TRIG_MODE
    if not irq_level:
        ioapic.irr &= ~mask
        return 1
    old_irr = ioapic.irr
    ioapic.irr |= mask
    if edge:
        ioapic.irr_delivered &= ~mask
        if old_irr == ioapic.irr:
            return 0                    # an edge while the last one is still latched
    return ioapic_service(ioapic, irq, line_status)


def kvm_ioapic_set_irq(ioapic: KvmIoapic, irq: int, irq_source_id: int, level: int, line_status: bool) -> int:
    with ioapic.lock:
        if level:
            ioapic.irq_states[irq] |= 1 << irq_source_id
        else:
            ioapic.irq_states[irq] &= ~(1 << irq_source_id)
        return ioapic_set_irq(ioapic, irq, int(bool(ioapic.irq_states[irq])), line_status)


def kvm_ioapic_clear_all(ioapic: KvmIoapic, irq_source_id: int) -> None:
    with ioapic.lock:
        for irq in range(IOAPIC_NUM_PINS):
            ioapic.irq_states[irq] &= ~(1 << irq_source_id)


def kvm_ioapic_update_eoi(vcpu, vector: int, trigger_mode: int) -> None:
    """The LAPIC of ``vcpu`` took an EOI for ``vector`` (EOI broadcast): each level pin
    with that vector clears its remote IRR and is sent again if its line is still high.
    Interface for the LAPIC's EOI; with no delivery to LAPICs yet no remote IRR is set."""


def kvm_get_ioapic(ioapic: KvmIoapic) -> uapi.kvm_ioapic_state:
    with ioapic.lock:
        state = uapi.kvm_ioapic_state(base_address=ioapic.base_address, ioregsel=ioapic.ioregsel,
                                      id=ioapic.id, irr=ioapic.irr)
        for i, bits in enumerate(ioapic.redirtbl):
            state.redirtbl[i].bits = bits
        return state


def kvm_set_ioapic(ioapic: KvmIoapic, state: uapi.kvm_ioapic_state) -> None:
    """KVM_SET_IRQCHIP: the registers as given; the IRR's pins are sent again (a level one
    that was pending when the state was saved is still pending)."""
    with ioapic.lock:
        ioapic.base_address = state.base_address
        ioapic.ioregsel = state.ioregsel
        ioapic.id = state.id
        ioapic.irr = 0
        ioapic.irr_delivered = 0
        ioapic.redirtbl = [state.redirtbl[i].bits for i in range(IOAPIC_NUM_PINS)]
        for irq in range(IOAPIC_NUM_PINS):
            if state.irr & (1 << irq):
                ioapic_set_irq(ioapic, irq, 1, False)
