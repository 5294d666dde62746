"""Directed differential cases, by instruction family.

``FAMILIES`` maps a family name ("alu-add-4", "shift-rcl-1", ...) to a function returning
its ``diff.Case`` list.  Each snippet is run with many starting states (edge values, carry
in/out, sign boundaries), so few snippets cover much.  Families whose name ends in
"-fault" expect an exception; every other case runs to its end on the silicon.
"""

import itertools

from tests.oracle.diff import Case
from tests.oracle.flagspec import ARITH, undefined_flags
from tests.oracle.native import CF, DATA_ADDR, DF, OF, PF, SF, ZF, AF
from tests.oracle.operands import (MEM_BASE, PTR, SIZES, data, edges, in_reg, mask, pattern,
                                   reg, sign, to_signed)
from tests.support.hostinfo import cpu_flags

FAMILIES = {}
MEM_OFF = 0x810  # data offset of the memory operand [rbx + 0x10] with rbx = MEM_BASE
MEM = "[rbx + 0x10]"
FLAG_SEEDS = (0, ARITH)  # alternated as starting flags so untouched flags are checked too


def family(name):
    def add(fn):
        FAMILIES[name] = fn
        return fn
    return add


CPU = cpu_flags()


def _pairs(size):
    e = edges(size)
    return list(itertools.product(e, e)) + [(pattern(size, 1), pattern(size, 2)),
                                            (pattern(size, 3), e[3])]


# ---- ALU --------------------------------------------------------------------------------
BINARY = ("add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test")
UNARY = ("inc", "dec", "neg", "not")
# (dest, src) register pairs per size: legacy, REX and high-byte encodings.
RR = {1: (("rax", "rcx"), ("rsi", "r9"), ("ah", "bh")), 2: (("rdx", "r10"),),
      4: (("r13", "rbp"),), 8: (("rcx", "r15"),)}


def _alu_binary(op, size):
    und = undefined_flags(op, size)
    cases = []
    carries = (0, CF) if op in ("adc", "sbb") else (0,)
    for i, (a, b) in enumerate(_pairs(size)):
        for cf in carries:
            flags = FLAG_SEEDS[i % 2] & ~CF | cf
            for d, s in RR[size]:
                if d in ("ah", "bh"):
                    src = f"{op} {d}, {s}"
                    regs = {"rax": in_reg(a << 8, 2), "rbx": in_reg(b << 8, 2)}
                else:
                    src = f"{op} {reg(d, size)}, {reg(s, size)}"
                    regs = {d: in_reg(a, size), s: in_reg(b, size)}
                cases.append(Case(src, regs, flags, undefined_flags=und))
            if i % 3 == 0:  # memory forms on a third of the pairs
                mem = data({MEM_OFF: (a, size)})
                regs = {"rbx": MEM_BASE, "rdx": in_reg(b, size)}
                cases.append(Case(f"{op} {PTR[size]} ptr {MEM}, {reg('rdx', size)}", regs,
                                  flags, mem, und))
                if op != "test":
                    cases.append(Case(f"{op} {reg('rdx', size)}, {PTR[size]} ptr {MEM}", regs,
                                      flags, mem, und))
    imms = [0x7F, -0x80, 1, -1, 0x12]
    if size > 1:
        imms += [0x1234, -0x7FFF] if size == 2 else [0x12345678, -0x80000000, 0x7FFFFFFF]
    for imm in imms:
        for j, a in enumerate(edges(size) + [pattern(size)]):
            flags = FLAG_SEEDS[j % 2] | (CF if op in ("adc", "sbb") and j > 2 else 0)
            cases.append(Case(f"{op} {reg('rax', size)}, {imm}", {"rax": in_reg(a, size)},
                              flags, undefined_flags=und))
            cases.append(Case(f"{op} {reg('r11', size)}, {imm}", {"r11": in_reg(a, size)},
                              flags, undefined_flags=und))
            if j in (1, 3):
                cases.append(Case(f"{op} {PTR[size]} ptr {MEM}, {imm}", {"rbx": MEM_BASE},
                                  flags, data({MEM_OFF: (a, size)}), und))
    return cases


