"""The VMM's devices and buses, driven the way a guest drives them (no KVM needed)."""

import datetime

import pytest

from kvmpy.vmm.devices import (Cmos, ConstantDevice, DebugExit, I8042, MmioBus, PioBus,
                               Serial)
from kvmpy.vmm.devices.bus import BusError
from kvmpy.vmm.devices.cmos import RtcClock, epoch_seconds

# -- buses -------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return 0x1122334455667788

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


def test_bus_routes_by_offset_and_masks_to_size():
    bus, dev = PioBus(), Recorder()
    bus.register(0x100, 8, dev)
    assert bus.read(0x103, 2) == 0x7788
    bus.write(0x107, 1, 0xAB)
    assert dev.log == [("r", 3, 2), ("w", 7, 1, 0xAB)]


def test_bus_unhandled_reads_all_ones_and_is_recorded():
    bus = MmioBus()
    bus.register(0x1000, 0x100, Recorder())
    assert bus.read(0x2000, 4) == 0xFFFFFFFF
    assert bus.read(0xFFF, 1) == 0xFF
    bus.write(0x1100, 2, 5)
    assert [(a.addr, a.size, a.is_write) for a in bus.unhandled] == [
        (0x2000, 4, False), (0xFFF, 1, False), (0x1100, 2, True)]
    assert bus.unhandled_count == 3


def test_bus_rejects_overlaps_and_bad_ranges():
    bus = PioBus()
    bus.register(0x10, 0x10, Recorder())
    bus.register(0x20, 0x10, Recorder())  # adjacent is fine
    for base, length in ((0x1F, 2), (0x0, 0x11), (0x18, 1), (0x2F, 1)):
        with pytest.raises(BusError):
            bus.register(base, length, Recorder())
    with pytest.raises(BusError):
        bus.register(0xFFFF, 2, Recorder())  # past the 64 KiB port space
    with pytest.raises(BusError):
        bus.register(0x100, 0, Recorder())


def test_bus_offset_lets_one_device_own_two_ranges():
    bus, dev = PioBus(), Recorder()
    bus.register(0x60, 1, dev)
    bus.register(0x64, 1, dev, offset=4)
    bus.read(0x64, 1)
    bus.read(0x60, 1)
    assert bus.read(0x62, 1) == 0xFF
    assert dev.log == [("r", 4, 1), ("r", 0, 1)]


# -- 8250 UART --------------------------------------------------------------------

THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)


def make_uart():
    out, irqs = bytearray(), []
    return Serial(sink=out.extend, irq=irqs.append), out, irqs


def test_serial_output_and_line_status():
    uart, out, _ = make_uart()
    for ch in b"hi\n":
        assert uart.read(LSR, 1) & 0x60 == 0x60  # THRE | TEMT: always ready
        uart.write(THR, 1, ch)
    assert bytes(out) == b"hi\n"
    assert uart.read(LSR, 1) & 0x01 == 0  # no data ready


def test_serial_divisor_latch_and_scratch():
    uart, out, _ = make_uart()
    uart.write(LCR, 1, 0x83)  # DLAB on
    uart.write(THR, 1, 0x01)
    uart.write(IER, 1, 0x00)
    assert (uart.read(THR, 1), uart.read(IER, 1)) == (0x01, 0x00)
    uart.write(LCR, 1, 0x03)  # DLAB off: THR is the data register again
    uart.write(THR, 1, ord("x"))
    assert bytes(out) == b"x" and uart.divisor == 1
    uart.write(SCR, 1, 0x5A)
    assert uart.read(SCR, 1) == 0x5A
    assert uart.read(LCR, 1) == 0x03


def test_serial_input_sets_data_ready_and_interrupt():
    uart, _, irqs = make_uart()
    assert uart.read(IIR, 1) == 0x01  # no interrupt pending
    uart.write(IER, 1, 0x01)          # received-data interrupt
    uart.enqueue_input(b"ok")
    assert irqs == [True]
    assert uart.read(IIR, 1) == 0x04
    assert uart.read(LSR, 1) & 0x01
    assert (uart.read(THR, 1), uart.read(THR, 1)) == (ord("o"), ord("k"))
    assert irqs == [True, False]
    assert uart.read(LSR, 1) & 0x01 == 0
    assert uart.read(THR, 1) == 0  # empty: reads 0


def test_serial_thr_empty_interrupt_raised_and_acknowledged():
    uart, _, irqs = make_uart()
    uart.write(IER, 1, 0x02)
    assert irqs == [True] and uart.read(IIR, 1) == 0x02
    assert irqs == [True, False]       # reading IIR acknowledged it
    assert uart.read(IIR, 1) == 0x01
    uart.write(THR, 1, 0x41)           # the byte leaves at once: THR empty again
    assert irqs == [True, False, True]


