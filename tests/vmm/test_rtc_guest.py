"""The CMOS RTC seen by a guest (kvmpy/guests/rtc.S) through ``kvmpy run -rtc``: the date
``-rtc base=`` gives (a fixed one, the host's UTC or local date), in BCD and binary, 24- and
12-hour modes; the update interrupt on IRQ 8 through the in-kernel 8259, with the alarm
flag at midnight (the alarm registers are 00:00:00); a time the guest sets itself.  With
``clock=vm`` on kvmpy's virtual clock the run is exact; with the host's clock, or on the
host's /dev/kvm, a second may pass between two reads."""

import datetime
import os
import re

import pytest

from kvmpy import guests
from tests.support.cli import kvmpy_run
from tests.support.hostkvm import host_kvm_usable

GUEST = str(guests.image_path("rtc"))
DEBUG_EXIT_OK = 1
LEAP_EVE = "-rtc", "base=2024-02-29T23:59:58"
POLLED = ("date 20 24 02 29 23 59 58 wd 05 \n"      # Thursday: weekday 5 (Sunday is 1)
          "bin 17 3b 3a 12h 8b bcd12h 91 d 80 \n")  # 23:59:58 binary; 11 PM (bit 7)
SET = "set 20 25 06 15 12 34 56 \n"
UF, AF, IRQF = 0x10, 0x20, 0x80


def _date(line):
    """The datetime of the first "date ..." (or "set ...") fields of ``line``."""
    cc, yy, mo, dd, hh, mi, ss = (int(f) for f in re.search(
        r"(?:date|set) ((?:\d\d ){7})", line).group(1).split())
    return datetime.datetime(cc * 100 + yy, mo, dd, hh, mi, ss)


def _host_skip(accel):
    if accel == "host" and not host_kvm_usable():
        pytest.skip("no usable /dev/kvm")


ACCELS = ["soft", pytest.param("host", marks=pytest.mark.host)]


@pytest.mark.parametrize("vendor", ["vmx", "svm"])
def test_fixed_date_on_the_vm_clock_is_exact(vendor):
    status, out, err = kvmpy_run("--vendor", vendor, *LEAP_EVE[:1], LEAP_EVE[1] + ",clock=vm",
                                 GUEST, input="p", timeout=60)
    assert (status, out) == (DEBUG_EXIT_OK, POLLED + SET), err


@pytest.mark.parametrize("accel", ACCELS)
def test_update_interrupts_cross_midnight_with_the_alarm(accel):
    _host_skip(accel)
    status, out, err = kvmpy_run("--accel", accel, "-machine", "kernel-irqchip=on", *LEAP_EVE,
                                 GUEST, input="i", timeout=60)
    assert status == DEBUG_EXIT_OK, err
    lines = out.splitlines()
    start = _date(lines[0])
    assert datetime.datetime(2024, 2, 29, 23, 59, 58) <= start <= datetime.datetime(
        2024, 2, 29, 23, 59, 59), out
    flags = [int(f, 16) for f in lines[2].split()[1:4]]
    assert all(f & (IRQF | UF) == IRQF | UF for f in flags), out
    assert [bool(f & AF) for f in flags].count(True) == 1, out      # 00:00:00 came once
    after = _date(lines[2])
    assert start + datetime.timedelta(seconds=3) <= after <= datetime.datetime(
        2024, 3, 1, 0, 0, 30), out                                   # the day after Feb 29
    assert _date(lines[3]) - datetime.datetime(2025, 6, 15, 12, 34, 56) <= datetime.timedelta(
        seconds=1), out


@pytest.mark.parametrize("accel", ACCELS)
def test_default_is_the_hosts_utc_date(accel):
    _host_skip(accel)
    before = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)
    status, out, err = kvmpy_run("--accel", accel, GUEST, input="p", timeout=60)
    after = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert status == DEBUG_EXIT_OK, err
    assert before <= _date(out) <= after, out


def test_localtime_base_follows_tz():
    env = dict(os.environ, TZ="KVM-5:30")             # POSIX TZ: local = UTC + 5:30
    before = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None, microsecond=0)
    status, out, err = kvmpy_run("-rtc", "base=localtime", GUEST, input="p", timeout=60,
                                 env=env)
    after = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert status == DEBUG_EXIT_OK, err
    offset = datetime.timedelta(hours=5, minutes=30)
    assert before + offset <= _date(out) <= after + offset, out


@pytest.mark.parametrize("option,message", [
    ("base=yesterday", "-rtc base=yesterday: expected utc, localtime"),
    ("clock=wall", "-rtc clock=wall: expected one of host, rt, vm"),
    ("driftfix=slew", "-rtc driftfix=slew: only none"),
])
def test_bad_rtc_options(option, message):
    status, out, err = kvmpy_run("-rtc", option, GUEST, timeout=60)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
