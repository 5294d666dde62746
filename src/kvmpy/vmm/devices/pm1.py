"""The ACPI PM1a event and control registers (ACPI 4.8.3.1-2), at the ports the FADT names:
PM1_STS and PM1_EN at PM1a_EVT_BLK (PIIX4's 0xb000, 0xb002), PM1_CNT at PM1a_CNT_BLK (0xb004).

- PM1_STS: TMR_STS is set each time the PM timer's bit 23 changes (computed from the
  timer's reading, not counted); status bits clear when the guest writes 1 to them.
- PM1_EN: the enable bits, kept. The machine routes no SCI (it has no interrupt controller
  wired to IRQ 9 yet), so an enabled event raises nothing.
- PM1_CNT: SCI_EN always reads 1: the FADT has no SMI command port, so the platform is in
  ACPI mode from the start. Writing SLP_EN with SLP_TYP 0, the DSDT's ``\\_S5``, powers the
  machine off: ``on_poweroff()``. Other sleep types are not in the DSDT; they are ignored.
"""

import struct

PM1_STS, PM1_EN, PM1_CNT = 0, 2, 4          # offsets the device sees (map with register())
PM1_EVT_PORTS, PM1_CNT_PORTS = 4, 2

TMR_STS = 1 << 0
PWRBTN_STS = 1 << 8
WAK_STS = 1 << 15
STS_BITS = TMR_STS | 1 << 4 | 1 << 5 | PWRBTN_STS | 1 << 9 | 1 << 10 | WAK_STS
EN_BITS = 1 << 0 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 10

SCI_EN = 1 << 0
CNT_KEPT = 1 << 1 | 1 << 2                  # BM_RLD, GBL_RLS
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 0x7
SLP_EN = 1 << 13
SLP_TYP_S5 = 0
TIMER_MSB = 23                              # TMR_STS: bit 23 of the 24-bit counter changed


class Pm1:
    """PM1_STS/PM1_EN (the event block) and PM1_CNT (the control block) of one machine."""

    def __init__(self, timer, on_poweroff=None):
        self.timer = timer
        self.on_poweroff = on_poweroff
        self.status = 0
        self.enable = 0
        self.control = SCI_EN
        self._timer_half = self._half()     # the bit-23 periods counted until the last clear

    def _half(self):
        return self.timer.ticks() >> TIMER_MSB

    def _status(self):
        if self._half() != self._timer_half:
            self.status |= TMR_STS
        return self.status

    def read(self, offset, size):
        regs = struct.pack("<HHH", self._status(), self.enable, self.control)
        return int.from_bytes(regs[offset:offset + size].ljust(size, b"\xff"), "little")

    def write(self, offset, size, value):
        """Each register gets the bytes of the access that fall in it, with their mask."""
        for reg in (PM1_STS, PM1_EN, PM1_CNT):
            mask = part = 0
            for i in range(size):
                byte = offset + i - reg
                if 0 <= byte < 2:
                    mask |= 0xFF << (8 * byte)
                    part |= ((value >> (8 * i)) & 0xFF) << (8 * byte)
            if mask:
                self._write_register(reg, part, mask)

    def _write_register(self, reg, value, mask):
        if reg == PM1_STS:
            cleared = value & mask & STS_BITS
            if cleared & TMR_STS:
                self._timer_half = self._half()
            self.status = self._status() & ~cleared
        elif reg == PM1_EN:
            self.enable = (self.enable & ~mask) | (value & mask & EN_BITS)
        elif reg == PM1_CNT:
            self.control = SCI_EN | (self.control & ~mask & CNT_KEPT) | (value & mask & CNT_KEPT)
            if value & mask & SLP_EN and (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLP_TYP_S5:
                if self.on_poweroff:
                    self.on_poweroff()


def register(pio, device, event_port, control_port):
    """Map the event block at ``event_port`` and the control block at ``control_port``."""
    pio.register(event_port, PM1_EVT_PORTS, device, offset=PM1_STS)
    pio.register(control_port, PM1_CNT_PORTS, device, offset=PM1_CNT)
