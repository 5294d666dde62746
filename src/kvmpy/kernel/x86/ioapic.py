"""The in-kernel IOAPIC (arch/x86/kvm/ioapic.c): 24 pins, their redirection table, and the
messages it sends to the LAPICs.

KVM_CREATE_IRQCHIP makes one IOAPIC beside the 8259 pair, every GSI 0-23 routed to its pin
of the same number, its registers in a 256-byte MMIO window at 0xfec00000 (IOREGSEL at
offset 0, IOWIN at 0x10; a guest programs it without exits to user space).  The table starts
masked (the reset state).

A raised pin whose entry is unmasked becomes a message to the LAPICs its entry names
(``ioapic_service`` -> irq_comm.kvm_irq_delivery_to_apic).  An edge pin sends once per rising
edge.  A level pin sets its entry's remote IRR when it sends and sends nothing more until the
guest's EOI for its vector, which the LAPIC broadcasts here (``KvmIoapic.update_eoi``): the
EOI clears remote IRR and, if the line is still high, the pin sends again.  A masked pin
latches its line in the IRR (KVM_IRQ_LINE_STATUS reports -1) and sends when unmasked.  Every
EOI of a pin's vector also runs the irq ack notifiers of the GSI routed to it (the PIT's
reinjection, an irqfd's resampler), for edge pins too.

Which vectors' EOIs reach the IOAPIC at all is each vCPU's ``ioapic_handled_vectors``,
recomputed on KVM_REQ_SCAN_IOAPIC from the entries (``scan_entry``) after every change to
them.  Left out, as optional in KVM: the RTC pin's coalescing bookkeeping (GSI 8 reports
like any pin) and the delayed re-delivery after 10000 successive level EOIs that tames an
interrupt storm (a level line still high after its EOI is sent again at once).
"""

from __future__ import annotations

import threading

from ...uapi import kvm as uapi
from ..eventfd import kvm_notify_acked_irq, kvm_notify_irqfd_resampler
from ..iodev import KVM_MMIO_BUS, KvmIoDevice, kvm_io_bus_register_dev
from . import irq_comm, x86

IOAPIC_DEFAULT_BASE_ADDRESS = 0xFEC00000
IOAPIC_MEM_LENGTH = 0x100
IOAPIC_NUM_PINS = uapi.KVM_IOAPIC_NUM_PINS
IOAPIC_VERSION_ID = 0x11            # an 82093AA-style IOAPIC: no EOI register
IOAPIC_EDGE_TRIG, IOAPIC_LEVEL_TRIG = 0, 1

IOAPIC_REG_SELECT = 0x00            # offsets in the MMIO window
IOAPIC_REG_WINDOW = 0x10
IOAPIC_REG_APIC_ID = 0x00           # indirect registers (IOREGSEL)
IOAPIC_REG_VERSION = 0x01
IOAPIC_REG_ARB_ID = 0x02
IOAPIC_REDIR_TABLE = 0x10           # two registers per pin: low, high dword

# union kvm_ioapic_redirect_entry
_VECTOR = 0xFF
_DELIVERY_MODE_SHIFT = 8            # 3 bits, APIC_DM_* >> 8
_DEST_MODE = 1 << 11                # logical
_DELIVERY_STATUS = 1 << 12
_REMOTE_IRR = 1 << 14
_TRIG_MODE = 1 << 15                # level
_MASK = 1 << 16
_DEST_ID_SHIFT = 56
_READ_ONLY = _DELIVERY_STATUS | _REMOTE_IRR


def _entry_message(bits: int, level: int) -> irq_comm.KvmLapicIrq:
    """The message a redirection entry sends (KVM's kvm_lapic_irq from the entry's fields)."""
    return irq_comm.KvmLapicIrq(vector=bits & _VECTOR,
                                delivery_mode=(bits >> _DELIVERY_MODE_SHIFT & 7) << 8,
                                dest_mode=irq_comm.kvm_lapic_irq_dest_mode(bool(bits & _DEST_MODE)),
                                level=level, trig_mode=int(bool(bits & _TRIG_MODE)),
                                shorthand=irq_comm.APIC_DEST_NOSHORT, dest_id=bits >> _DEST_ID_SHIFT & 0xFF,
                                msi_redir_hint=False)


