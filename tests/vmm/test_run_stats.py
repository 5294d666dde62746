"""``kvmpy run --stats``: the boot milestones (first serial output, console input enabled),
the run's end, and the guest's instruction count and rate where the KVM counts them
(kvmpy's processor; the host's KVM does not)."""

import re

import pytest

from kvmpy import guests
from tests.support.cli import kvmpy_interact, kvmpy_run
from tests.support.hostkvm import host_kvm_usable

SERIAL = str(guests.image_path("serial"))
LIMIT_STATUS = 4


def _stats(err):
    """{milestone: (seconds, instructions or None)} and the end line's numbers."""
    marks = {}
    for what, at, count in re.findall(
            r"kvmpy stats: (first serial output|console input enabled) after ([\d.]+) s"
            r"(?:, ([\d,]+) guest instructions)?", err):
        marks[what] = (float(at), int(count.replace(",", "")) if count else None)
    end = re.search(r"kvmpy stats: run ended after ([\d.]+) s \((\S+)\), ([\d,]+) exits"
                    r"(?:; ([\d,]+) guest instructions, ([\d.]+) MIPS)?", err)
    assert end and "machine ready after" in err, err
    total = int(end.group(4).replace(",", "")) if end.group(4) else None
    return marks, float(end.group(1)), end.group(2), total


def test_stats_of_the_demo_guest_count_its_instructions():
    status, out, err = kvmpy_run("--stats", timeout=120)
    assert status == 0 and "demo ok" in out, err
    marks, end, reason, total = _stats(err)
    assert reason == "debug-exit" and total > 1000
    at, first = marks["first serial output"]
    assert 0 < first < total and at <= end
    # the count is the processor's own: an instruction limit of half of it stops there
    status, _, err = kvmpy_run("--stats", "--max-insns", str(total // 2), timeout=120)
    assert status == LIMIT_STATUS, err
    _, _, reason, stopped = _stats(err)
    assert reason == "insn-limit" and total // 2 <= stopped < total // 2 + 100


@pytest.mark.parametrize("accel", ["soft", pytest.param("host", marks=pytest.mark.host)])
def test_stats_note_when_the_console_takes_input(accel):
    if accel == "host" and not host_kvm_usable():
        pytest.skip("no usable /dev/kvm")
    status, out, err = kvmpy_interact("--stats", "--accel", accel, "-machine", "kernel-irqchip=on",
                                      "--timeout", "60", SERIAL,
                                      wait_for=b"interrupts\n", send=b"x\n", timeout=90)
    assert status == 1 and out.endswith("line x\n"), err
    marks, end, reason, total = _stats(err)
    first_at, first = marks["first serial output"]
    input_at, enabled = marks["console input enabled"]
    assert first_at <= input_at <= end and reason == "debug-exit"
    if accel == "host":
        assert total is first is enabled is None
        assert "guest instructions not counted on this KVM" in err
    else:
        assert first < enabled < total


def test_no_stats_unless_asked():
    status, out, err = kvmpy_run(timeout=120)
    assert status == 0 and "kvmpy stats" not in err
