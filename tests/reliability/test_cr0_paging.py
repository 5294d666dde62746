"""MOV to CR0 that would turn paging off in 64-bit mode is #GP(0) (found by the guest
fuzzer, issue 7: seed 3 guest 55).

The guest loaded CR0 with 8 in long mode: kvmpy cleared PE and PG, dropped out of IA-32e
mode into real mode and ran on; the processor refuses (paging cannot be turned off in
64-bit mode, nor with CR4.PCIDE; nor can IA-32e mode be entered with CS.L set), and the
host's guest took the #GP.  The host's frames (AMD EPYC Zen 3, Linux 6.18, kvm_pvm) are
recorded here; with the ``host`` marker the cases also run live.
"""

import struct

import pytest

from kvmpy import syscalls
from tests.reliability import guests
from tests.support import rawvmm

BOUND = 20.0
GP_AT_MOV = ("hlt", guests.HANDLER + 1, (0, 0x7005))         # #GP(0) frame: error code, RIP

# name: (code, the host's outcome, RIP and the two quadwords at RSP)
CASES = {
    "clear-pg": ("b8110000000f22c0", ) + GP_AT_MOV,               # mov eax, 0x11; mov cr0, rax
    "clear-pg-and-pe": ("b8080000000f22c0", ) + GP_AT_MOV,        # mov eax, 8; mov cr0, rax
    # the control: CR0 with PG kept is loaded (then hlt; RSP points at the code page)
    "keep-pg": ("b8110001800f22c0f4", "hlt", 0x7009, (0xC0220F80010011B8, 0xF4)),
}


def run_case(sc, name):
    outcome, rip, frame = guests.run_fixed(sc, "long", bytes.fromhex(CASES[name][0]), frame=16, bound=BOUND)
    return outcome, rip, struct.unpack("<QQ", frame)


@pytest.mark.parametrize("name", CASES)
def test_mov_cr0_in_long_mode(soft_kvm, soft_mmu, name):
    assert run_case(syscalls, name) == CASES[name][1:]


@pytest.mark.host
@pytest.mark.parametrize("name", CASES)
def test_mov_cr0_in_long_mode_on_the_host(name):
    assert run_case(rawvmm.HOST, name) == CASES[name][1:]