def _alu_unary(op, size):
    cases = []
    for i, a in enumerate(edges(size) + [pattern(size), sign(size) + 1]):
        for flags in FLAG_SEEDS:
            cases.append(Case(f"{op} {reg('r8', size)}", {"r8": in_reg(a, size)}, flags))
            cases.append(Case(f"{op} {PTR[size]} ptr {MEM}", {"rbx": MEM_BASE}, flags,
                              data({MEM_OFF: (a, size)})))
        if size == 1:
            cases.append(Case(f"{op} ch", {"rcx": in_reg(a << 8, 2)}, FLAG_SEEDS[i % 2]))
    return cases


for _op in BINARY:
    for _size in SIZES:
        family(f"alu-{_op}-{_size}")(lambda op=_op, size=_size: _alu_binary(op, size))
for _op in UNARY:
    for _size in SIZES:
        family(f"alu-{_op}-{_size}")(lambda op=_op, size=_size: _alu_unary(op, size))

# ---- shifts and rotates -------------------------------------------------------------------
SHIFTS = ("shl", "shr", "sar", "rol", "ror", "rcl", "rcr")
COUNTS = (0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255)


def _shift(op, size):
    cases = []
    values = [sign(size), sign(size) | 1, 1, mask(size), pattern(size)]
    for i, (a, count) in enumerate(itertools.product(values, COUNTS)):
        flags = FLAG_SEEDS[i % 2] ^ (CF if i % 3 == 0 else 0)
        und = undefined_flags(op, size, count)
        cases.append(Case(f"{op} {reg('rdx', size)}, cl", {"rdx": in_reg(a, size), "rcx": count},
                          flags, undefined_flags=und))
        if i % 4 == 0:
            cases.append(Case(f"{op} {PTR[size]} ptr {MEM}, cl", {"rbx": MEM_BASE, "rcx": count},
                              flags, data({MEM_OFF: (a, size)}), und))
    for count, a in itertools.product((1, 4, 0, 31, 63), values):
        und = undefined_flags(op, size, count)
        cases.append(Case(f"{op} {reg('r12', size)}, {count}", {"r12": in_reg(a, size)},
                          CF | ZF, undefined_flags=und))
    return cases


def _double_shift(op, size):
    cases = []
    for i, ((a, b), count) in enumerate(itertools.product(
            [(sign(size) | 1, pattern(size)), (mask(size), 0), (1, sign(size))], COUNTS)):
        if count & (0x3F if size == 8 else 0x1F) > size * 8:
            continue  # the result is undefined
        und = undefined_flags(op, size, count)
        regs = {"rsi": in_reg(a, size), "rdi": in_reg(b, size), "rcx": count}
        cases.append(Case(f"{op} {reg('rsi', size)}, {reg('rdi', size)}, cl", regs,
                          FLAG_SEEDS[i % 2], undefined_flags=und))
        if count < 16:
            cases.append(Case(f"{op} {reg('rsi', size)}, {reg('rdi', size)}, {count}", regs,
                              FLAG_SEEDS[i % 2], undefined_flags=und))
    return cases


for _op in SHIFTS:
    for _size in SIZES:
        family(f"shift-{_op}-{_size}")(lambda op=_op, size=_size: _shift(op, size))
for _op in ("shld", "shrd"):
    for _size in (2, 4, 8):
        family(f"shift-{_op}-{_size}")(lambda op=_op, size=_size: _double_shift(op, size))


# ---- multiply and divide -------------------------------------------------------------------
def _acc_regs(size, lo, hi=0):
    """rax (and rdx) holding an accumulator operand: AX for 8-bit, rDX:rAX otherwise."""
    if size == 1:
        return {"rax": in_reg(hi << 8 | lo, 2), "rdx": pattern(8)}
    return {"rax": in_reg(lo, size), "rdx": in_reg(hi, size)}


