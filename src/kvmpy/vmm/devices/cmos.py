"""CMOS NVRAM and the MC146818 real-time clock at ports 0x70 (index) and 0x71 (data).

The clock is a count of seconds (:class:`RtcClock`): a base the VMM chose (the host's
date, UTC or local, or a fixed one: QEMU's ``-rtc base=``) advanced by a running clock
(the host's wall clock, or the VM's, KVM_GET_CLOCK: QEMU's ``clock=host|vm``), so the time
registers always show the present second.  What Linux relies on (mc146818_get_time, at boot
and in rtc_cmos) and so what is modelled:

* register B's DM bit selects BCD or binary and its 24/12 bit the hour format (bit 7 of the
  hour is PM in 12-hour mode), for reads and for writes;
* register A's UIP bit is set for the last 244 us before each update, the window in which
  the chip would be copying its counters, so a reader that waits for UIP to clear gets
  consistent registers; the time base and rate bits are the guest's;
* setting B's SET bit freezes the registers (and clears UIE) for the guest to write a new
  time, which takes effect when SET is cleared; without SET a write to a time register
  sets the clock at once;
* register C holds the interrupt flags -- PF (periodic, at A's rate), AF (alarm: registers
  1, 3 and 5 match, 0xC0 and above matching any value), UF (update ended, once a second) --
  and IRQF when an enabled one is set; reading C clears them.  They are worked out from the
  clock when C is read, or when the device timer (``timer``, armed for the next event while
  B enables one) fires, and IRQF drives ``irq(level)``, the machine's ISA IRQ 8;
* register D reads "valid RAM and time"; the other 114 bytes are plain NVRAM.

The weekday register follows the date (a guest's write to it is taken as part of a date,
not kept apart as the chip would).
"""

from __future__ import annotations

import datetime
import math
import time

CMOS_PORT = 0x70
INDEX, DATA = 0, 1
RTC_IRQ = 8

SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = range(6)
WEEKDAY, DAY, MONTH, YEAR = 0x06, 0x07, 0x08, 0x09
STATUS_A, STATUS_B, STATUS_C, STATUS_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
TIME_REGISTERS = (SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY)

A_UIP = 0x80
A_RATE = 0x0F
B_SET, B_PIE, B_AIE, B_UIE = 0x80, 0x40, 0x20, 0x10
B_BINARY = 0x04
B_24H = 0x02
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
D_VALID = 0x80  # "battery good"
HOUR_PM = 0x80
ALARM_ANY = 0xC0
#: the part of each second during which UIP reads 1 (tBUC, 244 us before the update)
UIP_S = 244e-6
TIME_BASE_HZ = 32768
#: a guest clock that jumped further than this is not searched second by second for an alarm
ALARM_SEARCH_S = 86400
EPOCH = datetime.datetime(1970, 1, 1)


def epoch_seconds(date):
    """A naive datetime (the RTC's own time, whatever zone it is kept in) as seconds."""
    return (date - EPOCH).total_seconds()


class RtcClock:
    """Seconds of the RTC: ``base`` when made, advanced by ``clock_ns()``."""

    def __init__(self, clock_ns=time.time_ns, base=None):
        self.clock_ns = clock_ns
        self.set(time.time() if base is None else base)

    def now(self):
        return self.base + (self.clock_ns() - self.origin) / 1e9

    def set(self, seconds):
        self.base = seconds
        self.origin = self.clock_ns()


def host_base(localtime=False):
    """The host's date now, in UTC or (``-rtc base=localtime``) local time, as RTC seconds."""
    now = time.time()
    return now + (time.localtime(now).tm_gmtoff if localtime else 0)