def test_serial_loopback_echoes_and_mirrors_modem_lines():
    uart, out, _ = make_uart()
    uart.write(MCR, 1, 0x10 | 0x0B)    # loop, OUT2, RTS, DTR
    uart.write(THR, 1, 0x99)
    assert out == b"" and uart.read(THR, 1) == 0x99
    assert uart.read(MSR, 1) == 0x80 | 0x10 | 0x20  # DCD, CTS, DSR
    uart.write(MCR, 1, 0x08)
    assert uart.read(MSR, 1) == 0xB0


def test_serial_probe_finds_a_16550a():
    """The checks of Linux's 8250 autoconfig, in its order: IER keeps four bits, loopback
    mirrors the modem lines, IIR shows 0xC0 with the FIFOs on, no EFR under LCR 0x80 or
    0xbf, no 64-byte FIFO bit (a TI16750), no UUE bit in IER (an XScale)."""
    uart, _, _ = make_uart()
    uart.write(IER, 1, 0)
    assert uart.read(IER, 1) & 0x0F == 0
    uart.write(IER, 1, 0x0F)
    assert uart.read(IER, 1) & 0x0F == 0x0F
    uart.write(IER, 1, 0)
    uart.write(MCR, 1, 0x1A)             # loop | OUT2 | RTS
    assert uart.read(MSR, 1) & 0xF0 == 0x90
    uart.write(MCR, 1, 0x03)
    uart.write(LCR, 1, 0xBF)
    uart.write(IIR, 1, 0)                # the EFR, on a UART that has one
    uart.write(LCR, 1, 0)
    uart.write(IIR, 1, 0x01)             # FCR: FIFOs on
    assert uart.read(IIR, 1) >> 6 == 3   # a 16550A, so far
    for lcr in (0x80, 0xBF):
        uart.write(LCR, 1, lcr)
        assert uart.read(IIR, 1) != 0    # no EFR
    uart.write(LCR, 1, 0)
    uart.write(IIR, 1, 0x21)             # FIFOs and the 16750's 64-byte mode
    assert uart.read(IIR, 1) >> 5 == 6
    uart.write(IER, 1, 0x40)             # UUE
    assert uart.read(IER, 1) & 0x40 == 0


def test_serial_thre_reasserted_as_linux_tests_it():
    """serial8250_do_startup's UART_BUG_THRE test: THRI on, IIR; off and on again, IIR."""
    uart, _, _ = make_uart()
    uart.write(IIR, 1, 0x01)
    uart.write(IER, 1, 0x02)
    iir1 = uart.read(IIR, 1)
    uart.write(IER, 1, 0)
    uart.write(IER, 1, 0x02)
    iir = uart.read(IIR, 1)
    assert (iir1, iir) == (0xC2, 0xC2)


def test_serial_thr_write_drops_and_raises_the_line():
    """A THR write while the THR-empty interrupt is pending ends it and the byte's leaving
    raises it again: a new edge for an edge-triggered PIC input."""
    uart, _, irqs = make_uart()
    uart.write(IER, 1, 0x02)
    uart.write(THR, 1, 0x41)
    assert irqs == [True, False, True]


def test_serial_out2_gates_the_interrupt():
    uart, _, irqs = make_uart()
    uart.write(MCR, 1, 0x03)             # OUT2 off
    uart.write(IER, 1, 0x03)
    uart.enqueue_input(b"a")
    assert irqs == [] and uart.read(IIR, 1) == 0x04
    uart.write(MCR, 1, 0x0B)
    assert irqs == [True]
    uart.write(MCR, 1, 0x1B)             # loopback: the line is the UART's own again
    assert irqs == [True, False]


def test_serial_receive_trigger_level_and_timeout():
    uart, _, _ = make_uart()
    uart.write(IIR, 1, 0x81)             # FIFOs on, trigger level 8
    uart.write(IER, 1, 0x01)
    uart.enqueue_input(b"1234567")
    assert uart.read(IIR, 1) == 0xCC     # fewer than 8: the character timeout
    uart.enqueue_input(b"8")
    assert uart.read(IIR, 1) == 0xC4


def test_serial_loopback_fills_the_fifo_only():
    """Linux's size_fifo writes in loopback until the FIFO is full: 16 bytes, then overrun."""
    uart, _, _ = make_uart()
    uart.write(IIR, 1, 0x07)
    uart.write(MCR, 1, 0x10)
    for i in range(64):
        uart.write(THR, 1, i)
    received = []
    while uart.read(LSR, 1) & 0x01:
        received.append(uart.read(THR, 1))
    assert received == list(range(16))


