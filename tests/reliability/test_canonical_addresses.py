"""The upper half of the 64-bit address space is canonical: a load from it goes through the
page tables, where kvmpy's processor took #GP (found booting kvm-unit-tests: its vmalloc
hands out pages just below 2**64, and every malloc faulted).

The canonical check added 2**47 to the linear address and looked at the bits above 48
without cutting the sum to 64 bits, so every address of the upper half (bits 63..47 set)
counted as non-canonical.  Each case maps the upper-half addresses through PML4 entries
that share the low identity map's PDPT, loads 8 bytes with ``movabs`` and halts: a loaded
address halts after the instruction, a refused one takes #GP to the ``hlt`` handler.  The
same cases run on the host with the ``host`` marker.
"""

import struct

import pytest

from kvmpy import syscalls
from tests.reliability import guests
from tests.support import rawvmm

LOADED = ("hlt", guests.CODE + 11)             # movabs (10 bytes), then past the hlt
GP = ("hlt", guests.HANDLER + 1)
# the PML4 entries that alias the low PDPT: 256 (the first of the upper half) and 511
ALIASES = [(guests.PML4 + 8 * index, struct.pack("<Q", guests.PDPT | 7)) for index in (256, 511)]

# name: (linear address, outcome)
CASES = {
    "upper-half-first": (0xFFFF800000000000 + guests.CODE, LOADED),
    "upper-half-top-pml4": (0xFFFFFF8000000000 + guests.CODE, LOADED),
    "lower-half": (guests.CODE, LOADED),
    "non-canonical-low": (0x0000800000000000 + guests.CODE, GP),
    "non-canonical-high": (0xFFFF000000000000 + guests.CODE, GP),
}


def run_case(sc, name):
    addr, _ = CASES[name]
    code = b"\x48\xa1" + struct.pack("<Q", addr) + b"\xf4"      # movabs addr, %rax; hlt
    outcome, rip, _ = guests.run_fixed(sc, "long", code, ALIASES)
    return outcome, rip


@pytest.mark.parametrize("name", CASES)
def test_canonical_addresses(soft_kvm, soft_mmu, name):
    assert run_case(syscalls, name) == CASES[name][1]


@pytest.mark.host
def test_canonical_addresses_on_the_host():
    """The host's KVM answers every case the same."""
    outcomes = {name: run_case(rawvmm.HOST, name) for name in CASES}
    assert outcomes == {name: outcome for name, (_, outcome) in CASES.items()}
