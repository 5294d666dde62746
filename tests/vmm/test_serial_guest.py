"""COM1's interrupts as Linux's 8250 driver uses them (kvmpy/guests/serial.S) through
``kvmpy run``: IRQ 4 through the in-kernel 8259, gated by MCR.OUT2; the driver's start-up
THR-empty test (UART_BUG_THRE) passes; the guest's message goes out by THR-empty interrupts
alone and the line piped to kvmpy's stdin comes in by receive interrupts.  The same through
the IOAPIC and LAPIC, Linux's route with ACPI (kvmpy/guests/serial_ioapic.S).  On kvmpy
under both vendor modules and MMU modes, and on the host's /dev/kvm."""

import pytest

from kvmpy import guests
from tests.support.cli import kvmpy_interact
from tests.support.hostkvm import host_kvm_usable

GUEST = str(guests.image_path("serial"))
IOAPIC_GUEST = str(guests.image_path("serial_ioapic"))
IOAPIC_READY = b"ioapic: output by THR-empty interrupts\n"
DEBUG_EXIT_OK = 1               # isa-debug-exit of 0: QEMU's (0 << 1) | 1
READY = b"serial: output by THR-empty interrupts\n"
MESSAGE_BYTES = len(READY)
LINE = "hello kvmpy\n"


def _expected():
    # THR-empty interrupts: one per byte and one more that finds the message's end
    return (READY.decode() + "probe iir c2 c1 c2 \n"
            f"gated 00 thre {MESSAGE_BYTES + 1:02x} rx 01 rx-iir 04 \n" + "line " + LINE)


def _run(*options, guest=GUEST, ready=READY):
    return kvmpy_interact(*options, "-machine", "kernel-irqchip=on", "--timeout", "100",
                          guest, wait_for=ready, send=LINE.encode(), timeout=150)


def _run_ioapic(*options):
    status, out, err = _run(*options, guest=IOAPIC_GUEST, ready=IOAPIC_READY)
    expected = (IOAPIC_READY.decode()
                + f"ioapic: thre {len(IOAPIC_READY) + 1:02x} line " + LINE)
    assert (status, out) == (DEBUG_EXIT_OK, expected), err


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


@pytest.mark.parametrize("vendor,mmu", [("vmx", "shadow"), ("svm", "tdp")])
def test_serial_through_the_ioapic_on_kvmpy(vendor, mmu):
    _run_ioapic("--vendor", vendor, "--mmu", mmu)


@pytest.mark.host
def test_serial_through_the_ioapic_on_the_host():
    if not host_kvm_usable():
        pytest.skip("no usable /dev/kvm")
    _run_ioapic("--accel", "host")


def test_piped_input_reaches_the_guest_unfiltered():
    """Not a terminal: a C-a and what follows it are the guest's bytes, not kvmpy's keys."""
    status, out, err = kvmpy_interact("-machine", "kernel-irqchip=on", "--timeout", "100",
                                      GUEST, wait_for=READY, send=b"a\x01x\x01c\n",
                                      timeout=150)
    assert status == DEBUG_EXIT_OK and out.endswith("line a\x01x\x01c\n"), (out, err)