class KvmIoapic(KvmIoDevice):
    """struct kvm_ioapic: the registers of kvm_ioapic_state, per-source pin levels, and the
    device on the MMIO bus.  Its methods are the interface the routing entries
    (``set_irq``), the LAPICs (``update_eoi``) and the vCPUs' scan (``scan_entry``) use."""

    def __init__(self, kvm):
        self.kvm = kvm
        self.lock = threading.RLock()
        self.irq_states = [0] * IOAPIC_NUM_PINS
        kvm_ioapic_reset(self)

    # ---- the MMIO window (ioapic_mmio_read / ioapic_mmio_write)
    def in_range(self, addr: int) -> bool:
        """The window is where ``base_address`` says; KVM_SET_IRQCHIP may move the register
        away from the registered range, and then the device answers nowhere."""
        return self.base_address <= addr < self.base_address + IOAPIC_MEM_LENGTH

    def read(self, vcpu, addr, length, data):
        if not self.in_range(addr):
            return False
        with self.lock:
            offset = addr & 0xFF
            if offset == IOAPIC_REG_SELECT:
                result = self.ioregsel
            elif offset == IOAPIC_REG_WINDOW:
                result = ioapic_read_indirect(self)
            else:
                result = 0
        if length in (1, 2, 4, 8):
            data[:length] = result.to_bytes(8, "little")[:length]
        return True

    def write(self, vcpu, addr, length, data):
        if not self.in_range(addr):
            return False
        if length not in (1, 2, 4, 8):
            return True                         # an odd size does nothing, as in KVM
        value = int.from_bytes(data[:min(length, 4)], "little")
        offset = addr & 0xFF
        resample = None
        with self.lock:
            if offset == IOAPIC_REG_SELECT:
                self.ioregsel = value & 0xFF
            elif offset == IOAPIC_REG_WINDOW:
                resample = ioapic_write_indirect(self, value)
        if resample is not None:
            ioapic_unmask_level(self, resample)
        return True

    # ---- the interface
    def set_irq(self, irq: int, irq_source_id: int, level: int, line_status: bool) -> int:
        """Drive pin ``irq`` for ``irq_source_id`` (kvm_ioapic_set_irq); the pin's level is
        the OR of its sources'."""
        with self.lock:
            if level:
                self.irq_states[irq] |= 1 << irq_source_id
            else:
                self.irq_states[irq] &= ~(1 << irq_source_id)
            return ioapic_set_irq(self, irq, int(bool(self.irq_states[irq])), line_status)

    def update_eoi(self, vcpu, vector: int, trigger_mode: int) -> None:
        """The LAPIC of ``vcpu`` took an EOI for ``vector`` (kvm_ioapic_update_eoi): each pin
        with that vector runs its GSI's ack notifiers, outside the lock (a notifier may raise
        a line again: the PIT, a resampler); for a level EOI the pin then clears remote IRR
        and sends again if its line is still high and it is unmasked."""
        with self.lock:
            pins = [i for i, bits in enumerate(self.redirtbl) if bits & _VECTOR == vector]
        for pin in pins:
            kvm_notify_acked_irq(self.kvm, uapi.KVM_IRQCHIP_IOAPIC, pin)
            if trigger_mode != IOAPIC_LEVEL_TRIG:
                continue
            with self.lock:
                self.redirtbl[pin] &= ~_REMOTE_IRR
                if not self.redirtbl[pin] & _MASK and self.irr >> pin & 1:
                    ioapic_service(self, pin, False)

    def scan_entry(self, vcpu, handled_vectors: set) -> None:
        """kvm_ioapic_scan_entry: add the vectors of the pins that send to ``vcpu``, whose
        EOI the IOAPIC must see.  KVM takes only level pins and pins whose GSI has an ack
        notifier (it loads the set into the processor's EOI-exit bitmap, so fewer is
        faster); kvmpy takes every pin, so the set needs no rescan when notifiers come and
        go, and an EOI of an edge pin without a notifier just finds nothing to do."""
        with self.lock:
            entries = list(self.redirtbl)
        for bits in entries:
            irq_comm.kvm_scan_ioapic_irq(vcpu, _entry_message(bits, 1), handled_vectors)


def kvm_ioapic_init(kvm) -> KvmIoapic:
    ioapic = KvmIoapic(kvm)
    kvm_io_bus_register_dev(kvm, KVM_MMIO_BUS, ioapic.base_address, IOAPIC_MEM_LENGTH, ioapic)
    return ioapic


def kvm_ioapic_reset(ioapic: KvmIoapic) -> None:
    ioapic.base_address = IOAPIC_DEFAULT_BASE_ADDRESS
    ioapic.ioregsel = 0
    ioapic.id = 0
    ioapic.irr = 0
    ioapic.irr_delivered = 0
    ioapic.redirtbl = [_MASK] * IOAPIC_NUM_PINS


