"""Translator optimisations stay architecturally invisible.

Blocks go on across direct JMP/CALL and into a second code page (superblocks), keep
registers in Python locals, and write them back at exits and before helpers that use
the register file.  A fault in such a block must leave the registers as the silicon
does, and a block whose second page is remapped must not run the old code.
"""

import mmap

import pytest

from kvmpy.hw import memory as hm
from kvmpy.hw.cpu import Processor
from kvmpy.testing.snippet import CODE_ADDR, DATA_ADDR, STACK_TOP, run_snippet
from kvmpy.hw.state import Segment
from kvmpy.hw.x86defs import CR0_PE, CR0_PG, CS, EFER_LMA, EFER_LME
from kvmpy.hw.virt.vmx import EXIT_REASON_HLT, VmxExitFormat
from tests.oracle import asm
from tests.oracle.native import run_native, unavailable_reason

BAD = DATA_ADDR + 0x10000           # unmapped: loads from it raise #PF


def _run(src):
    return run_snippet(asm.assemble(src.format(bad=BAD)), {}, 2, bytes(4096))


def test_fault_after_followed_jump_reports_the_faulting_instruction():
    before_fault = """
        mov eax, 1
        jmp 1f
        ud2
    1:  inc eax
        call 2f
    2:  add eax, 4
    """
    r = _run(before_fault + "    mov ecx, dword ptr [{bad}]\n")
    assert r.exception == 14
    assert r.regs["rax"] == 6
    assert r.regs["rsp"] == STACK_TOP - 8
    assert r.rip == CODE_ADDR + len(asm.assemble(before_fault))


BARRIER_THEN_FAULT = """
    mov ebp, 7
    inc ecx
    enter 16, 0
    add ebx, ebp
    mov eax, dword ptr [{bad}]
"""


def test_registers_at_fault_after_a_helper_that_writes_registers():
    r = _run(BARRIER_THEN_FAULT)
    assert r.exception == 14
    assert r.regs["rcx"] == 1
    assert r.regs["rbp"] == STACK_TOP - 8
    assert r.regs["rsp"] == STACK_TOP - 8 - 16
    assert r.regs["rbx"] == STACK_TOP - 8


@pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")
def test_registers_at_fault_match_silicon():
    code = asm.assemble(BARRIER_THEN_FAULT.format(bad=BAD))
    native = run_native(code, {}, 2, bytes(4096))
    soft = run_snippet(code, {}, 2, bytes(4096))
    assert native.exception == soft.exception == 14
    assert soft.rip == native.rip
    assert soft.regs == {k: v for k, v in native.regs.items() if k in soft.regs}


def _paged_cpu(mem):
    """A processor in 64-bit mode with EPT and guest page tables identity-mapping ``mem``'s
    first 2 MiB (tables at 0x1000-0x4fff, PT at 0x4000), all pages writable."""
    host = hm.address_of(mem)
    cpu = Processor(VmxExitFormat())
    for gfn in range(len(mem) // 4096):
        cpu.ept[gfn] = host + gfn * 4096
    for table, nxt in ((0x1000, 0x2000), (0x2000, 0x3000), (0x3000, 0x4000)):
        mem[table:table + 8] = (nxt | 3).to_bytes(8, "little")
    for page in range(16):
        mem[0x4000 + page * 8:0x4008 + page * 8] = (page << 12 | 3).to_bytes(8, "little")
    cpu.cr3 = 0x1000
    cpu.cr4 |= 0x20
    cpu.efer = EFER_LME | EFER_LMA
    cpu.cr0 |= CR0_PE | CR0_PG
    cpu.seg[CS] = Segment(selector=8, base=0, limit=0xFFFFFFFF, type=0xB, l=1, db=0, g=1)
    cpu.refresh()
    return cpu


def _run_two_page_block(between):
    """Call the block at 0x5ffb (``mov eax, 1`` running into ``add edx, eax; ret`` at page
    0x6000) twice, with the guest code ``between`` in between; frame 0x7000 holds a variant
    adding twice.  Returns EDX after HLT: 2 if both calls ran the first frame's code."""
    mem = mmap.mmap(-1, 0x10000)
    driver = asm.assemble("""
        mov ebx, 0x5ffb
        call rbx
        %s
        call rbx
        hlt
    """ % between)
    mem[0x5000:0x5000 + len(driver)] = driver
    mem[0x5ffb:0x6000] = asm.assemble("mov eax, 1")
    mem[0x6000:0x6003] = asm.assemble("add edx, eax\nret")
    mem[0x7000:0x7005] = asm.assemble("add edx, eax\nadd edx, eax\nret")
    cpu = _paged_cpu(mem)
    cpu.regs[4] = 0x9000
    cpu.rip = 0x5000
    x = cpu.run(1000)
    assert x.reason == EXIT_REASON_HLT
    return cpu.regs[2]


def test_block_spanning_two_pages_sees_the_second_page_remapped():
    """The block at 0x5ffb runs into page 0x6000; the guest then points that page at
    another frame (PTE + INVLPG) and calls the block again, in the same VM entry."""
    assert _run_two_page_block("mov dword ptr [0x4030], 0x7003\ninvlpg [0x6000]") == 3


@pytest.mark.parametrize("remap", [False, True], ids=["same-frame", "remapped"])
def test_block_spanning_two_pages_after_a_tlb_flush(monkeypatch, remap):
    """A CR3 write empties the TLB: the block at 0x5ffb, which runs into page 0x6000, is
    kept while page 0x6000 still maps the same frame (translated once), and runs the new
    code when the PTE changed before the flush."""
    from kvmpy.hw.translate import codegen
    translated = []
    real = codegen.translate
    monkeypatch.setattr(codegen, "translate", lambda decode_at, rip, *a, **k:
                        translated.append(rip) or real(decode_at, rip, *a, **k))
    edit = "mov dword ptr [0x4030], 0x7003\n" if remap else ""
    assert _run_two_page_block(edit + "mov rax, cr3\nmov cr3, rax") == (3 if remap else 2)
    assert translated.count(0x5ffb) == (2 if remap else 1)


def test_processors_share_compiled_code_not_state():
    """Two processors translating the same bytes at the same address re-use one compiled
    code object (``codegen`` keeps them by source), each bound to its own namespace: each
    computes from its own registers and memory."""
    cpus = []
    for rax in (5, 40):
        mem = mmap.mmap(-1, 0x10000)
        code = asm.assemble("add eax, dword ptr [0x8000]\nmov dword ptr [0x8004], eax\nhlt")
        mem[0x5000:0x5000 + len(code)] = code
        mem[0x8000:0x8004] = (rax * 2).to_bytes(4, "little")
        cpu = _paged_cpu(mem)
        cpu.regs[0], cpu.rip = rax, 0x5000
        assert cpu.run(100).reason == EXIT_REASON_HLT
        assert cpu.regs[0] == rax * 3
        assert int.from_bytes(mem[0x8004:0x8008], "little") == rax * 3
        cpus.append(cpu)
    a, b = (c.code[0x5000].fn for c in cpus)
    assert a.__code__ is b.__code__ and a.__globals__ is not b.__globals__
