"""Differential test of the processor's system paths with the guest kvmpy/guests/sysmodes.S.

The guest walks real mode, 16-bit and 32-bit protected mode, ring 3 and long mode, taking
exceptions (#DE, #UD, #GP, #PF; at CPL 3 with a TSS stack switch; in long mode on an IST
stack), SYSENTER/SYSEXIT, SYSCALL with SWAPGS and a compatibility-mode excursion, and checks
each result itself (a failed check ends the run with the step number).  The host's /dev/kvm
is the oracle; its run is committed in tests/data/sysmodes.host.json with the machine and KVM
vendor module it came from (held against live hosts of that module only), refreshed with

    KVMPY_RECORD=1 pytest tests/guests/test_sysmodes.py -k host
"""

import os
import pathlib

import pytest

from tests.support import rawvmm, records
from tests.support.hostkvm import host_kvm_usable
from kvmpy.guests import load_image

RECORDED = pathlib.Path(__file__).resolve().parents[1] / "data" / "sysmodes.host.json"
RECORD = os.environ.get("KVMPY_RECORD") == "1"

STEPS = ("real mode INT/IRET", "16-bit protected mode", "pm32 #DE #UD #GP",
         "ring 3 #GP SYSENTER", "long mode", "lm #UD(IST) #GP #PF", "SYSCALL SWAPGS",
         "compatibility mode", "24 checks ok")
CONSOLE = "".join(f"sysmodes: {step}\r\n" for step in STEPS)
FINAL_REGS = {
    "rax": 0x1111111111111100, "rbx": 0x2222222222222222, "rcx": 0x3333333333333333,
    "rdx": 0xF4, "rsi": 0x5555555555555555, "rdi": 0x6666666666666666,
    "rbp": 0x7777777777777777, "r8": 0x8888888888888888, "r9": 0x9999999999999999,
    "r10": 0xAAAAAAAAAAAAAAAA, "r11": 0xBBBBBBBBBBBBBBBB, "r12": 0xCCCCCCCCCCCCCCCC,
    "r13": 0xDDDDDDDDDDDDDDDD, "r14": 0xEEEEEEEEEEEEEEEE, "r15": 0xFFFFFFFFFFFFFFFF,
}


@pytest.mark.host
def test_host_run():
    result = rawvmm.run_guest(load_image("sysmodes"), rawvmm.HOST)

    assert result["console"] == CONSOLE
    assert result["exit_value"] == 0
    for reg, value in FINAL_REGS.items():
        assert result["regs"][reg] == hex(value), reg
    assert result["sregs"]["efer"] == hex(0x501)        # SCE | LME | LMA
    assert result["sregs"]["tr"]["selector"] == "0x58"

    if RECORD:
        records.write_run(RECORDED, result)
        return
    recorded, origin = records.read(RECORDED)
    if not records.same_kind(origin):
        pytest.skip("recorded under %s; this host's KVM is %s (its run is checked above and is "
                    "test_soft_matches_host's reference)" % (origin["kvm_module"], rawvmm.host_kvm_module()))
    assert result == recorded, "host run differs from tests/data; re-record with KVMPY_RECORD=1 if the guest changed"


def test_soft_matches_host(soft_mmu):
    from kvmpy import syscalls
    if host_kvm_usable():
        reference = rawvmm.run_guest(load_image("sysmodes"), rawvmm.HOST)
    else:
        reference = records.read(RECORDED)[0]

    result = rawvmm.run_guest(load_image("sysmodes"), syscalls)

    rawvmm.assert_same_run(result, reference)
