"""The silicon oracle's own tests: the trampoline, assembler and comparison give known
results on the host's processor (no kvmpy involved)."""

import signal

import pytest

from tests.oracle import asm, diff, flagspec
from tests.oracle.native import (AF, CF, CODE_ADDR, DATA_ADDR, DF, OF, PF, REG_NAMES, SF,
                                 STACK_TOP, USER_FLAGS, ZF, NativeResult, run_native,
                                 unavailable_reason)

pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=unavailable_reason() or "")

M64 = (1 << 64) - 1


def run(source, regs=None, rflags=0, mem=None, **kw):
    return run_native(asm.assemble(source), regs or {}, rflags, mem, **kw)


def test_add_with_carry_out():
    r = run("add rax, rbx", {"rax": M64, "rbx": 2})
    assert r.regs["rax"] == 1
    assert r.rflags == CF | AF
    assert r.exception is None and r.rip == CODE_ADDR + 3


def test_carry_in_is_loaded():
    assert run("adc rax, 0", {"rax": 41}, CF).regs["rax"] == 42
    assert run("adc rax, 0", {"rax": 41}, 0).regs["rax"] == 41


def test_all_registers_round_trip():
    regs = {name: (0x1111111111111111 * (i + 1)) & M64 for i, name in enumerate(REG_NAMES)}
    regs["rsp"] = STACK_TOP - 0x40
    r = run_native(b"", regs, ZF | SF | OF | PF)
    assert r.regs == regs
    assert r.rflags == ZF | SF | OF | PF


def test_clobbering_every_register_leaves_the_host_intact():
    src = "; ".join(f"mov {n}, -1" for n in REG_NAMES if n != "rsp") + "; mov rsp, 1"
    r = run(src)
    assert all(r.regs[n] == M64 for n in REG_NAMES if n != "rsp") and r.regs["rsp"] == 1
    assert sum(range(1000)) == 499500  # Python (and its callee-saved registers) still fine


@pytest.mark.parametrize("flags", [0, CF, PF | AF, ZF | SF, OF, DF, USER_FLAGS])
def test_flags_visible_through_pushf(flags):
    r = run("pushfq; pop rax", rflags=flags)
    assert r.regs["rax"] & USER_FLAGS == flags
    assert r.rflags == flags


def test_direction_flag_is_reported_and_not_carried_over():
    assert run("std").rflags == DF
    assert run("nop").rflags == 0


def test_memory_read_and_write():
    mem = bytearray(0x2000)
    mem[0x1008:0x1010] = (0x0123456789ABCDEF).to_bytes(8, "little")
    r = run("mov rbx, [rdi + 0x1008]; mov qword ptr [0x10000010], rbx; not rbx",
            {"rdi": DATA_ADDR}, mem=bytes(mem))
    assert len(r.mem) == 0x2000
    assert r.mem[0x10:0x18] == mem[0x1008:0x1010]
    assert r.regs["rbx"] == ~0x0123456789ABCDEF & M64


def test_data_area_must_be_whole_pages():
    with pytest.raises(ValueError):
        run_native(b"\x90", {}, 0, bytes(100))


def test_stack_push_call_ret():
    r = run("push 7; call 1f; 1: pop rax; pop rbx; call 2f; jmp 3f; 2: mov ecx, 5; ret; 3: nop")
    assert r.regs["rax"] == CODE_ADDR + 7  # push imm8 is 2 bytes, call rel32 5
    assert r.regs["rbx"] == 7 and r.regs["rcx"] == 5
    assert r.regs["rsp"] == STACK_TOP


@pytest.mark.parametrize("isolate", [False, True])
def test_divide_error_reports_vector_and_state_at_the_fault(isolate):
    r = run("mov ecx, 3; xor edx, edx; div rbx; mov ecx, 9", {"rax": 5}, isolate=isolate)
    assert (r.exception, r.signal) == (0, signal.SIGFPE)
    assert r.rip == CODE_ADDR + 7  # the faulting DIV, after 5 + 2 bytes
    assert r.regs["rcx"] == 3 and r.regs["rax"] == 5


@pytest.mark.parametrize("source, vector", [
    ("ud2", 6),                       # #UD
    ("hlt", 13),                      # privileged: #GP
    ("mov rax, [8]", 14),             # unmapped: #PF
    ("int3", 3),                      # #BP
])
def test_faults_are_caught(source, vector):
    assert run(source).exception == vector
    assert run("nop").exception is None  # and the next run is clean


def test_runaway_snippet_is_killed_when_isolated():
    with pytest.raises(TimeoutError):
        run("1: jmp 1b", isolate=True, timeout=0.2)


def test_assembler_batches_caches_and_rejects():
    codes = asm.assemble_many(["add rax, rbx", "lea rax, [rip + 1f]; 1: nop", "add rax, rbx"])
    assert codes[0] == codes[2] == bytes.fromhex("4801d8")
    assert codes[1] == bytes.fromhex("488d050000000090")
    with pytest.raises(asm.AsmError, match="relocation"):
        asm.assemble("mov rax, [elsewhere]")
    with pytest.raises(asm.AsmError, match="bogus"):
        asm.assemble("bogus rax")


def test_rip_relative_uses_the_fixed_code_address():
    assert run("lea rax, [rip + 1f]; 1: nop").regs["rax"] == CODE_ADDR + 7


def test_undefined_flags_table():
    assert flagspec.undefined_flags("xor") == AF
    assert flagspec.undefined_flags("imul", 4) == SF | ZF | AF | PF
    assert flagspec.undefined_flags("shl", 4, count=32) == 0  # masked to 0: untouched
    assert flagspec.undefined_flags("shl", 4, count=1) == AF
    assert flagspec.undefined_flags("shr", 1, count=9) == AF | OF | CF
    assert flagspec.undefined_flags("rcl", 8, count=65) == 0
    assert flagspec.undefined_flags("ror", 2, count=3) == OF
    with pytest.raises(ValueError):
        flagspec.undefined_flags("shld", 2, count=17)


def test_compare_masks_only_what_is_undefined():
    base = run("and eax, ebx", {"rax": 6, "rbx": 3})
    same = NativeResult(dict(base.regs), base.rflags, base.mem, base.rip)
    assert diff.compare(base, same) == []
    same.rflags ^= AF
    assert diff.compare(base, same, undefined_flags=AF) == []
    assert "AF" in diff.compare(base, same)[0]
    same.regs["rdx"] ^= 1
    same.mem = b"\x01" + base.mem[1:]
    got = diff.compare(base, same, undefined_flags=AF)
    assert got[0].startswith("rdx") and "data+0x0" in got[1]
    assert diff.compare(base, same, AF, undefined_regs=("rdx",))[0].startswith("memory")


def test_run_case_against_the_silicon_itself():
    """The harness with the oracle on both sides: no differences, and a broken
    'processor' is caught."""
    case = diff.Case("sub ecx, edx; setc al", {"rcx": 1, "rdx": 2})
    code = asm.assemble(case.asm)
    assert diff.run_case(case, code, run_native) == []

    def off_by_one(code, regs, rflags, mem):
        r = run_native(code, regs, rflags, mem)
        r.regs["rcx"] += 1
        return r
    (problem,) = diff.run_case(case, code, off_by_one)
    assert problem.startswith("[sub ecx, edx; setc al]") and "rcx" in problem
