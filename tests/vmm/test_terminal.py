"""``kvmpy run`` on a terminal (a pty): raw mode while the guest runs and the terminal's
mode back afterwards, however the run ends; QEMU's C-a keys (x quits, c switches to the
monitor and back, C-a C-a sends a C-a) and the monitor's commands.  The guest is
kvmpy/guests/serial.S, which takes input by COM1's receive interrupt and prints the line
it got."""

import signal
import termios

import pytest

from kvmpy import guests
from tests.support.hostkvm import host_kvm_usable
from tests.support.ptyrun import PtyRun

GUEST = str(guests.image_path("serial"))
READY = b"serial: output by THR-empty interrupts\r\n"     # (the terminal's OPOST: CR LF)
PROMPT = b"(kvmpy) "
DEBUG_EXIT_OK = 1


def _run(*options):
    return PtyRun("-machine", "kernel-irqchip=on", "--timeout", "100", *options, GUEST)


def test_raw_mode_while_the_guest_runs_and_restored_after():
    with _run() as t:
        t.read_until(READY)
        iflag, oflag, cflag, lflag = t.attrs()[:4]
        assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
        assert not iflag & (termios.ICRNL | termios.IXON)
        assert oflag & termios.OPOST                    # "\n" still starts a line
        t.type(b"typed\n")
        assert t.read_until(b"line typed\r\n")
        status, err = t.wait()
        assert status == DEBUG_EXIT_OK, err
        assert t.attrs() == t.saved


def test_ctrl_a_x_quits_and_restores_the_terminal():
    with _run() as t:
        t.read_until(READY)
        t.type(b"\x01x")
        status, err = t.wait()
        assert (status, err) == (0, "kvmpy: terminated (C-a x or the monitor's quit)\n")
        assert t.attrs() == t.saved
        assert b"line" not in t.output


def test_sigterm_ends_the_run_and_restores_the_terminal():
    with _run() as t:
        t.read_until(READY)
        t.proc.send_signal(signal.SIGTERM)
        status, err = t.wait()
        assert (status, err) == (0, f"kvmpy: terminating on signal {int(signal.SIGTERM)}\n")
        assert t.attrs() == t.saved


def test_ctrl_a_ctrl_a_sends_ctrl_a_and_unknown_keys_are_dropped():
    with _run() as t:
        t.read_until(READY)
        t.type(b"a\x01\x01b\x01zc\n")
        assert t.read_until(b"line a\x01bc\r\n")
        assert t.wait()[0] == DEBUG_EXIT_OK


@pytest.mark.parametrize("accel", ["soft", pytest.param("host", marks=pytest.mark.host)])
def test_monitor(accel):
    if accel == "host" and not host_kvm_usable():
        pytest.skip("no usable /dev/kvm")
    with _run("--accel", accel) as t:
        t.read_until(READY)
        t.type(b"\x01c")
        t.read_until(b"kvmpy monitor - type 'help' for more information\r\n" + PROMPT)
        mark = len(t.output)

        def command(line):
            """What the monitor shows for ``line``: its echo, the answer, the next prompt."""
            nonlocal mark
            t.type(line + b"\r")
            out = t.read_until(PROMPT, 30, since=mark + len(line))
            answer, mark = out[mark:], len(out)
            return answer

        assert command(b"info status") == b"info status\r\nVM status: running\r\n" + PROMPT
        command(b"stop")
        assert command(b"info status") == b"info status\r\nVM status: paused\r\n" + PROMPT
        regs = command(b"info registers").decode()
        assert "CPU#0" in regs and "RIP=" in regs and "CR0=" in regs and "EFER=" in regs
        assert "CS =0000 0000000000000000 0000ffff" in regs    # real mode
        cpus = command(b"info cpus").decode()
        assert cpus.startswith("info cpus\r\n* CPU #0: pc=0x"), cpus
        assert b"unknown command: 'bogus'" in command(b"bogus")
        t.type(b"\x01c")                        # back to the console, the guest still stopped
        t.type(b"late\n")
        t.type(b"\x01c")
        t.read_until(PROMPT, since=mark)
        assert b"line" not in t.output
        t.type(b"cont\r")
        assert t.read_until(b"line late\r\n")
        assert t.wait()[0] == DEBUG_EXIT_OK
        assert t.attrs() == t.saved


def test_monitor_quit():
    with _run() as t:
        t.read_until(READY)
        t.type(b"\x01c")
        t.read_until(PROMPT)
        t.type(b"quit\r")
        status, err = t.wait()
        assert status == 0 and "terminated" in err
        assert t.attrs() == t.saved


@pytest.mark.parametrize("accel", ["soft", pytest.param("host", marks=pytest.mark.host)])
def test_monitor_sees_every_vcpu(accel):
    """-smp 2: the AP, never started, is paused in its first KVM_RUN and shown waiting."""
    if accel == "host" and not host_kvm_usable():
        pytest.skip("no usable /dev/kvm")
    with _run("--accel", accel, "-smp", "2") as t:
        t.read_until(READY)
        t.type(b"\x01c")
        mark = len(t.read_until(PROMPT))
        t.type(b"info cpus\r")
        out = t.read_until(PROMPT, since=mark + len(b"info cpus")).decode()
        assert "* CPU #0: pc=0x" in out
        assert "  CPU #1: pc=0x00000000fffffff0 (waiting for INIT/SIPI)" in out
        t.type(b"info registers\r")
        out = t.read_until(b"EFER", since=len(out)).decode()
        assert "CPU#0" in out and "CPU#1" in out and "RIP=000000000000fff0" in out
        t.type(b"quit\r")
        assert t.wait()[0] == 0
        assert t.attrs() == t.saved
