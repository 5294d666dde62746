"""The translation cache stays architecturally invisible.

Self-modifying code: a store into translated code takes effect for the next
instruction fetched, whether the patched instruction is later in the same block
or in a block already translated, run and chained to.  (The silicon oracle maps
its code read-only, so these assert the architectural result.)

Deferred state: translated blocks defer lazy-flag stores past instructions that
cannot observe them; a fault in between must still see the flags of the last
flag-writing instruction, as on the silicon.
"""

import pytest

from kvmpy.testing.snippet import DATA_ADDR, run_snippet
from tests.oracle import asm
from tests.oracle.native import run_native, unavailable_reason

ARITH = 0x8D5       # CF PF AF ZF SF OF


def _run(src, **kw):
    return run_snippet(asm.assemble(src), {}, 2, bytes(4096), code_writable=True, **kw)


def test_patch_later_instruction_in_same_block():
    r = _run("""
        lea rbx, [rip + 1f]
        mov dword ptr [rbx + 1], 42
    1:  mov eax, 1
        add eax, 1
    """)
    assert r.exception is None
    assert r.regs["rax"] == 43


def test_patch_block_already_run_and_chained():
    r = _run("""
        xor edx, edx
        mov ecx, 3
    2:  call 5f
        add edx, eax
        lea rbx, [rip + 5f]
        add dword ptr [rbx + 1], 100
        dec ecx
        jnz 2b
        jmp 6f
    5:  mov eax, 7
        ret
    6:  nop
    """)
    assert r.exception is None
    assert r.regs["rdx"] == 7 + 107 + 207


def test_patch_inside_self_loop():
    r = _run("""
        xor edx, edx
        xor ecx, ecx
        jmp 3f
    3:  mov eax, 1
        add edx, eax
        lea rbx, [rip + 3b]
        mov dword ptr [rbx + 1], 42
        add ecx, 1
        cmp ecx, 3
        jb 3b
    """)
    assert r.exception is None
    assert r.regs["rdx"] == 1 + 42 + 42


FAULT_AFTER_FLAGS = [
    # straight line: CMP's flags are deferred past the load that faults
    """
        mov eax, 5
        cmp eax, 7
        mov ecx, dword ptr [{bad}]
    """,
    # self-loop: SUB's flags at the fault in the third iteration, not ADD's or CMP's
    """
        mov ecx, 1
        mov rsi, {data}
        jmp 1f
    1:  sub ecx, 3
        mov eax, dword ptr [rsi]
        add rsi, 0x800
        cmp ecx, 0x40
        jne 1b
    """,
]


@pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")
@pytest.mark.parametrize("src", FAULT_AFTER_FLAGS)
def test_flags_at_fault_match_silicon(src):
    code = asm.assemble(src.format(data=DATA_ADDR, bad=DATA_ADDR + 0x10000))
    native = run_native(code, {}, 2, bytes(4096))
    soft = run_snippet(code, {}, 2, bytes(4096))
    assert native.exception == soft.exception == 14
    assert soft.rip == native.rip
    assert soft.rflags & ARITH == native.rflags & ARITH
    assert soft.regs == {k: v for k, v in native.regs.items() if k in soft.regs}


def test_writes_next_to_code_do_not_retranslate_it(monkeypatch):
    """Invalidation is by the bytes written, not by the page: a loop storing to data that
    shares its code page (a stack or a buffer next to code, as in the guest fuzzer's seed 1
    guest 168, whose exception frames landed beside its handler) keeps its translation."""
    from kvmpy.hw.translate import codegen
    translated = []
    real_translate = codegen.translate
    monkeypatch.setattr(codegen, "translate", lambda *a, **kw: translated.append(a[1]) or real_translate(*a, **kw))
    r = _run("""
        lea rbx, [rip + 9f]
        mov ecx, 500
    1:  mov dword ptr [rbx], ecx
        add dword ptr [rbx + 4], 2
        dec ecx
        jnz 1b
        mov eax, dword ptr [rbx + 4]
        jmp 8f
        .p2align 6
    9:  .long 0, 0
    8:  nop
    """)
    assert r.exception is None
    assert r.regs["rax"] == 1000
    assert len(translated) < 10
