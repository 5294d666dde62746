"""64-bit accesses to canonical addresses of the upper half (bits 63..47 set) are not #GP
(found by running kvm-unit-tests: its vmalloc hands out pages from 0xffffffffffffe000 down).

kvmpy's processor tested canonicality on the unsigned address plus 2^47, which overflows 64
bits for every upper-half address, so each access there took #GP(0) where the host maps it.
The guest maps PML4 entry 511 like entry 0 (0xffffff8000000000 aliases guest-physical 0) and
loads, stores and stores with a negative displacement there; a non-canonical address still
takes #GP(0). The host's answers are the expected outcomes; with the ``host`` marker the cases
also run live.
"""

import struct

import pytest

from kvmpy import syscalls
from tests.reliability import guests
from tests.support import rawvmm

ALIAS = 0xFFFFFF8000000000          # PML4 entry 511
DATA = 0x7800
HALTED = "halted"
GP = ("hlt", guests.HANDLER + 1)

#: name: (the instruction after RBX = the address, the address, what the host does)
CASES = {
    "load": (b"\x48\x8b\x03", ALIAS + DATA, HALTED),                      # mov (%rbx), %rax
    "store": (b"\x48\x89\x03", ALIAS + DATA, HALTED),                     # mov %rax, (%rbx)
    "store-disp-8": (b"\x48\x89\x43\xf8", ALIAS + DATA + 8, HALTED),      # mov %rax, -8(%rbx)
    "noncanonical": (b"\x48\x8b\x03", 0xFFFF7F8000000000 + DATA, GP),
}


def run_case(sc, name):
    insn, addr, _ = CASES[name]
    code = b"\x48\xbb" + struct.pack("<Q", addr) + insn + b"\xf4"        # movabs $addr, %rbx
    pml4e = struct.pack("<Q", guests.PDPT | 7)
    outcome, rip, _ = guests.run_fixed(sc, "long", code, [(guests.PML4 + 511 * 8, pml4e)])
    if (outcome, rip) == ("hlt", guests.CODE + len(code)):
        return HALTED
    return outcome, rip


@pytest.mark.parametrize("name", CASES)
def test_upper_half_as_on_the_host(soft_kvm, soft_mmu, name):
    assert run_case(syscalls, name) == CASES[name][2]


@pytest.mark.host
@pytest.mark.parametrize("name", CASES)
def test_upper_half_on_the_host(name):
    assert run_case(rawvmm.HOST, name) == CASES[name][2]
