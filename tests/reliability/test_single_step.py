"""RFLAGS.TF: a single-step #DB trap after each instruction that starts with TF set (found by
the guest fuzzer, issue 7: a POPF from MMIO, all ones, sets TF).  kvmpy's processor had no
single-step trap.  The host's answers (AMD EPYC Zen 3, Linux 6.18, kvm_pvm) are recorded
here; with the ``host`` marker they also run live.
"""

import struct

import pytest

from kvmpy import syscalls
from tests.reliability import guests
from tests.support import rawvmm

# pushf; or dword [esp], TF; popf; nop; hlt -- POPF sets TF: the trap comes after the NOP
SET_TF_32 = bytes.fromhex("9c" "810c2400010000" "9d" "90" "f4")
# the host's #DB frame: EIP after the NOP, CS, EFLAGS with TF
HOST_FRAME_32 = (0x700A, 0x08, 0x102)


def run_case(sc):
    outcome, rip, frame = guests.run_fixed(sc, "prot32", SET_TF_32, frame=12)
    return outcome, rip, struct.unpack("<III", frame)


def test_single_step_trap_after_the_instruction(soft_kvm, soft_mmu):
    assert run_case(syscalls) == ("hlt", guests.HANDLER + 1, HOST_FRAME_32)


@pytest.mark.host
def test_single_step_trap_on_the_host():
    assert run_case(rawvmm.HOST) == ("hlt", guests.HANDLER + 1, HOST_FRAME_32)