def test_serial_fifo_reset_keeps_the_backlog():
    """FCR's receive reset empties the 16-byte FIFO, not what waits behind it."""
    uart, _, _ = make_uart()
    uart.write(IIR, 1, 0x01)
    uart.enqueue_input(bytes(range(20)))
    uart.write(IIR, 1, 0x03)
    assert [uart.read(THR, 1) for _ in range(4)] == [16, 17, 18, 19]
    assert not uart.read(LSR, 1) & 0x01


# -- isa-debug-exit ---------------------------------------------------------------


@pytest.mark.parametrize("value,status", [(0, 1), (1, 3), (0x7F, 0xFF)])
def test_debug_exit_status(value, status):
    seen = []
    dev = DebugExit(on_exit=seen.append)
    dev.write(0, 1, value)
    assert seen == [status] and dev.status == status


# -- i8042 ------------------------------------------------------------------------


def test_i8042_reset_command():
    resets = []
    kbd = I8042(on_reset=lambda: resets.append(1))
    assert kbd.read(4, 1) & 0x01 == 0 and kbd.read(4, 1) & 0x04  # empty, POST passed
    kbd.write(4, 1, 0xFE)
    assert resets == [1] and kbd.reset_requested


def test_i8042_reset_through_output_port():
    resets = []
    kbd = I8042(on_reset=lambda: resets.append(1))
    kbd.write(4, 1, 0xD1)
    kbd.write(0, 1, 0x03)  # bit 0 set: no reset
    assert resets == []
    kbd.write(4, 1, 0xD1)
    kbd.write(0, 1, 0x02)
    assert resets == [1]


def test_i8042_command_byte_and_self_test():
    kbd = I8042()
    kbd.write(4, 1, 0x60)
    kbd.write(0, 1, 0x47)
    kbd.write(4, 1, 0x20)
    assert kbd.read(4, 1) & 0x01
    assert kbd.read(0, 1) == 0x47
    kbd.write(4, 1, 0xAA)
    assert kbd.read(0, 1) == 0x55
    kbd.write(0, 1, 0xF4)  # a keyboard command is acknowledged
    assert kbd.read(0, 1) == 0xFA
    assert not kbd.read(4, 1) & 0x01


# -- CMOS / RTC -------------------------------------------------------------------

FIXED = datetime.datetime(2024, 2, 29, 13, 5, 9)  # a Thursday


class FakeNs:
    """A clock the test moves: nanoseconds in ``now``."""

    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


class FakeTimer:
    def __init__(self):
        self.due = None

    def arm(self, delay):
        self.due = delay

    def disarm(self):
        self.due = None


def make_cmos(date=FIXED, **kw):
    ns = FakeNs()
    return Cmos(RtcClock(ns, epoch_seconds(date)), **kw), ns


def cmos_reg(cmos, index):
    cmos.write(0, 1, index)
    return cmos.read(1, 1)


def cmos_set(cmos, index, value):
    cmos.write(0, 1, index)
    cmos.write(1, 1, value)


