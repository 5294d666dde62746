"""CMOS NVRAM and MC146818 real-time clock at ports 0x70 (index) and 0x71 (data).

The clock registers are computed from ``clock()`` on every read, so the guest sees the
current time by default, or a fixed time when the VMM wants reproducible runs
(``Cmos(clock=lambda: fixed_datetime)``). Register B selects BCD or binary and 12- or
24-hour format, as on the real chip; the other 114 bytes are plain NVRAM.
"""

import datetime

CMOS_PORT = 0x70
INDEX, DATA = 0, 1

SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR = 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09
STATUS_A, STATUS_B, STATUS_C, STATUS_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32

B_24H = 0x02
B_BINARY = 0x04
D_VALID = 0x80  # "battery good"
HOUR_PM = 0x80


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


class Cmos:
    """128 bytes of CMOS with a live clock in registers 0x00-0x09 and 0x32."""

    def __init__(self, clock=_utcnow):
        self.clock = clock
        self.index = 0
        self.nmi_disabled = False
        self.nvram = bytearray(128)
        self.nvram[STATUS_A] = 0x26  # 32.768 kHz time base, 1024 Hz rate; UIP clear
        self.nvram[STATUS_B] = B_24H
        self.nvram[STATUS_D] = D_VALID

    def read(self, offset, size):
        if offset == INDEX:
            return 0xFF  # the index register is write-only
        return self._register(self.index)

    def write(self, offset, size, value):
        value &= 0xFF
        if offset == INDEX:
            self.nmi_disabled = bool(value & 0x80)
            self.index = value & 0x7F
        elif self.index not in (STATUS_C, STATUS_D):
            self.nvram[self.index] = value

    def _register(self, index):
        now = self.clock()
        fields = {
            SECONDS: now.second, MINUTES: now.minute, WEEKDAY: now.isoweekday() % 7 + 1,
            DAY: now.day, MONTH: now.month, YEAR: now.year % 100, CENTURY: now.year // 100,
        }
        if index == HOURS:
            return self._hour(now.hour)
        if index in fields:
            return self._encode(fields[index])
        if index == STATUS_C:
            return 0  # no interrupt flags: the RTC raises no interrupts here
        return self.nvram[index]

    def _hour(self, hour):
        if self.nvram[STATUS_B] & B_24H:
            return self._encode(hour)
        pm = HOUR_PM if hour >= 12 else 0
        return self._encode(hour % 12 or 12) | pm

    def _encode(self, value):
        if self.nvram[STATUS_B] & B_BINARY:
            return value
        return ((value // 10) << 4) | (value % 10)
