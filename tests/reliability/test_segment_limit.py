"""A word access at offset 0xFFFF in real mode runs past the segment's 64 KiB limit: #GP(0),
delivered through IVT entry 13 with the faulting instruction's IP (SDM, real-address-mode
exceptions of MOV and STOS).  Found with the guest fuzzer (issue 7: ``--seed 8 --start 0
--count 1 --combos vmx/tdp``, where the host shut the guest down and kvmpy ran on) by
single-stepping both (tests/reliability/step_trace.py): the first difference was a REP STOSW
with DI = 0xFFFF, which the host faults on and kvmpy executed, wrapping over its own IVT and
code, as its processor checked no data-segment limit.  The word at 0xFFFE, inside the
limit, is the control.
"""

import struct

import pytest

from kvmpy import syscalls
from tests.reliability import guests
from tests.support import rawvmm

# (code at CODE, what the host shows: outcome, RIP, the IP/CS/FLAGS frame on the stack)
CASES = {
    "stosw at di=0xffff": (bytes.fromhex("bfffff" "ab" "f4"), ("hlt", guests.HANDLER + 1, (guests.CODE + 3, 0, 2))),
    "mov to [0xffff]": (bytes.fromhex("a3ffff" "f4"), ("hlt", guests.HANDLER + 1, (guests.CODE, 0, 2))),
    "jmp far [0xffff]": (bytes.fromhex("ff2effff" "f4"), ("hlt", guests.HANDLER + 1, (guests.CODE, 0, 2))),
    "les di, [0xfffe]": (bytes.fromhex("c43efeff" "f4"), ("hlt", guests.HANDLER + 1, (guests.CODE, 0, 2))),
}
CONTROL = bytes.fromhex("bffeff" "ab" "f4")        # stosw at di=0xfffe: no fault, HLT after it


def run_case(sc, code):
    outcome, rip, frame = guests.run_fixed(sc, "real", code, frame=6)
    return outcome, rip, struct.unpack("<HHH", frame)


@pytest.mark.host
@pytest.mark.parametrize("name", sorted(CASES))
def test_real_mode_limit_on_the_host(name):
    code, expected = CASES[name]
    assert run_case(rawvmm.HOST, code) == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_mode_limit_on_kvmpy(soft_kvm, soft_mmu, name):
    code, expected = CASES[name]
    assert run_case(syscalls, code) == expected


def test_inside_the_limit(soft_kvm, soft_mmu):
    assert run_case(syscalls, CONTROL)[:2] == ("hlt", guests.CODE + 5)