def test_cmos_time_in_bcd():
    cmos, _ = make_cmos()
    assert [cmos_reg(cmos, i) for i in (0, 2, 4, 6, 7, 8, 9, 0x32)] == [
        0x09, 0x05, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
    assert cmos_reg(cmos, 0x0D) & 0x80  # valid RAM and time
    assert cmos_reg(cmos, 0x0A) & 0x80 == 0  # no update in progress


def test_cmos_binary_and_12_hour_modes():
    cmos, _ = make_cmos()
    cmos_set(cmos, 0x0B, 0x04)  # binary, 12-hour
    assert cmos_reg(cmos, 0) == 9
    assert cmos_reg(cmos, 4) == 0x80 | 1  # 1 pm
    assert cmos_reg(cmos, 9) == 24


def test_cmos_nvram_and_nmi_bit():
    cmos, _ = make_cmos()
    cmos.write(0, 1, 0x80 | 0x40)  # NMI off, index 0x40
    cmos.write(1, 1, 0xA5)
    assert cmos.nmi_disabled
    assert cmos_reg(cmos, 0x40) == 0xA5
    assert cmos.read(0, 1) == 0xFF  # index port is write-only


def test_cmos_host_clock_by_default():
    now = datetime.datetime.now(datetime.timezone.utc)
    year = cmos_reg(Cmos(), 9)
    assert year in (((now.year % 100) // 10) << 4 | now.year % 10,
                    (((now.year + 1) % 100) // 10) << 4 | (now.year + 1) % 10)


def test_cmos_clock_advances_and_uip_precedes_each_update():
    cmos, ns = make_cmos()
    ns.now = 999_700_000                  # 300 us before the next second: no update yet
    assert cmos_reg(cmos, 0x0A) & 0x80 == 0 and cmos_reg(cmos, 0) == 0x09
    ns.now = 999_800_000                  # 200 us before it: UIP
    assert cmos_reg(cmos, 0x0A) & 0x80
    ns.now = 1_000_000_000
    assert cmos_reg(cmos, 0x0A) & 0x80 == 0 and cmos_reg(cmos, 0) == 0x10


def test_cmos_set_freezes_then_the_written_time_runs():
    cmos, ns = make_cmos()
    cmos_set(cmos, 0x0B, 0x82)            # SET, 24-hour, BCD
    cmos_set(cmos, 0x04, 0x23)
    cmos_set(cmos, 0x02, 0x59)
    cmos_set(cmos, 0x00, 0x59)
    ns.now = 5_000_000_000                # frozen while SET
    assert [cmos_reg(cmos, i) for i in (4, 2, 0)] == [0x23, 0x59, 0x59]
    cmos_set(cmos, 0x0B, 0x02)
    ns.now = 6_000_000_000                # one second on: the next day (March 1st, 2024)
    assert [cmos_reg(cmos, i) for i in (4, 2, 0, 7, 8)] == [0x00, 0x00, 0x00, 0x01, 0x03]


def test_cmos_12_hour_write():
    cmos, _ = make_cmos()
    cmos_set(cmos, 0x0B, 0x00)            # BCD, 12-hour
    cmos_set(cmos, 0x04, 0x80 | 0x12)     # 12 PM: noon
    cmos_set(cmos, 0x0B, 0x02)
    assert cmos_reg(cmos, 4) == 0x12
    cmos_set(cmos, 0x0B, 0x00)
    cmos_set(cmos, 0x04, 0x12)            # 12 AM: midnight
    cmos_set(cmos, 0x0B, 0x02)
    assert cmos_reg(cmos, 4) == 0x00


def test_cmos_flags_and_irq_8():
    irqs = []
    cmos, ns = make_cmos(irq=irqs.append)
    cmos_set(cmos, 0x0A, 0x2F)            # rate 15: a 500 ms period
    cmos_reg(cmos, 0x0C)
    cmos_set(cmos, 0x05, 0x13)            # alarm 13:05:10
    cmos_set(cmos, 0x03, 0x05)
    cmos_set(cmos, 0x01, 0x10)
    ns.now = 400_000_000
    assert cmos_reg(cmos, 0x0C) == 0      # nothing yet
    ns.now = 600_000_000                  # a period ended
    assert cmos_reg(cmos, 0x0C) == 0x40 and irqs == []    # PF, but PIE is off
    cmos_set(cmos, 0x0B, 0x02 | 0x10)     # UIE
    ns.now = 1_000_000_000                # 13:05:10: update, alarm, period
    cmos.tick()
    assert irqs == [True]
    assert cmos_reg(cmos, 0x0C) == 0x80 | 0x40 | 0x20 | 0x10
    assert irqs == [True, False]          # reading C ends the interrupt
    cmos_set(cmos, 0x01, 0xC0)            # any second: the alarm each second
    cmos_set(cmos, 0x0B, 0x02 | 0x20)     # AIE alone
    ns.now = 1_200_000_000
    cmos.tick()
    assert irqs == [True, False]
    ns.now = 2_000_000_000
    cmos.tick()
    assert irqs == [True, False, True] and cmos_reg(cmos, 0x0C) == 0x80 | 0x70


def test_cmos_timer_armed_for_the_next_event():
    timer = FakeTimer()
    cmos, ns = make_cmos(irq=lambda level: None, timer=timer)
    ns.now = 250_000_000
    cmos_set(cmos, 0x0B, 0x12)            # UIE: the next update is 750 ms away
    assert timer.due == pytest.approx(0.75)
    cmos_set(cmos, 0x0B, 0x52)            # and PIE at 1024 Hz (rate 6): periods have passed
    assert timer.due is None              # IRQ 8 is up: nothing to wait for until C is read
    assert cmos_reg(cmos, 0x0C) == 0xC0
    assert timer.due == pytest.approx(1 / 1024)     # 250 ms is a whole number of periods
    cmos_set(cmos, 0x0B, 0x02)
    assert timer.due is None


# -- kvmpy test device ------------------------------------------------------------


def test_constant_device_answers_and_records():
    dev = ConstantDevice()
    assert dev.read(0, 4) == 0x12345678
    assert dev.read(0, 2) == 0x5678
    dev.write(0, 4, 0xCAFEF00D)
    assert dev.writes == [(0, 4, 0xCAFEF00D)]
