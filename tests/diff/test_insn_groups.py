"""Shifts, bit instructions, string instructions and exchanges against the silicon.

These cases complement ``tests/oracle/cases.py`` (which covers the plain forms with edge
values) with what is special to these groups: REP loops longer than one execution's budget
(restart at the same instruction), the page-run fast path and its overlap fallback,
backwards strings, 32-bit address size, faults in the middle of a REP, bit offsets far
outside the operand, CMPXCHG16B alignment, the 32-bit CMOV zero-extension and the
encodings that are NOP, PAUSE or #UD.  The differential tests need both the native oracle
and ``kvmpy.testing.snippet``; the last two tests only need the translator.
"""

import itertools

import pytest

from kvmpy.hw.translate import codegen
from kvmpy.hw.translate import decoder
from kvmpy.hw.state import CPUState
from tests.oracle import asm, diff
from tests.oracle.cases import CPU
from tests.oracle.diff import Case
from tests.oracle.flagspec import ARITH, undefined_flags
from tests.oracle.native import AF, CF, DATA_ADDR, DF, OF, PF, SF, ZF, run_native
from tests.oracle.operands import in_reg, mask, pattern, reg, sign

MAX_REPORTED = 20
PAGES = 4
RAMP = bytes(range(256)) * 16 * PAGES          # a recognisable data area of PAGES pages