def ioapic_read_indirect(ioapic: KvmIoapic) -> int:
    sel = ioapic.ioregsel
    if sel == IOAPIC_REG_VERSION:
        return (IOAPIC_NUM_PINS - 1) << 16 | IOAPIC_VERSION_ID
    if sel in (IOAPIC_REG_APIC_ID, IOAPIC_REG_ARB_ID):
        return (ioapic.id & 0xF) << 24
    index = (sel - IOAPIC_REDIR_TABLE) >> 1
    bits = ioapic.redirtbl[index] if 0 <= index < IOAPIC_NUM_PINS else (1 << 64) - 1
    return (bits >> 32 if sel & 1 else bits) & 0xFFFFFFFF


def ioapic_write_indirect(ioapic: KvmIoapic, value: int):
    """A write to IOWIN; returns the pin whose level interrupt an unmask left pending, for
    ``ioapic_unmask_level`` to settle outside the lock."""
    sel = ioapic.ioregsel
    if sel == IOAPIC_REG_APIC_ID:
        ioapic.id = value >> 24 & 0xF
        return None
    if sel in (IOAPIC_REG_VERSION, IOAPIC_REG_ARB_ID):
        return None                             # read-only
    index = (sel - IOAPIC_REDIR_TABLE) >> 1
    if not 0 <= index < IOAPIC_NUM_PINS:
        return None
    old = ioapic.redirtbl[index]
    if sel & 1:
        bits = (old & 0xFFFFFFFF) | value << 32
    else:
        bits = (old & ~0xFFFFFFFF) | value
    bits = (bits & ~_READ_ONLY) | (old & _READ_ONLY)
    if not bits & _TRIG_MODE:
        # An edge entry drops its remote IRR: Linux and Xen switch a pin to edge and back to
        # clear it on IOAPICs without an EOI register.
        bits &= ~_REMOTE_IRR
    ioapic.redirtbl[index] = bits
    x86.kvm_make_scan_ioapic_request(ioapic.kvm)
    if bits & _TRIG_MODE and ioapic.irr >> index & 1 and not bits & (_MASK | _REMOTE_IRR):
        return index
    return None


def ioapic_unmask_level(ioapic: KvmIoapic, pin: int) -> None:
    """A level pin was unmasked with its IRR bit set, which may be stale (the device may
    have dropped the line while the pin was masked).  With an irqfd resampler on its GSI,
    KVM asks the device instead: the IRR bit goes and the resample fd is signalled (a device
    still asserting fires its irqfd again).  Without one the pin sends now."""
    if kvm_notify_irqfd_resampler(ioapic.kvm, uapi.KVM_IRQCHIP_IOAPIC, pin):
        with ioapic.lock:
            ioapic.irr &= ~(1 << pin)
        return
    with ioapic.lock:
        ioapic_service(ioapic, pin, False)


def ioapic_service(ioapic: KvmIoapic, irq: int, line_status: bool) -> int:
    """Send pin ``irq``'s message: -1 for a masked pin or a level one still waiting for its
    EOI, else the number of LAPICs that took it (-1 none).  A level pin sets remote IRR even
    when no LAPIC took the message, as in KVM (only the EOI clears it)."""
    bits = ioapic.redirtbl[irq]
    level = bool(bits & _TRIG_MODE)
    if bits & _MASK or (level and bits & _REMOTE_IRR):
        return -1
    if not level:
        ioapic.irr_delivered |= 1 << irq
    ret = irq_comm.kvm_irq_delivery_to_apic(ioapic.kvm, None, _entry_message(bits, 1))
    if ret and level:
        ioapic.redirtbl[irq] |= _REMOTE_IRR
    return ret


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


def kvm_get_ioapic(ioapic: KvmIoapic) -> uapi.kvm_ioapic_state:
    """KVM_GET_IRQCHIP: the registers; the IRR without the edges already sent."""
    with ioapic.lock:
        state = uapi.kvm_ioapic_state(base_address=ioapic.base_address, ioregsel=ioapic.ioregsel,
                                      id=ioapic.id, irr=ioapic.irr & ~ioapic.irr_delivered)
        for i, bits in enumerate(ioapic.redirtbl):
            state.redirtbl[i].bits = bits
        return state


def kvm_set_ioapic(ioapic: KvmIoapic, state: uapi.kvm_ioapic_state) -> None:
    """KVM_SET_IRQCHIP: the registers as given (remote IRR included); the IRR's pins are
    sent again (a level one that was pending when the state was saved is still pending)."""
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
    x86.kvm_make_scan_ioapic_request(ioapic.kvm)
