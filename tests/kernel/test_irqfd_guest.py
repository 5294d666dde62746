"""Interrupts a device thread sends through eventfds, taken by a guest (host /dev/kvm and
kvmpy, both vendor modules and MMU modes): a level-triggered IOAPIC pin driven by an irqfd
with a resample fd (KVM_IRQFD_FLAG_RESAMPLE), and an ioeventfd the guest's writes signal
with no exit to user space.

The "device" is a thread that owns the eventfds: it asserts the line by writing the irqfd;
the guest's EOI lowers the line and signals the resample fd, where the device, still having
work, asserts it again, three times in all.  The ioeventfd scenario's device counts the
guest's doorbell writes (PIO and MMIO) while the vCPU runs on, and answers through memory.
"""

import os
import select
import shutil
import threading

import pytest

from kvmpy import compat
from kvmpy.uapi import kvm as uapi
from tests.support.apicguest import DONE, LEVEL, READY, guest, handler, port_exit, redirect, watchdog
from tests.support.guestvm import assemble, create_irqchip, machine, prot32
from tests.support.vendors import scenario_tests

pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                                reason="needs GNU as and ld")

PIN, VEC, SENDS = 17, 0x51, 3


def _device(irqfd, resample, stop, sent):
    """Assert the line; each time the guest's EOI resamples it, assert again until SENDS."""
    os.write(irqfd, (1).to_bytes(8, "little"))
    sent.append(1)
    while len(sent) < SENDS and not stop.is_set():
        if select.select([resample], [], [], 0.05)[0]:
            os.read(resample, 8)
            os.write(irqfd, (1).to_bytes(8, "little"))
            sent.append(1)
    if select.select([resample], [], [], 5)[0]:        # the last EOI
        os.read(resample, 8)
        sent.append("eoi")


@machine
def level_resample(make):
    m = make(assemble(guest(redirect(PIN, VEC, LEVEL), {VEC: handler("R")}, SENDS)), vm_setup=create_irqchip)
    irqfd, resample = compat.eventfd(0), compat.eventfd(0)
    m.sc.ioctl(m.vm_fd, uapi.KVM_IRQFD, uapi.kvm_irqfd(fd=irqfd, gsi=PIN, flags=uapi.KVM_IRQFD_FLAG_RESAMPLE,
                                                       resamplefd=resample))
    stop, sent, reports = threading.Event(), [], []
    dev = None
    try:
        with watchdog(60):
            for _ in range(100):
                r = port_exit(m)
                reports.append(list(r) if isinstance(r, tuple) else r.get("reason"))
                if r == (READY, 0) and dev is None:
                    dev = threading.Thread(target=_device, args=(irqfd, resample, stop, sent), daemon=True)
                    dev.start()
                if not isinstance(r, tuple) or r[0] == DONE:
                    break
        if dev is not None:
            dev.join(10)
    finally:
        stop.set()
        m.sc.ioctl(m.vm_fd, uapi.KVM_IRQFD, uapi.kvm_irqfd(fd=irqfd, gsi=PIN, flags=uapi.KVM_IRQFD_FLAG_DEASSIGN))
        os.close(irqfd)
        os.close(resample)
    return dict(console=m.console, last=reports[-1], sent=sent)


DOORBELL_PIO, DOORBELL_MMIO, ANSWER, RINGS = 0x710, 0xD0000100, 0x9100, 5


def _counter(fds, stop, counts):
    """Count the doorbells; after all of them, answer in the guest's memory."""
    while sum(counts) < 2 * RINGS and not stop.is_set():
        for i, fd in enumerate(fds):
            if select.select([fd], [], [], 0.01)[0]:
                counts[i] += int.from_bytes(os.read(fd, 8), "little")


@machine
def doorbells(make):
    """The guest rings a PIO and an MMIO doorbell RINGS times each, then waits in a loop for
    the device's answer in memory: every ring reached the device with no exit, the only
    exits being the final report."""
    body = (f" mov ${RINGS}, %ecx\n1: mov ${DOORBELL_PIO:#x}, %dx\n out %al, %dx\n"
            f" movl $1, {DOORBELL_MMIO:#x}\n loop 1b\n"
            f"2: cmpl $0, {ANSWER:#x}\n je 2b\n mov {ANSWER:#x}, %eax\n mov ${READY:#x}, %dx\n out %eax, %dx\n hlt\n")
    m = make(assemble(prot32(body)), vm_setup=create_irqchip)
    fds = [compat.eventfd(0), compat.eventfd(0)]
    for fd, addr, flags in ((fds[0], DOORBELL_PIO, uapi.KVM_IOEVENTFD_FLAG_PIO), (fds[1], DOORBELL_MMIO, 0)):
        m.sc.ioctl(m.vm_fd, uapi.KVM_IOEVENTFD, uapi.kvm_ioeventfd(addr=addr, len=0 if flags else 4, fd=fd,
                                                                  flags=flags))
    stop, counts = threading.Event(), [0, 0]
    dev = threading.Thread(target=_counter, args=(fds, stop, counts), daemon=True)
    dev.start()
    try:
        def answer():
            dev.join(20)
            m.ram[ANSWER:ANSWER + 4] = (0x600D).to_bytes(4, "little")
        threading.Thread(target=answer, daemon=True).start()
        with watchdog(60):
            r = port_exit(m)
    finally:
        stop.set()
        for fd in fds:
            os.close(fd)
    return dict(first_exit=list(r) if isinstance(r, tuple) else r.get("reason"), counts=counts)


SCENARIOS = {"level_resample": level_resample, "doorbells": doorbells}
EXPECTED = {
    # three interrupts, each taken, EOIed and resampled; the device saw the last EOI too
    "level_resample": dict(console="RRR", last=[DONE, SENDS], sent=[1, 1, 1, "eoi"]),
    "doorbells": dict(first_exit=[READY, 0x600D], counts=[RINGS, RINGS]),
}

test_eventfds_on_the_host, test_eventfds_on_kvmpy = scenario_tests("tests.kernel.test_irqfd_guest", SCENARIOS,
                                                                  EXPECTED)
