"""Guests that once kept kvmpy inside KVM_RUN, or got an exception the host never gives.

Each reproducer is run on kvmpy (both MMUs) and, where /dev/kvm exists, on the host; the
host's answer is recorded here (AMD EPYC Zen 3, Linux 6.18, kvm_pvm) so that kvmpy is checked
everywhere.  Every run is bounded: a timer sets ``immediate_exit`` after BOUND seconds, so a
livelock fails the test with EINTR instead of hanging it.
"""

import threading

import pytest

from kvmpy import syscalls
from kvmpy.uapi import kvm as uapi
from tests.support import rawvmm
from tests.support.guestvm import Machine

BOUND = 20.0            # seconds; each reproducer ends at once on the host
HOLE_RAM = 0xA0000      # RAM below the legacy VGA hole: 0xa0000-0xfffff has no memslot

# jmp 0xe000:0 in real mode, into the memslot hole.  The host: KVM_EXIT_INTERNAL_ERROR,
# KVM_INTERNAL_ERROR_EMULATION (the fetch from MMIO cannot be emulated); never a #PF, which
# a guest with paging off cannot take.
JMP_INTO_HOLE = bytes.fromhex("ea000000e0")
HOST_JMP_INTO_HOLE = ("INTERNAL_ERROR", uapi.KVM_INTERNAL_ERROR_EMULATION)


def bounded_run(sc, image, mode="real"):
    """KVM_RUN once, stopped by immediate_exit after BOUND seconds: (exit, suberror, rip)."""
    m = Machine(sc, image, mode=mode, ram=HOLE_RAM)
    timer = threading.Timer(BOUND, lambda: setattr(m.run, "immediate_exit", 1))
    timer.start()
    try:
        rec = m.kvm_run()
        return rec.get("errno", rec["reason"]), rec.get("suberror"), rec["rip"]
    finally:
        timer.cancel()
        m.close()


def test_jump_into_memslot_hole(soft_kvm, soft_mmu):
    reason, suberror, rip = bounded_run(syscalls, JMP_INTO_HOLE)
    assert (reason, suberror) == HOST_JMP_INTO_HOLE
    assert rip == "0x0"


@pytest.mark.host
def test_jump_into_memslot_hole_on_host():
    reason, suberror, _ = bounded_run(rawvmm.HOST, JMP_INTO_HOLE)
    assert (reason, suberror) == HOST_JMP_INTO_HOLE
