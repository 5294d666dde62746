"""The upper half of the 64-bit address space is canonical: a load from it goes through the
page tables, where kvmpy's processor took #GP (found booting kvm-unit-tests: its vmalloc
hands out pages just below 2**64, and every malloc faulted).

The canonical check added 2**47 to the linear address and looked at the bits above 48
without cutting the sum to 64 bits, so every address of the upper half (bits 63..47 set)
counted as non-canonical.

VM entry then checks RIP the same way: bits 63..N identical for N linear-address bits
(SDM 27.3.1.4, N = 48), not bits 63..47.  An instruction that ends at the last byte of the
lower half leaves RIP = 2**47, which enters (the fetch there takes #GP); kvmpy's VMX
refused the entry (found booting kvm-unit-tests: its hypercall test runs VMCALL there).

Each case maps the upper-half addresses through PML4 entries
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


EDGE = 0x7FFFFFFFFFFF                          # the last byte of the lower half
EDGE_PAGE, EDGE_PDPT, EDGE_PD, EDGE_PT = 0x9000, 0xA000, 0xB000, 0xC000
#: EDGE's page mapped at guest-physical EDGE_PAGE (PML4, PDPT, PD and PT index 255, 511...)
EDGE_MAP = [(guests.PML4 + 8 * 255, struct.pack("<Q", EDGE_PDPT | 7)),
            (EDGE_PDPT + 8 * 511, struct.pack("<Q", EDGE_PD | 7)),
            (EDGE_PD + 8 * 511, struct.pack("<Q", EDGE_PT | 7)),
            (EDGE_PT + 8 * 511, struct.pack("<Q", EDGE_PAGE | 7)),
            (EDGE_PAGE + 0xFFF, b"\xee")]                 # out %al, (%dx): an exit


def run_edge(sc):
    """Jump to an OUT at EDGE: after the exit, RIP = 2**47 enters and the fetch faults."""
    code = b"\x48\xb8" + struct.pack("<Q", EDGE) + b"\xff\xe0"       # movabs $EDGE, %rax; jmp *%rax
    outcome, rip, frame = guests.run_fixed(sc, "long", code, EDGE_MAP, frame=16)
    return outcome, rip, struct.unpack("<QQ", frame)          # the #GP's error code, RIP


def test_rip_after_the_lower_half_enters(soft_kvm, soft_mmu):
    assert run_edge(syscalls) == GP + ((0, EDGE + 1),)


@pytest.mark.host
def test_rip_after_the_lower_half_on_the_host():
    assert run_edge(rawvmm.HOST) == GP + ((0, EDGE + 1),)


@pytest.mark.parametrize("name", CASES)
def test_canonical_addresses(soft_kvm, soft_mmu, name):
    assert run_case(syscalls, name) == CASES[name][1]


@pytest.mark.host
def test_canonical_addresses_on_the_host():
    """The host's KVM answers every case the same."""
    outcomes = {name: run_case(rawvmm.HOST, name) for name in CASES}
    assert outcomes == {name: outcome for name, (_, outcome) in CASES.items()}