@family("muldiv-mul-imul")
def _mul():
    cases = []
    for size in SIZES:
        und = undefined_flags("mul", size)
        for i, (a, b) in enumerate(_pairs(size)):
            flags = FLAG_SEEDS[i % 2]
            for op in ("mul", "imul"):
                regs = {**_acc_regs(size, a), "rbx": in_reg(b, size)}
                cases.append(Case(f"{op} {reg('rbx', size)}", regs, flags, undefined_flags=und))
                if i % 4 == 0:
                    cases.append(Case(f"{op} {PTR[size]} ptr {MEM}", {**regs, "rbx": MEM_BASE},
                                      flags, data({MEM_OFF: (b, size)}), und))
            if size == 1:
                continue
            regs = {"r9": in_reg(a, size), "r10": in_reg(b, size)}
            cases.append(Case(f"imul {reg('r9', size)}, {reg('r10', size)}", regs, flags,
                              undefined_flags=und))
            for imm in (3, -2, 0x7F, -0x80, 0x1234 if size == 2 else 0x12345678):
                if i % 3 == 0:
                    cases.append(Case(f"imul {reg('r9', size)}, {reg('r10', size)}, {imm}", regs,
                                      flags, undefined_flags=und))
            if i % 4 == 0:
                cases.append(Case(f"imul {reg('r9', size)}, {PTR[size]} ptr {MEM}",
                                  {**regs, "rbx": MEM_BASE}, flags, data({MEM_OFF: (b, size)}),
                                  und))
    return cases


def _divides(op, size, hi, lo, divisor) -> bool:
    """Whether DIV/IDIV of hi:lo by divisor completes (no #DE)."""
    if divisor & mask(size) == 0:
        return False
    n = hi << (8 * size) | lo
    if op == "div":
        return n // divisor <= mask(size)
    n, d = to_signed(n, 2 * size), to_signed(divisor, size)
    q = abs(n) // abs(d) * (1 if (n < 0) == (d < 0) else -1)
    return -sign(size) <= q < sign(size)


def _div_cases(want_fault):
    cases = []
    for size in SIZES:
        und = undefined_flags("div", size)
        m = mask(size)
        divisors = [0, 1, 3, sign(size) - 1, sign(size), m, pattern(size, 4)]
        dividends = [(0, 0), (0, 7), (0, m), (1, 0), (m, m), (m, sign(size)),
                     (sign(size) - 1 >> 1, pattern(size, 5)), (m, 1), (0x12 & m, 0x34 & m)]
        for op in ("div", "idiv"):
            for i, (d, (hi, lo)) in enumerate(itertools.product(divisors, dividends)):
                if _divides(op, size, hi, lo, d) == want_fault:
                    continue
                regs = {**_acc_regs(size, lo, hi), "r14": in_reg(d, size)}
                cases.append(Case(f"{op} {reg('r14', size)}", regs, FLAG_SEEDS[i % 2],
                                  undefined_flags=und))
                if i % 5 == 0:
                    cases.append(Case(f"{op} {PTR[size]} ptr {MEM}", {**regs, "rbx": MEM_BASE},
                                      FLAG_SEEDS[i % 2], data({MEM_OFF: (d, size)}), und))
    return cases


family("muldiv-div")(lambda: _div_cases(want_fault=False))
family("muldiv-div-fault")(lambda: _div_cases(want_fault=True))


# ---- bit operations -----------------------------------------------------------------------
@family("bits-bt")
def _bt():
    cases = []
    for op, size in itertools.product(("bt", "bts", "btr", "btc"), (2, 4, 8)):
        und = undefined_flags(op, size)
        bits = 8 * size
        for i, (a, bit) in enumerate(itertools.product(
                [pattern(size), mask(size), 0], [0, 1, bits - 1, bits, bits + 3, 255])):
            regs = {"rax": in_reg(a, size), "rcx": in_reg(bit, size)}
            cases.append(Case(f"{op} {reg('rax', size)}, {reg('rcx', size)}", regs,
                              FLAG_SEEDS[i % 2], undefined_flags=und))
            cases.append(Case(f"{op} {reg('rax', size)}, {bit & 0xFF}", regs,
                              FLAG_SEEDS[i % 2], undefined_flags=und))
        # A register bit offset addresses a bit string around the memory operand.
        for i, bit in enumerate((0, 5, bits - 1, bits, 100, 1000, -1, -70, -1000)):
            mem = bytes(range(256)) * 16
            regs = {"rbx": MEM_BASE, "rdx": in_reg(bit & mask(size), size)}
            cases.append(Case(f"{op} {PTR[size]} ptr {MEM}, {reg('rdx', size)}", regs,
                              FLAG_SEEDS[i % 2], mem, und))
            cases.append(Case(f"{op} {PTR[size]} ptr {MEM}, {bit & 0x7F}", regs,
                              FLAG_SEEDS[i % 2], mem, und))
    return cases


