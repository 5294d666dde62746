"""Code fetches beyond the CS limit are #GP(0) (found by the guest fuzzer, issue 7).

In real mode CS has a 64 KiB limit: ``jmp 0:0xfffe`` then two one-byte instructions runs the
first two and faults on the fetch at IP 0x10000 (the frame's IP, pushed as 16 bits, reads 0);
an instruction that straddles 0xffff/0x10000 faults at its own IP.  kvmpy went on fetching
past the limit.  The host's frames (AMD EPYC Zen 3, Linux 6.18, kvm_pvm) are recorded here;
with the ``host`` marker the cases also run live.
"""

import struct

import pytest

from kvmpy import syscalls
from tests.reliability import guests
from tests.support import rawvmm

BOUND = 20.0
JMP_TO_FFFE = bytes.fromhex("eafeff0000")          # jmp 0:0xfffe
AT_10000 = b"\x01\xf4"                              # reached only if the limit is not enforced

# name: (bytes at 0:0xfffe, the host's #GP frame: IP, CS, FLAGS)
CASES = {
    "nop-nop": (b"\x90\x90", (0x0000, 0, 0x0002)),      # faults fetching at 0x10000
    "nop-straddling-mov": (b"\x90\xb0", (0xFFFF, 0, 0x0002)),   # mov al, imm8 crosses the limit
}


def run_case(sc, name):
    """The guest's exit, RIP and the exception frame its handler (hlt) sees."""
    outcome, rip, frame = guests.run_fixed(sc, "real", JMP_TO_FFFE, [(0xFFFE, CASES[name][0]), (0x10000, AT_10000)],
                                           frame=6, bound=BOUND)
    return outcome, rip, struct.unpack("<HHH", frame)


@pytest.mark.parametrize("name", CASES)
def test_fetch_beyond_cs_limit_is_gp(soft_kvm, soft_mmu, name):
    assert run_case(syscalls, name) == ("hlt", guests.HANDLER + 1, CASES[name][1])


@pytest.mark.host
@pytest.mark.parametrize("name", CASES)
def test_fetch_beyond_cs_limit_on_the_host(name):
    assert run_case(rawvmm.HOST, name) == ("hlt", guests.HANDLER + 1, CASES[name][1])
