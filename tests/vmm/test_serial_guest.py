"""COM1's interrupts as Linux's 8250 driver uses them (kvmpy/guests/serial.S) through
``kvmpy run``: IRQ 4 through the in-kernel 8259, gated by MCR.OUT2; the driver's start-up
THR-empty test (UART_BUG_THRE) passes; the guest's message goes out by THR-empty interrupts
alone and the line piped to kvmpy's stdin comes in by receive interrupts.  On kvmpy under
both vendor modules and MMU modes, and on the host's /dev/kvm."""

import pytest

from kvmpy import guests
from tests.support.cli import kvmpy_interact
from tests.support.hostkvm import host_kvm_usable

GUEST = str(guests.image_path("serial"))
DEBUG_EXIT_OK = 1               # isa-debug-exit of 0: QEMU's (0 << 1) | 1
READY = b"serial: output by THR-empty interrupts\n"
MESSAGE_BYTES = len(READY)
LINE = "hello kvmpy\n"


def _expected():
    # THR-empty interrupts: one per byte and one more that finds the message's end
    return (READY.decode() + "probe iir c2 c1 c2 \n"
            f"gated 00 thre {MESSAGE_BYTES + 1:02x} rx 01 rx-iir 04 \n" + "line " + LINE)


def _run(*options):
    return kvmpy_interact(*options, "-machine", "kernel-irqchip=on", "--timeout", "100",
                          GUEST, wait_for=READY, send=LINE.encode(), timeout=150)


@pytest.mark.parametrize("vendor,mmu", [("vmx", "tdp"), ("svm", "shadow")])
def test_serial_interrupts_on_kvmpy(vendor, mmu):
    status, out, err = _run("--vendor", vendor, "--mmu", mmu)
    assert (status, out) == (DEBUG_EXIT_OK, _expected()), err


@pytest.mark.host
def test_serial_interrupts_on_the_host():
    if not host_kvm_usable():
        pytest.skip("no usable /dev/kvm")
    status, out, err = _run("--accel", "host")
    assert (status, out) == (DEBUG_EXIT_OK, _expected()), err
