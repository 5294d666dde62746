"""8250/16550A UART, the PC's COM ports (COM1 at 0x3f8, ISA IRQ 4).

What Linux's 8250 driver needs of it, and so what it models:

* the probe (``autoconfig``) must find a 16550A: IER keeps only its low four bits, MCR's
  loopback wires DTR/RTS/OUT1/OUT2 to DSR/CTS/RI/DCD, and with the FIFOs enabled (FCR bit
  0) IIR's top bits read 0xC0 (and bit 5, the 16750's 64-byte FIFO, never);
* transmission is instantaneous: a byte written to THR goes straight to the ``sink``
  callable, so LSR always shows THRE|TEMT and guests that poll it never wait;
* the THR-empty interrupt behaves as the datasheet says, which the driver's start-up test
  (UART_BUG_THRE) checks: setting IER.THRI while THR is empty raises it, and so does it
  again after IER was cleared and set once more; reading IIR while it is the source, or
  writing THR, clears it; the byte leaving at once raises it again, as a real UART does
  one character time later -- the line drops and rises, so an edge-triggered PIC input
  sees each one;
* received bytes (:meth:`Serial.enqueue_input`) raise the data interrupt while any are
  waiting: IIR 0x04 once the FCR trigger level is reached, else 0x0C (the character
  timeout, which on a real UART follows four character times of silence);
* the interrupt output reaches the board only while MCR.OUT2 is set and loopback is off,
  as on a PC, where OUT2 enables the IRQ driver (Linux sets OUT2 when the port has an
  IRQ; the reset value here is OUT2, as firmware and QEMU leave it).

The interrupt line is a callable ``irq(level: bool)`` called whenever the output changes,
which the machine wires to ISA IRQ 4 of the in-kernel irqchip.  ``on_input_enabled()`` is
called when the guest first enables the receive interrupt: for Linux, the moment user space
opens the console (``kvmpy run --stats`` reports it as a boot milestone).  The device takes no lock:
the machine calls it under its device lock, from a vCPU thread or the console's reader.
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
IIR_RX_TIMEOUT = 0x0C
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RCVR = 0x02
FCR_TRIGGER_SHIFT = 6
#: receive FIFO trigger levels, by FCR bits 7:6
RX_TRIGGER = (1, 4, 8, 14)
FIFO_SIZE = 16

LCR_DLAB = 0x80
MCR_OUT2 = 0x08
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
    """One 16550A UART occupying 8 ports."""

    def __init__(self, sink=stdout_sink, irq=None, on_input_enabled=None):
        self.sink = sink
        self.irq = irq
        self.on_input_enabled = on_input_enabled
        #: bytes received and not yet read; the first FIFO_SIZE are the receive FIFO, the
        #: rest the host side's backlog (a terminal paste), which a FIFO reset keeps
        self.input = collections.deque()
        self.ier = 0
        self.lcr = 0x03  # 8N1, as firmware leaves it
        self.mcr = MCR_OUT2
        self.scr = 0
        self.fcr = 0
        self.divisor = 12  # 9600 baud
        self.thre_pending = False
        self._irq_level = False

    # -- input -------------------------------------------------------------

    def enqueue_input(self, data):
        """Queue bytes as if they had arrived on the line (ignored in loopback mode, where
        the receiver hears only the transmitter)."""
        if not self.mcr & MCR_LOOP:
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
            return iir | (IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE_FIFO else 0)
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
            self.thre_pending = False       # THR full: its interrupt is over...
            self._update_irq()
            if self.mcr & MCR_LOOP:
                if len(self.input) < self._fifo_depth():    # a full FIFO overruns
                    self.input.append(value)
            else:
                self.sink(bytes([value]))
            self.thre_pending = True        # ...and the byte left at once: empty again
            self._update_irq()
        elif offset == IER:
            if dlab:
                self.divisor = (self.divisor & 0xFF) | (value << 8)
                return
            enabling_thri = value & IER_THRI and not self.ier & IER_THRI
            if value & IER_RDI and self.on_input_enabled:
                self.on_input_enabled()
                self.on_input_enabled = None
            self.ier = value & IER_MASK
            if enabling_thri:
                # THR is already empty: enabling its interrupt raises it at once.
                self.thre_pending = True
            self._update_irq()
        elif offset == FCR:
            self.fcr = value
            if value & FCR_CLEAR_RCVR:
                for _ in range(min(len(self.input), self._fifo_depth())):
                    self.input.popleft()
                self._update_irq()
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & MCR_MASK
            self._update_irq()
        elif offset == SCR:
            self.scr = value
        # LSR and MSR are read-only.

    # -- internals ---------------------------------------------------------

    def _fifo_depth(self):
        return FIFO_SIZE if self.fcr & FCR_ENABLE_FIFO else 1

    def _interrupt_id(self):
        if self.ier & IER_RDI and self.input:
            if not self.fcr & FCR_ENABLE_FIFO:
                return IIR_RDI
            trigger = RX_TRIGGER[self.fcr >> FCR_TRIGGER_SHIFT]
            return IIR_RDI if len(self.input) >= trigger else IIR_RX_TIMEOUT
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
        level = (self._interrupt_id() != IIR_NO_INT
                 and self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2)
        if level != self._irq_level:
            self._irq_level = level
            if self.irq:
                self.irq(level)