def _rep_cases():
    cases = []
    top = DATA_ADDR + len(RAMP)
    # Longer than one execution's budget, forwards (page runs) and backwards (elements).
    for op, size, df in itertools.product(("movs", "stos"), (1, 4, 8), (0, DF)):
        if df:
            src, dst = DATA_ADDR + 0x1FFF - (size - 1), top - 0x33 - size
        else:
            src, dst = DATA_ADDR + 1, DATA_ADDR + 0x1803
        regs = {"rsi": src, "rdi": dst, "rcx": 0x1800 // size, "rax": pattern(8, 5)}
        cases.append(Case(f"rep {op}{'bwdq'[size.bit_length() - 1]}", regs, df, RAMP))
    # Overlapping forward copies replicate data element by element (no slice copy).
    for gap in (1, 3, 4, 0x100):
        cases.append(Case("rep movsb", {"rsi": DATA_ADDR + 0x10, "rdi": DATA_ADDR + 0x10 + gap,
                                        "rcx": 0x1800}, 0, RAMP))
        cases.append(Case("rep movsd", {"rsi": DATA_ADDR + 0x10 + gap, "rdi": DATA_ADDR + 0x10,
                                        "rcx": 0x300}, 0, RAMP))
    # Scans and compares that stop on a match or a difference after thousands of elements.
    mem = bytearray(RAMP)
    mem[0x1000:0x3000] = mem[0:0x2000]
    mem[0x2F00] ^= 0x40
    cases.append(Case("repe cmpsb", {"rsi": DATA_ADDR, "rdi": DATA_ADDR + 0x1000, "rcx": 0x2800},
                      0, bytes(mem)))
    cases.append(Case("repe cmpsq", {"rsi": DATA_ADDR, "rdi": DATA_ADDR + 0x1000, "rcx": 0x400},
                      ARITH, bytes(mem)))
    zeros = bytearray([0xFF]) * 0x4000
    zeros[0x3456] = 0
    cases.append(Case("repne scasb", {"rdi": DATA_ADDR, "rcx": (1 << 64) - 1, "rax": 0},
                      0, bytes(zeros)))
    cases.append(Case("repe scasw", {"rdi": DATA_ADDR + 2, "rcx": 0x2000, "rax": 0xFFFF},
                      0, bytes(zeros)))
    cases.append(Case("rep lodsd", {"rsi": DATA_ADDR + 0x20, "rcx": 0xF00}, 0, RAMP))
    # 32-bit address size: ESI/EDI/ECX only, written back zero-extended.
    high = 0xABCD_0000_0000_0000
    for text in (".byte 0x67, 0xf3, 0xa4", ".byte 0x67, 0xf3, 0x48, 0xab", ".byte 0x67, 0xa7"):
        cases.append(Case(text, {"rsi": high | DATA_ADDR + 0x40, "rdi": high | DATA_ADDR + 0x100,
                                 "rcx": high | 0x30, "rax": pattern(8, 2)}, 0, RAMP))
    return cases


def _rep_fault_cases():
    # Copies that run off the end of the data area: the fault leaves rcx/rsi/rdi after the
    # last complete element, and the stores done so far.
    top = DATA_ADDR + len(RAMP)
    return [Case("rep movsb", {"rsi": DATA_ADDR, "rdi": top - 0x1234, "rcx": 0x2000}, 0, RAMP),
            Case("rep stosq", {"rdi": top - 0x803, "rcx": 0x200, "rax": 7}, 0, RAMP),
            Case("rep movsw", {"rsi": top - 0x11, "rdi": DATA_ADDR, "rcx": 0x20}, 0, RAMP)]


def _shift_cases():
    cases = []
    for op, size in itertools.product(("rol", "ror", "rcl", "rcr", "shl", "shr", "sar"), (1, 2, 4, 8)):
        n = 8 * size
        for count, flags in itertools.product((0x40, 0x41, n + 1, 9, 17, 0xFF), (0, ARITH)):
            und = undefined_flags(op, size, count)
            cases.append(Case(f"{op} {reg('rbx', size)}, cl", {"rbx": in_reg(sign(size) | 5, size),
                                                               "rcx": 0xF00 | count}, flags,
                              undefined_flags=und))
        und = undefined_flags(op, size, 0)
        cases.append(Case(f"{op} {['byte', 'word', 'dword', 'qword'][size.bit_length() - 1]} ptr "
                          f"[rbx + 8], 0", {"rbx": DATA_ADDR}, ARITH, RAMP[:0x1000], und))
    for modrm in (0xF0, 0xF3):      # /6, the undocumented alias of SHL
        cases.append(Case(f".byte 0xd1, {modrm:#x}; .byte 0xc0, {modrm:#x}, 3", {"rax": 0xC3, "rbx": 0x8001},
                          0, undefined_flags=undefined_flags("shl", 1, 3)))
    for op, count in itertools.product(("shl", "rcr", "ror", "sar"), (1, 3, 0)):
        cases.append(Case(f"{op} ah, {count}", {"rax": 0x8193}, CF, undefined_flags=undefined_flags(op, 1, count)))
    for op, count in itertools.product(("shld", "shrd"), (0, 1, 13, 63, 64)):
        cases.append(Case(f"{op} qword ptr [rbx + 8], rdx, cl", {"rbx": DATA_ADDR, "rdx": pattern(8, 3),
                                                                  "rcx": count}, ARITH, RAMP[:0x1000],
                          undefined_flags(op, 8, count)))
    return cases


def _bits_cases():
    cases = []
    cc = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"]
    for i, c in enumerate(cc):
        for flags in (0, ZF | CF, SF | OF, SF | PF, ARITH):
            regs = {"rax": (1 << 64) - 1, "rdx": pattern(8, i), "rbx": DATA_ADDR}
            cases.append(Case(f"cmov{c} eax, edx", regs, flags))
            cases.append(Case(f"cmov{c} ax, word ptr [rbx + 6]", regs, flags, RAMP[:0x1000]))
            cases.append(Case(f"set{c} byte ptr [rbx + 3]; set{c} ah; set{c} sil", regs, flags,
                              RAMP[:0x1000]))
    bt = undefined_flags("bt")
    for op, off in itertools.product(("bt", "bts", "btr", "btc"), (-0x8001, -17, 0x7FFF, 0x3A5F)):
        regs = {"rbx": DATA_ADDR + 0x2000, "rcx": off & mask(8)}
        for size in (2, 4, 8):
            cases.append(Case(f"{op} {['word', 'dword', 'qword'][size.bit_length() - 2]} ptr [rbx], "
                              f"{reg('rcx', size)}", regs, ARITH, RAMP, bt))
        cases.append(Case(f"{op} dword ptr [rbx], 0x4d", regs, 0, RAMP, bt))
    for v in (0x0123456789ABCDEF, 0x80, 0):
        cases.append(Case(".byte 0x66, 0x0f, 0xcb; .byte 0x41, 0x0f, 0xc9",
                          {"rbx": v, "r9": v ^ 0x55}))
        cases.append(Case("xlatb; xlatb", {"rbx": DATA_ADDR + 0x300, "rax": v | 0x7F}, 0, RAMP[:0x1000]))
    return cases


def _tsc_aux_cases():
    """RDTSCP and RDPID: what the silicon's answer shares with kvmpy's whatever the TSC and
    TSC_AUX hold (the host keeps its CPU number there): RDTSCP zero-extends EAX, EDX and ECX
    (R8-R10 = their upper halves) and leaves the flags; RDPID reads the TSC_AUX RDTSCP read."""
    ones = (1 << 64) - 1
    zero = "mov eax, 0; mov edx, 0; mov ecx, 0"
    cases = [Case("rdtscp; mov r8, rax; shr r8, 32; mov r9, rdx; shr r9, 32; mov r10, rcx; shr r10, 32; "
                  + zero, {"rax": ones, "rdx": ones, "rcx": ones}, flags) for flags in (0, CF | ZF | SF)]
    if "rdpid" in CPU:
        cases.append(Case("rdtscp; mov r11, rcx; rdpid rax; sub rax, r11; mov r11d, 0; mov edx, 0; mov ecx, 0",
                          {"rax": ones, "r11": ones}))
    return cases


def _atomic_cases():
    cases = []
    noise = 0xFEDC_BA98_7654_3210
    for text in ("nop", "pause", "xchg r8, rax", "xchg eax, r9d", "xchg ax, r10w", ".byte 0x87, 0xc0",
                 "xadd ecx, ecx", "xadd qword ptr [rbx], rcx; xadd byte ptr [rbx + 9], ch"):
        cases.append(Case(text, {"rax": noise, "rcx": noise ^ 0x11, "r8": 5, "r9": noise >> 4,
                                 "r10": 0x1234, "rbx": DATA_ADDR}, ARITH, RAMP[:0x1000]))
    for size, equal in itertools.product((1, 2, 4, 8), (True, False)):
        d = pattern(size, 9)
        regs = {"rax": in_reg(d if equal else d ^ 1, size), "rsi": in_reg(d, size),
                "rdi": in_reg(pattern(size, 4), size)}
        cases.append(Case(f"cmpxchg {reg('rsi', size)}, {reg('rdi', size)}", regs, 0))
        cases.append(Case(f"cmpxchg {reg('rax', size)}, {reg('rdi', size)}", regs, ARITH))
    for text, off in (("cmpxchg8b qword ptr [rbx + 0x7fd]", 0x7FD), ("cmpxchg16b xmmword ptr [rbx + 0x30]", 0x30)):
        size = 8 if "16b" in text else 4
        for equal in (True, False):
            lo = int.from_bytes(RAMP[off:off + size], "little")
            hi = int.from_bytes(RAMP[off + size:off + 2 * size], "little")
            regs = {"rax": in_reg(lo if equal else lo ^ 1, size), "rdx": in_reg(hi, size), "rbx": DATA_ADDR,
                    "rcx": noise, "rsi": noise >> 8}
            cases.append(Case(text.replace("rbx", "rdi"), {**regs, "rdi": DATA_ADDR, "rbx": noise >> 8},
                              0, RAMP[:0x1000]))
    return cases


def _ud_cases():
    texts = [".byte 0x27", ".byte 0x2f", ".byte 0x37", ".byte 0x3f", ".byte 0xd4, 10", ".byte 0xd5, 10", ".byte 0xd6",
             ".byte 0x0f, 0xb8, 0xc0", ".byte 0x0f, 0xba, 0xc0, 5", ".byte 0x0f, 0xc7, 0xc8",
             ".byte 0x0f, 0xc7, 0x03"]
    cases = [Case(t, {"rbx": DATA_ADDR}) for t in texts]
    cases.append(Case("cmpxchg16b xmmword ptr [rbx + 8]", {"rbx": DATA_ADDR}))    # #GP: misaligned
    return cases


GROUPS = {"rep": _rep_cases, "shift": _shift_cases, "bits": _bits_cases, "atomic": _atomic_cases,
          "tsc-aux": _tsc_aux_cases}
FAULTING = {"rep-fault": _rep_fault_cases, "ud-gp": _ud_cases}


@pytest.fixture(scope="module")
def cases():
    made = {name: make() for name, make in {**GROUPS, **FAULTING}.items()}
    asm.assemble_many({c.asm for group in made.values() for c in group})
    return made


@pytest.mark.parametrize("name", sorted(GROUPS) + sorted(FAULTING))
def test_group_matches_silicon(name, cases, run_snippet):
    problems = []
    for case in cases[name]:
        code = asm.assemble(case.asm)
        if name in FAULTING:
            assert run_native(code, case.regs, case.rflags, case.mem).exception is not None, case.describe()
        problems += diff.run_case(case, code, run_snippet)
    shown = "\n".join(problems[:MAX_REPORTED])
    assert not problems, f"{len(problems)} differences from the silicon:\n{shown}"


def test_long_rep_yields_to_the_processor(run_snippet):
    """A REP that cannot finish within the instruction budget comes back (at the REP) instead
    of running to completion inside one KVM_RUN."""
    code = asm.assemble("rep movsb")
    regs = {"rsi": DATA_ADDR + 0x3FFF, "rdi": DATA_ADDR + 0x2FFF, "rcx": 0x3000}
    with pytest.raises(RuntimeError, match="VM exit"):   # the preemption exit
        run_snippet(code, regs, DF, RAMP, budget=2)
    done = run_snippet(code, regs, DF, RAMP, budget=4)
    assert done.regs["rcx"] == 0 and done.exception is None


# --- translator-only checks ------------------------------------------------------------------
def _run_legacy(code: bytes, regs: dict, rflags: int) -> CPUState:
    """Translate and run register-only 32-bit protected-mode code on a bare namespace."""
    class Fault(Exception):
        pass

    cpu = CPUState()
    cpu.regs[:len(regs)] = list(regs.values())
    cpu.set_rflags(rflags)

    def setfl(m, bits):
        cpu.set_rflags((cpu.get_rflags() & ~m) | (bits & m))

    def fault(vector, error_code=None):
        raise Fault(vector)

    ns = {"cpu": cpu, "R": cpu.regs, "setfl": setfl, "raise_fault": fault, "raise_ud": lambda: fault(6),
          "cf_of": lambda: cpu.get_rflags() & CF}
    mode = codegen.Mode(4, 4, False, 0, True, False)
    blk = codegen.translate(lambda ip: decoder.decode(lambda i: code[ip + i], 4, ip), 0, 0, mode, ns,
                            max_insns=len(code))
    try:
        blk.fn()
    except Fault as f:
        cpu.fault = f.args[0]
    return cpu


SZP = SF | ZF | PF


@pytest.mark.parametrize("code, ax, flags, want_ax, want_flags, defined", [
    (b"\x27", 0xAE, 0, 0x14, CF | AF | PF, CF | AF | SZP),     # 0x79 + 0x35 = 0xAE -> DAA -> 0x14
    (b"\x27", 0x12, AF, 0x18, AF | PF, CF | AF | SZP),
    (b"\x2f", 0xEE, CF | AF, 0x88, CF | AF | SF | PF, CF | AF | SZP),   # 0x35 - 0x47 -> DAS -> 0x88
    (b"\x37", 0x0011, AF, 0x0107, CF | AF, CF | AF),              # 9 + 8 -> AAA -> unpacked 17
    (b"\x3f", 0x02FF, 0, 0x0109, CF | AF, CF | AF),              # AAS borrows from AH
    (b"\x3f", 0x0205, 0, 0x0205, 0, CF | AF),
    (b"\xd4\x0a", 0x003F, 0, 0x0603, PF, SZP),                   # AAM: 63 -> 6, 3
    (b"\xd5\x0a", 0x0603, 0, 0x003F, PF, SZP),                   # AAD: 6, 3 -> 63
])
def test_bcd_adjustments_in_32bit_mode(code, ax, flags, want_ax, want_flags, defined):
    cpu = _run_legacy(code, {"eax": ax}, flags)
    assert cpu.regs[0] & 0xFFFF == want_ax
    assert cpu.get_rflags() & defined == want_flags


@pytest.mark.parametrize("cf, want_al", [(0, 0x00), (CF, 0xFF)])
def test_salc_in_32bit_mode(cf, want_al):
    """SALC sets AL from CF and leaves the other bytes and every flag alone (in 64-bit mode
    it is #UD: the silicon case in ud-gp)."""
    flags = cf | ZF | AF
    cpu = _run_legacy(b"\xd6", {"eax": 0x12345678}, flags)
    assert cpu.regs[0] == 0x12345600 | want_al
    assert cpu.get_rflags() & (CF | PF | AF | ZF | SF | OF) == flags


def test_aam_zero_divides():
    assert _run_legacy(b"\xd4\x00", {"eax": 5}, 0).fault == 0


MY_OPCODES = ([0xC0, 0xC1, 0xD0, 0xD1, 0xD2, 0xD3, 0x86, 0x87, 0x98, 0x99, 0x9E, 0x9F, 0xD7, 0xF5, 0xF8,
               0xF9, 0xFC, 0xFD, 0x27, 0x2F, 0x37, 0x3F, 0xD4, 0xD5, 0xD6] + list(range(0x90, 0x98))
              + list(range(0xA4, 0xA8)) + list(range(0xAA, 0xB0)))
MY_0F = ([0xA3, 0xA4, 0xA5, 0xAB, 0xAC, 0xAD, 0xB3, 0xBB, 0xBA, 0xBC, 0xBD, 0xB8, 0xC0, 0xC1, 0xB0, 0xB1,
          0xC7] + list(range(0xC8, 0xD0)) + list(range(0x40, 0x50)) + list(range(0x90, 0xA0)))


@pytest.mark.parametrize("code_size", [2, 4, 8])
def test_every_form_translates(code_size):
    """Every opcode of these groups, with each prefix and ModRM kind, in every code size and
    for the emulator, becomes valid Python."""
    ns = {}
    prefixes = (b"", b"\x66", b"\x67", b"\xf3", b"\xf2", b"\x26", b"\x48" if code_size == 8 else b"")
    opcodes = [bytes([o]) for o in MY_OPCODES] + [b"\x0f" + bytes([o]) for o in MY_0F]
    for emulating, prefix, modrm, opcode in itertools.product(
            (False, True), prefixes, (b"\xc1", b"\x4c\x4b", b"\x0c\x24"), opcodes):
        code = prefix + opcode + modrm + b"\x01\x02\x03\x04\x05\x06\x07\x08"
        mode = codegen.Mode(code_size, code_size, code_size == 8, 0, True, False)
        blk = codegen.translate(lambda ip: decoder.decode(lambda i: code[ip + i], code_size, ip), 0, 0, mode, ns,
                                emulating=emulating, max_insns=1)
        assert blk.insns[0].opc in codegen.EMITTERS


def test_string_segments_in_32bit_mode():
    """The source segment follows an override, the destination is always ES; offsets wrap at
    the address size."""
    mode = codegen.Mode(4, 4, False, 0, True, False)

    def source(code):
        return codegen.translate(lambda ip: decoder.decode(lambda i: code[ip + i], 4, ip), 0, 0, mode, {},
                                 max_insns=1).source
    movs = source(b"\x64\xa5")                      # movsd fs:[esi] -> es:[edi]
    assert "SB[4] + si" in movs and "SB[0] + di" in movs and "SB[3]" not in movs
    assert "SB[3] + si" in source(b"\xac")          # lodsb ds:[esi]
    assert "& 0xffff" in source(b"\x67\xaa")        # stosb es:[di]