@family("bits-scan-count")
def _bitscan():
    ops = ["bsf", "bsr"] + (["popcnt", "lzcnt"] if "abm" in CPU else [])
    ops += ["tzcnt"] if "bmi1" in CPU else []
    cases = []
    for op, size in itertools.product(ops, (2, 4, 8)):
        und = undefined_flags(op, size)
        for i, a in enumerate([1, sign(size), 0x50, mask(size), 0x0F00 & mask(size),
                               pattern(size), 0]):
            # BSF/BSR of 0 leave the destination undefined (AMD: unchanged; Intel: varies).
            undef = ("r8",) if op in ("bsf", "bsr") and a == 0 else ()
            regs = {"r8": pattern(8, 9), "rsi": in_reg(a, size), "rbx": MEM_BASE}
            cases.append(Case(f"{op} {reg('r8', size)}, {reg('rsi', size)}", regs,
                              FLAG_SEEDS[i % 2], undefined_flags=und, undefined_regs=undef))
            cases.append(Case(f"{op} {reg('r8', size)}, {PTR[size]} ptr {MEM}", regs,
                              FLAG_SEEDS[i % 2], data({MEM_OFF: (a, size)}), und, undef))
    return cases


# ---- sign and zero extension ---------------------------------------------------------------
@family("ext-movzx-movsx")
def _extend():
    forms = []
    for src, dst in [(1, 2), (1, 4), (1, 8), (2, 4), (2, 8)]:
        for op in ("movzx", "movsx"):
            forms.append((f"{op} {reg('rcx', dst)}, {reg('rdx', src)}", src))
            forms.append((f"{op} {reg('r9', dst)}, {PTR[src]} ptr {MEM}", src))
        if src == 1 and dst < 8:  # AH..BH cannot be encoded with REX.W
            forms.append((f"movsx {reg('rcx', dst)}, dh", 0))
    forms += [("movsxd rcx, edx", 4), ("movsxd r9, dword ptr [rbx + 0x10]", 4)]
    cases = []
    for src, size in forms:
        for v in edges(size or 2) + [pattern(size or 2)]:
            regs = {"rcx": pattern(8, 7), "r9": pattern(8, 8), "rbx": MEM_BASE,
                    "rdx": in_reg(v << 8 if size == 0 else v, size or 2)}
            cases.append(Case(src, regs, mem=data({MEM_OFF: (v, size or 2)})))
    for src, size in [("cbw", 1), ("cwde", 2), ("cdqe", 4), ("cwd", 2), ("cdq", 4), ("cqo", 8)]:
        for v in edges(size) + [pattern(size)]:
            cases.append(Case(src, {"rax": in_reg(v, size), "rdx": pattern(8, 6)}))
    return cases


# ---- addressing ------------------------------------------------------------------------------
@family("lea")
def _lea():
    forms = ["lea rax, [rcx]", "lea rax, [rcx + 0x7f]", "lea rax, [rcx - 0x80]",
             "lea rax, [rcx + 0x12345678]", "lea rax, [rcx - 0x12345678]", "lea rax, [rbp]",
             "lea rax, [r13]", "lea rax, [rsp]", "lea rax, [r12 + 8]", "lea rax, [rsp + rcx]",
             "lea rax, [rcx + rdx]", "lea rax, [rcx + rdx*2 + 1]", "lea rax, [rcx + rdx*4 - 4]",
             "lea rax, [rcx + rdx*8 + 0x1000]", "lea rax, [rdx*8]", "lea rax, [rdx*2 + 0x10]",
             "lea rax, [r15 + r14*4]", "lea rax, [rbp + r13*1]", "lea rax, [r13 + rbp*8 - 1]",
             "lea rax, [0x12345678]", "lea rax, [rip + 1f]; 1:", "lea rax, [rip - 7]",
             "lea eax, [rcx + rdx*2 + 3]", "lea ax, [rcx + rdx - 1]", "lea eax, [ecx + edx]",
             "lea eax, [ecx + edx*8 - 0x100]", "lea r11d, [r12d + r13d]", "lea rax, [rax + rax*2]"]
    values = [(0, 0), (1, 1), ((1 << 64) - 1, 1), (0x7FFFFFFF, 0x80000000),
              (0xFFFFFFFF, 0xFFFFFFFF), (0x8000000000000000, (1 << 63) - 1)]
    cases = []
    for form in forms:
        for a, b in values:
            regs = {r: a for r in ("rax", "rcx", "rbp", "r12", "r15")}
            regs.update({r: b for r in ("rdx", "r13", "r14")})
            cases.append(Case(form, regs))
    return cases


