"""8250/16550 UART, the PC's COM ports (COM1 at 0x3f8, IRQ 4).

Transmission is instantaneous: a byte written to THR goes straight to the ``sink``
callable, so the line status always shows THRE|TEMT and guests that poll LSR before each
byte never wait. Received bytes come from :meth:`Serial.enqueue_input`. The interrupt line
is a callable ``irq(level: bool)`` called whenever the UART's interrupt output changes,
to be wired to a PIC/IOAPIC input when the VMM has one.
"""

import collections
import sys

COM1_PORT = 0x3F8
COM1_IRQ = 4

# Register offsets.
DATA, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
FCR = IIR  # write side of offset 2

IER_RDI = 0x01   # received data available interrupt
IER_THRI = 0x02  # transmitter holding register empty interrupt
IER_MASK = 0x0F

IIR_NO_INT = 0x01
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_FIFO_ENABLED = 0xC0

LCR_DLAB = 0x80
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80


def stdout_sink(data):
    """Default sink: the byte goes to the terminal at once (no buffering)."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


class Serial:
    """One 16550 UART occupying 8 ports."""

    def __init__(self, sink=stdout_sink, irq=None):
        self.sink = sink
        self.irq = irq
        self.input = collections.deque()
        self.ier = 0
        self.lcr = 0x03  # 8N1, as firmware leaves it
        self.mcr = 0x08  # OUT2, so the IRQ is routed
        self.scr = 0
        self.fcr = 0
        self.divisor = 12  # 9600 baud
        self.thre_pending = False
        self._irq_level = False

    # -- input -------------------------------------------------------------

    def enqueue_input(self, data):
        """Queue bytes as if they had arrived on the line."""
        self.input.extend(data)
        self._update_irq()

    # -- registers ---------------------------------------------------------

    def read(self, offset, size):
        dlab = self.lcr & LCR_DLAB
        if offset == DATA:
            if dlab:
                return self.divisor & 0xFF
            value = self.input.popleft() if self.input else 0
            self._update_irq()
            return value
        if offset == IER:
            return (self.divisor >> 8) if dlab else self.ier
        if offset == IIR:
            iir = self._interrupt_id()
            if iir == IIR_THRI:
                # Reading IIR acknowledges the THR-empty interrupt.
                self.thre_pending = False
                self._update_irq()
            return iir | (IIR_FIFO_ENABLED if self.fcr & 1 else 0)
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self.input else 0)
        if offset == MSR:
            return self._modem_status()
        if offset == SCR:
            return self.scr
        return 0xFF

    def write(self, offset, size, value):
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == DATA:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
                return
            if self.mcr & MCR_LOOP:
                self.input.append(value)
            else:
                self.sink(bytes([value]))
            # The byte left at once: THR is empty again.
            self.thre_pending = True
            self._update_irq()
        elif offset == IER:
            if dlab:
                self.divisor = (self.divisor & 0xFF) | (value << 8)
                return
            enabling_thri = value & IER_THRI and not self.ier & IER_THRI
            self.ier = value & IER_MASK
            if enabling_thri:
                # THR is already empty: enabling its interrupt raises it at once.
                self.thre_pending = True
            self._update_irq()
        elif offset == FCR:
            self.fcr = value
            if value & 0x02:
                self.input.clear()
                self._update_irq()
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & MCR_MASK
        elif offset == SCR:
            self.scr = value
        # LSR and MSR are read-only.

    # -- internals ---------------------------------------------------------

    def _interrupt_id(self):
        if self.ier & IER_RDI and self.input:
            return IIR_RDI
        if self.ier & IER_THRI and self.thre_pending:
            return IIR_THRI
        return IIR_NO_INT

    def _modem_status(self):
        if self.mcr & MCR_LOOP:
            # Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
            m = self.mcr
            return ((m & 0x01) and MSR_DSR) | ((m & 0x02) and MSR_CTS) | (
                (m & 0x04) and MSR_RI) | ((m & 0x08) and MSR_DCD)
        return MSR_DCD | MSR_DSR | MSR_CTS

    def _update_irq(self):
        level = self._interrupt_id() != IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            if self.irq:
                self.irq(level)
