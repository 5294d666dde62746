"""LGDT and LIDT in 64-bit mode refuse a non-canonical base with #GP(0) (found by the guest
fuzzer, issue 7: seed 7 guest 11).

The guest's random ``lgdt [rdi]`` loaded a non-canonical GDT base.  kvmpy's processor took
it, and the VMX module's next VM entry refused the state (KVM_EXIT_FAIL_ENTRY, invalid guest
state), where the host raised #GP and the guest ended in a shutdown.  AMD's APM lists the
#GP for a non-canonical base, and KVM's emulator raises it (em_lgdt_lidt).

Each case loads one descriptor (limit, base) from memory and halts: a base that loads halts
after the instruction, a refused one takes #GP to the ``hlt`` handler with error code 0 in
the frame.  The host's answers (AMD EPYC Zen 3, Linux 6.18, kvm_pvm; 48-bit linear addresses)
are recorded; with the ``host`` marker the cases also run live, against the width the host's
CPU and kernel check at (``expected``).
"""

import struct

import pytest

from kvmpy import syscalls
from tests.reliability import guests
from kvmpy.hw.x86defs import canonical
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


def expected(name, address_bits):
    """The outcome on a processor (or KVM) checking bases at ``address_bits``: with LA57 the
    check is at 57 bits whatever CR4.LA57 (Intel's 5-level paging paper; KVM's emulator
    since Linux 6.13, max_host_virt_addr_bits), so a base past 48 bits loads."""
    insn, base, outcome = CASES[name]
    return LOADED if outcome == GP and canonical(base, address_bits) else outcome


def test_la57_bases_load_on_kvmpy(soft_kvm, monkeypatch):
    """kvmpy checks at the width of the features it advertises: 57 bits once it has LA57."""
    from kvmpy.hw import features
    monkeypatch.setattr(features, "IMPLEMENTED", features.IMPLEMENTED | {"la57"})
    assert run_case(syscalls, "lgdt-noncanonical") == expected("lgdt-noncanonical", 57) == LOADED
    assert run_case(syscalls, "lidt-noncanonical") == expected("lidt-noncanonical", 57) == GP


@pytest.mark.host
@pytest.mark.parametrize("name", CASES)
def test_descriptor_table_base_on_the_host(name):
    """The width follows from the host: LA57 in its KVM_GET_SUPPORTED_CPUID (KVM reports it
    when the host kernel runs 5-level paging) and, where the host's KVM emulates LGDT
    (kvm_pvm), a kernel of 6.13 or later; before, the emulator checked the guest's width."""
    from tests.support.hostinfo import kernel_version
    la57 = rawvmm.supported_feature(rawvmm.HOST, 7, 0, "ecx", 16)
    emulated_before_6_13 = rawvmm.host_kvm_module() == "kvm_pvm" and kernel_version() < (6, 13)
    assert run_case(rawvmm.HOST, name) == expected(name, 57 if la57 and not emulated_before_6_13 else 48)