# ---- stack --------------------------------------------------------------------------------
@family("stack")
def _stack():
    snippets = [
        "push rax; push r9; pop rcx; pop r10",
        "push -1; push 0x12345678; push -0x80000000; pop rax; pop rbx; pop rcx",
        "push qword ptr [rbx + 0x10]; pop qword ptr [rbx - 0x10]; mov rdx, [rsp - 8]",
        "push ax; push r9w; pop cx; pop dx",
        "call 1f; 1: pop rax",
        "call 1f; jmp 2f; 1: mov rcx, [rsp]; ret; 2: nop",
        "call 1f; jmp 2f; 1: ret 16; 2: nop",
        "mov rax, rsp; push rsp; pop rcx; sub rax, rcx",
        "push rsp; pop rsp",
        "mov rsp, rbx; push rax; pop r8",
        "lea rsp, [rsp - 24]; mov [rsp + 8], rax; pop rcx; pop rdx; pop rsi",
        "enter 32, 0; mov r8, rbp; mov r9, rsp; leave",
        "push rbp; mov rbp, rsp; sub rsp, 16; mov [rbp - 8], rax; leave",
        "pushfq; pop rax; and eax, 0xed5",
        "and eax, 0xed5; push rax; popfq",
        "pushf; pop ax; and ax, 0xed5",
        "xchg rsp, rbx; push 5; xchg rsp, rbx",
    ]
    cases = []
    for i, src in enumerate(snippets):
        for v in (0, (1 << 64) - 1, pattern(8), ARITH | DF):
            regs = {"rax": v, "r9": pattern(8, i), "rbx": MEM_BASE, "rbp": pattern(8, 2)}
            cases.append(Case(src, regs, FLAG_SEEDS[i % 2], data({MEM_OFF: (v, 8)})))
    return cases


# ---- conditions -----------------------------------------------------------------------------
CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
FLAG_COMBOS = [sum(f for f, on in zip((CF, PF, ZF, SF, OF), bits) if on)
               for bits in itertools.product((0, 1), repeat=5)]


