"""LGDT and LIDT in 64-bit mode refuse a non-canonical base with #GP(0) (found by the guest
fuzzer, issue 7: seed 7 guest 11).

The guest's random ``lgdt [rdi]`` loaded a non-canonical GDT base.  kvmpy's processor took
it, and the VMX module's next VM entry refused the state (KVM_EXIT_FAIL_ENTRY, invalid guest
state), where the host raised #GP and the guest ended in a shutdown.  AMD's APM lists the
#GP for a non-canonical base, and KVM's emulator raises it (em_lgdt_lidt).

Each case loads one descriptor (limit, base) from memory and halts: a base that loads halts
after the instruction, a refused one takes #GP to the ``hlt`` handler with error code 0 in
the frame.  The host's answers (AMD EPYC Zen 3, Linux 6.18, kvm_pvm) are recorded; with the
``host`` marker the cases also run live.
"""

import struct

import pytest

from kvmpy import syscalls
from tests.reliability import guests
from tests.support import rawvmm

DESCRIPTOR = guests.CODE + 0x100
LOADED = ("hlt", guests.CODE + 8)
GP = ("hlt", guests.HANDLER + 1)

# name: (instruction, base, the host's outcome and RIP)
CASES = {
    "lgdt-canonical-high": ("lgdt", 0xFFFF800000001000, LOADED),
    "lgdt-canonical-low": ("lgdt", 0x00007FFFFFFFF000, LOADED),
    "lgdt-noncanonical": ("lgdt", 0x0000800000000000, GP),
    "lidt-noncanonical": ("lidt", 0x8000000000000000, GP),
}
MODRM = {"lgdt": 0x15, "lidt": 0x1D}          # /2 or /3 with a RIP-relative operand


def run_case(sc, name):
    insn, base, _ = CASES[name]
    code = bytes([0x0F, 0x01, MODRM[insn]]) + struct.pack("<i", DESCRIPTOR - (guests.CODE + 7)) + b"\xf4"
    outcome, rip, frame = guests.run_fixed(sc, "long", code, [(DESCRIPTOR, struct.pack("<HQ", 0xFFF, base))],
                                           frame=8)
    result = (outcome, rip)
    if result == GP:
        assert struct.unpack("<Q", frame)[0] == 0       # the error code
    return result


@pytest.mark.parametrize("name", CASES)
def test_descriptor_table_base_as_on_the_host(soft_kvm, soft_mmu, name):
    assert run_case(syscalls, name) == CASES[name][2]


@pytest.mark.host
@pytest.mark.parametrize("name", CASES)
def test_descriptor_table_base_on_the_host(name):
    assert run_case(rawvmm.HOST, name) == CASES[name][2]