def _fields(seconds):
    date = EPOCH + datetime.timedelta(seconds=math.floor(seconds))
    return {SECONDS: date.second, MINUTES: date.minute, HOURS: date.hour,
            WEEKDAY: date.isoweekday() % 7 + 1, DAY: date.day, MONTH: date.month,
            YEAR: date.year % 100, CENTURY: date.year // 100}


def _seconds(fields):
    """Fields (as :func:`_fields` makes them) back to RTC seconds; a date the guest wrote
    that does not exist is clamped into its month, as far as the chip is concerned."""
    year = fields[CENTURY] * 100 + fields[YEAR]
    month = min(max(fields[MONTH], 1), 12)
    day = min(max(fields[DAY], 1), 28)
    date = datetime.datetime(max(year, 1), month, day, min(fields[HOURS], 23),
                             min(fields[MINUTES], 59), min(fields[SECONDS], 59))
    date += datetime.timedelta(days=max(fields[DAY], 1) - day)
    return epoch_seconds(date)


class Cmos:
    """128 bytes of CMOS with the RTC in registers 0x00-0x0D and 0x32."""

    def __init__(self, clock=None, irq=None, timer=None):
        self.clock = clock or RtcClock()
        self.irq = irq
        self.timer = timer
        self.index = 0
        self.nmi_disabled = False
        self.nvram = bytearray(128)
        self.nvram[STATUS_A] = 0x26  # 32.768 kHz time base, 1024 Hz rate
        self.nvram[STATUS_B] = B_24H
        self.nvram[STATUS_D] = D_VALID
        self.flags = 0
        self.latched = None         # the time fields while SET freezes them
        self._checked = self.clock.now()
        self._irq_level = False

    # -- the ports ---------------------------------------------------------

    def read(self, offset, size):
        if offset == INDEX:
            return 0xFF  # the index register is write-only
        return self._register(self.index)

    def write(self, offset, size, value):
        value &= 0xFF
        if offset == INDEX:
            self.nmi_disabled = bool(value & 0x80)
            self.index = value & 0x7F
        elif self.index in TIME_REGISTERS:
            self._set_field(self.index, value)
        elif self.index == STATUS_A:
            self.nvram[STATUS_A] = value & ~A_UIP
            self._arm()
        elif self.index == STATUS_B:
            self._write_b(value)
        elif self.index not in (STATUS_C, STATUS_D):
            self.nvram[self.index] = value

    # -- the clock ---------------------------------------------------------

    def _now_fields(self):
        return self.latched if self.latched is not None else _fields(self.clock.now())

    def _register(self, index):
        if index in TIME_REGISTERS:
            value = self._now_fields()[index]
            return self._hour_out(value) if index == HOURS else self._encode(value)
        if index == STATUS_A:
            return self.nvram[STATUS_A] | (A_UIP if self._update_in_progress() else 0)
        if index == STATUS_C:
            self._check_flags()
            value = self.flags | (C_IRQF if self._irqf() else 0)
            self.flags = 0
            self._update_irq()
            self._arm()
            return value
        return self.nvram[index]

    def _update_in_progress(self):
        if self.latched is not None:
            return False            # SET: no updates
        now = self.clock.now()
        return now - math.floor(now) >= 1 - UIP_S

    def _set_field(self, index, value):
        fields = dict(self._now_fields())
        fields[index] = self._hour_in(value) if index == HOURS else self._decode(value)
        if self.latched is not None:
            self.latched = fields
        else:
            self.clock.set(_seconds(fields))
            self._checked = self.clock.now()

    def _write_b(self, value):
        if value & B_SET:
            value &= ~B_UIE
            if self.latched is None:
                self._check_flags()
                self.latched = _fields(self.clock.now())
        elif self.latched is not None:
            self.clock.set(_seconds(self.latched))
            self.latched = None
            self._checked = self.clock.now()
        self.nvram[STATUS_B] = value
        self._check_flags()
        self._update_irq()
        self._arm()

    def _hour_out(self, hour):
        if self.nvram[STATUS_B] & B_24H:
            return self._encode(hour)
        pm = HOUR_PM if hour >= 12 else 0
        return self._encode(hour % 12 or 12) | pm

    def _hour_in(self, value):
        if self.nvram[STATUS_B] & B_24H:
            return self._decode(value)
        hour = self._decode(value & ~HOUR_PM) % 12
        return hour + 12 if value & HOUR_PM else hour

    def _encode(self, value):
        if self.nvram[STATUS_B] & B_BINARY:
            return value
        return ((value // 10) << 4) | (value % 10)

    def _decode(self, value):
        if self.nvram[STATUS_B] & B_BINARY:
            return value
        return (value >> 4) * 10 + (value & 0x0F)

    # -- interrupts --------------------------------------------------------

    def _period(self):
        """The periodic interrupt's period in seconds (None: rate 0, off)."""
        rate = self.nvram[STATUS_A] & A_RATE
        if not rate:
            return None
        if rate < 3:
            rate += 7           # rates 1 and 2 repeat 8 and 9 with a 32.768 kHz base
        return (1 << (rate - 1)) / TIME_BASE_HZ

    def _check_flags(self):
        """The flags of what happened between the last look and now."""
        if self.latched is not None:
            return              # SET: the clock is not updating
        now = self.clock.now()
        last, self._checked = self._checked, now
        period = self._period()
        if period and math.floor(now / period) > math.floor(last / period):
            self.flags |= C_PF
        first, end = math.floor(last) + 1, math.floor(now)
        if end >= first:
            self.flags |= C_UF
            if any(self._alarm_matches(s) for s in range(max(first, end - ALARM_SEARCH_S),
                                                            end + 1)):
                self.flags |= C_AF

    def _alarm_matches(self, seconds):
        fields = _fields(seconds)
        for alarm, index in ((SECONDS_ALARM, SECONDS), (MINUTES_ALARM, MINUTES),
                             (HOURS_ALARM, HOURS)):
            want = self.nvram[alarm]
            if want >= ALARM_ANY:
                continue
            have = self._hour_out(fields[index]) if index == HOURS else self._encode(fields[index])
            if want != have:
                return False
        return True

    def _enabled(self):
        return self.nvram[STATUS_B] & (B_PIE | B_AIE | B_UIE)

    def _irqf(self):
        """IRQF: a flag set whose interrupt B enables (PIE, AIE, UIE sit over PF, AF, UF)."""
        return bool(self.flags & self._enabled())

    def _update_irq(self):
        level = self._irqf()
        if level != self._irq_level:
            self._irq_level = level
            if self.irq:
                self.irq(level)

    def _arm(self):
        """The device timer for the next event an enabled interrupt waits for."""
        if self.timer is None:
            return
        enabled = self._enabled()
        if not enabled or self._irq_level or self.latched is not None:
            self.timer.disarm()
            return
        now = self.clock.now()
        due = math.floor(now) + 1 - now
        period = self._period()
        if enabled & B_PIE and period:
            due = min(due, (math.floor(now / period) + 1) * period - now)
        self.timer.arm(due)

    def tick(self):
        """The device timer fired: raise IRQ 8 for what came due, arm for the next."""
        self._check_flags()
        self._update_irq()
        self._arm()