@family("cond")
def _cond():
    cases = []
    for cc in CONDITIONS:
        snippets = [f"set{cc} al; set{cc} byte ptr {MEM}; set{cc} r10b; set{cc} bh",
                    f"cmov{cc} rcx, rdx; cmov{cc} esi, edi; cmov{cc} r8w, r9w; "
                    f"cmov{cc} r11, qword ptr {MEM}",
                    f"j{cc} 1f; mov eax, 1; 1: j{cc} 2f; jmp 3f; 2: mov ecx, 2; 3:"]
        for src in snippets:
            for flags in FLAG_COMBOS:
                regs = {n: pattern(8, i) for i, n in enumerate(
                    ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11"))}
                regs["rbx"] = MEM_BASE
                cases.append(Case(src, regs, flags, data({MEM_OFF: (pattern(8, 11), 8)})))
    loops = ["1: add rax, rcx; loop 1b", "jrcxz 1f; mov eax, 7; 1:",
             "1: inc rax; cmp rax, 3; loopne 1b", "1: dec rdx; loope 1b"]
    for src in loops:
        for rcx in (1, 2, 5):
            cases.append(Case(src, {"rcx": rcx, "rdx": 2}))
    cases.append(Case(loops[1], {"rcx": 0}))
    return cases


# ---- exchange and compare-exchange ---------------------------------------------------------
@family("xchg-xadd-cmpxchg")
def _exchange():
    cases = []
    for size in SIZES:
        a_reg, b_reg = reg("rcx", size), reg("r12", size)
        und = undefined_flags("cmpxchg", size)
        snippets = [f"xchg {a_reg}, {b_reg}", f"xchg {reg('rax', size)}, {b_reg}",
                    f"xchg {PTR[size]} ptr {MEM}, {a_reg}", f"xadd {a_reg}, {b_reg}",
                    f"xadd {PTR[size]} ptr {MEM}, {a_reg}", f"cmpxchg {a_reg}, {b_reg}",
                    f"cmpxchg {PTR[size]} ptr {MEM}, {b_reg}",
                    f"lock cmpxchg {PTR[size]} ptr {MEM}, {b_reg}"]
        for src in snippets:
            for i, (a, b) in enumerate([(1, 1), (1, 2), (mask(size), 1), (sign(size), sign(size))]):
                regs = {"rax": in_reg(a, size), "rcx": in_reg(b, size),
                        "r12": in_reg(pattern(size), size), "rbx": MEM_BASE}
                if i == 0:
                    regs["r12"] = regs["rax"]  # cmpxchg r, r equal
                mem = data({MEM_OFF: (a if i % 2 == 0 else b, size)})
                cases.append(Case(src, regs, FLAG_SEEDS[i % 2], mem, und))
    cases.append(Case("xchg eax, eax", {"rax": (1 << 64) - 1}))
    for src, size in (("cmpxchg8b qword ptr [rbx + 0x10]", 4),
                      ("cmpxchg16b xmmword ptr [rbx + 0x10]", 8)):
        if size == 8 and "cx16" not in CPU:
            continue
        for equal in (True, False):
            old_lo, old_hi = pattern(size, 1), pattern(size, 2)
            regs = {"rax": old_lo if equal else 5, "rdx": old_hi, "rbx": MEM_BASE,
                    "rcx": pattern(8, 3)}
            mem = data({MEM_OFF: (old_lo, size), MEM_OFF + size: (old_hi, size)})
            cases.append(Case(src.replace("rbx", "rsi"), {**regs, "rsi": MEM_BASE,
                                                          "rbx": pattern(8, 4)}, ARITH, mem))
    for size in (4, 8):
        for v in (0x0123456789ABCDEF, 0x80, (1 << 64) - 1):
            cases.append(Case(f"bswap {reg('r10', size)}; bswap {reg('rax', size)}",
                              {"r10": v, "rax": v ^ 0xFF}))
    return cases


# ---- string instructions ---------------------------------------------------------------------
@family("string")
def _string():
    mem = bytearray(range(256)) * 16
    mem[0x900:0x940] = mem[0x400:0x440]  # equal runs for cmps; differs at 0x940
    mem = bytes(mem)
    cases = []
    for size, suffix in zip(SIZES, "bwdq"):
        for df in (0, DF):
            # With DF set the strings run downwards from the top of the same ranges.
            src = DATA_ADDR + (0x43F if df else 0x400) - (size - 1 if df else 0)
            dst = DATA_ADDR + (0x93F if df else 0x900) - (size - 1 if df else 0)
            for prefix, op in itertools.product(("", "rep "), ("movs", "stos", "lods")):
                if prefix and op == "lods":
                    continue
                for count in (0, 1, 5):
                    regs = {"rsi": src, "rdi": dst, "rcx": count, "rax": pattern(8, 1)}
                    cases.append(Case(f"{prefix}{op}{suffix}", regs, df | ARITH, mem))
            for prefix, op in itertools.product(("", "repe ", "repne "), ("cmps", "scas")):
                for count in (0, 3, 0x80 // size):
                    for al in (0x00, 0x40, 0x0302):
                        regs = {"rsi": src, "rdi": dst, "rcx": count,
                                "rax": in_reg(al & mask(size), size)}
                        cases.append(Case(f"{prefix}{op}{suffix}", regs, df, mem))
    return cases


# ---- flag instructions --------------------------------------------------------------------
@family("flagops")
def _flagops():
    cases = []
    for src in ("lahf", "sahf", "cmc", "clc", "stc", "cld", "std", "lahf; cmc; sahf; lahf"):
        for flags in FLAG_COMBOS[::3] + [ARITH | DF, AF]:
            for ah in (0, 0xFF, 0xD5, 0x2A):
                cases.append(Case(src, {"rax": in_reg(ah << 8, 2)}, flags))
    return cases
