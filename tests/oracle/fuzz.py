"""Random differential fuzzing: seeded, valid, non-faulting instruction sequences run
natively and on kvmpy; mismatches are shrunk to a minimal sequence and printed as assembly.

A sequence is a list of ``Unit``s: one instruction, or a few that belong together (a
divide with the guards that keep it from faulting, a push with its pop, a string
instruction with its pointer set-up).  Shrinking drops whole units.  Each unit records the
flags it reads, defines and leaves undefined, so the generator (and the shrinker) never
produces a sequence whose result depends on an undefined flag, and the comparison masks the
flags still undefined at the end.  Memory operands are ``[rbx + disp]`` inside the data
area; rbx and rsp are never written except by balanced stack units.

    python -m tests.oracle.fuzz --count 10000 --seed 1
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import random
import sys

from kvmpy.hw import models
from tests.oracle import asm, diff, native
from tests.oracle.cases import BINARY, CONDITIONS, CPU, SHIFTS, UNARY
from tests.oracle.flagspec import ARITH, masked_count, undefined_flags
from tests.oracle.native import AF, CF, OF, PF, SF, ZF
from tests.oracle.operands import MEM_BASE, PTR, SIZES, edges, reg

POOL = ("rax", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
        "r14", "r15")
COND_READS = {"o": OF, "no": OF, "b": CF, "ae": CF, "e": ZF, "ne": ZF, "be": CF | ZF,
              "a": CF | ZF, "s": SF, "ns": SF, "p": PF, "np": PF, "l": SF | OF, "ge": SF | OF,
              "le": ZF | SF | OF, "g": ZF | SF | OF}


@dataclasses.dataclass(frozen=True)
class Unit:
    """Instructions kept together, with their flag effects: ``reads`` must be defined
    before, ``defined`` and ``undefined`` are written (with a known / unknown value)."""
    text: str
    reads: int = 0
    defined: int = 0
    undefined: int = 0


@dataclasses.dataclass
class Program:
    units: list
    regs: dict
    rflags: int
    mem: bytes

    @property
    def source(self) -> str:
        return "\n".join(u.text for u in self.units)

    def with_units(self, units) -> "Program":
        return dataclasses.replace(self, units=list(units))


def undefined_at_end(units) -> int | None:
    """The flags left undefined after ``units``, or None if one reads an undefined flag."""
    undef = 0
    for u in units:
        if u.reads & undef:
            return None
        undef = (undef & ~(u.defined | u.undefined)) | u.undefined
    return undef


class Generator:
    """Random units from the instruction families of the directed tests."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.makers = [self.alu, self.alu, self.unary, self.shift, self.double_shift,
                       self.mul, self.div, self.bit, self.extend, self.lea, self.mov,
                       self.stack, self.cond, self.exchange, self.string, self.flagop]
        if "abm" in CPU:
            self.makers.append(self.count)

    def r(self, size=8, avoid=()):
        return reg(self.rng.choice([p for p in POOL if p not in avoid]), size)

    def mem(self, size):
        return f"{PTR[size]} ptr [rbx {self.rng.randrange(-0x800, 0x800 - 16):+#x}]"

    def imm(self, size):
        value = self.rng.choice(edges(min(size, 4)) + [self.rng.getrandbits(8 * min(size, 4))])
        return native_signed(value, min(size, 4))

    def size(self, sizes=SIZES):
        return self.rng.choice(sizes)

    def alu(self):
        op, size = self.rng.choice(BINARY), self.size()
        form = self.rng.choice(("rr", "ri", "rm", "mr", "mi"))
        dst, src = {"rr": (self.r(size), self.r(size)), "ri": (self.r(size), self.imm(size)),
                    "rm": (self.r(size), self.mem(size)), "mr": (self.mem(size), self.r(size)),
                    "mi": (self.mem(size), self.imm(size))}[form]
        if op == "test" and form == "rm":
            dst, src = src, dst
        und = undefined_flags(op, size)
        return Unit(f"{op} {dst}, {src}", CF if op in ("adc", "sbb") else 0, ARITH & ~und, und)

    def unary(self):
        op, size = self.rng.choice(UNARY), self.size()
        target = self.rng.choice((self.r(size), self.mem(size)))
        defined = {"inc": ARITH & ~CF, "dec": ARITH & ~CF, "neg": ARITH, "not": 0}[op]
        return Unit(f"{op} {target}", 0, defined)

    def shift(self):
        op, size = self.rng.choice(SHIFTS), self.size()
        count = self.rng.choice((1, self.rng.randrange(0, 8 * size + 2)))
        target = self.rng.choice((self.r(size), self.mem(size)))
        return self._shift_unit(f"{op} {target}, {count}", op, size, count)

    def double_shift(self):
        op, size = self.rng.choice(("shld", "shrd")), self.size((2, 4, 8))
        count = self.rng.randrange(0, 8 * size + 1)
        target = self.rng.choice((self.r(size), self.mem(size)))
        return self._shift_unit(f"{op} {target}, {self.r(size)}, {count}", op, size, count)

    @staticmethod
    def _shift_unit(text, op, size, count):
        und = undefined_flags(op, size, count)
        if masked_count(count, size) == 0:
            written = 0
        elif op in ("rol", "ror", "rcl", "rcr"):
            written = CF | OF
        else:
            written = ARITH
        return Unit(text, CF if op in ("rcl", "rcr") else 0, written & ~und, und)

    def mul(self):
        size = self.size()
        und = undefined_flags("mul", size)
        forms = [f"mul {self.r(size)}", f"imul {self.mem(size)}"]
        if size > 1:
            forms += [f"imul {self.r(size)}, {self.r(size)}",
                      f"imul {self.r(size)}, {self.mem(size)}, {self.imm(size)}"]
        return Unit(self.rng.choice(forms), 0, CF | OF, und)

    def div(self):
        """A divide that cannot fault: a zero- or sign-extended dividend and a divisor
        with bit 1 set and bit 0 clear (never 0 or -1)."""
        size, op = self.size(), self.rng.choice(("div", "idiv"))
        d = self.r(size, avoid=("rax", "rdx"))
        if size == 1:
            extend = "movzx eax, al" if op == "div" else "cbw"
        else:
            extend = "xor edx, edx" if op == "div" else {2: "cwd", 4: "cdq", 8: "cqo"}[size]
        text = f"and {d}, -2; or {d}, 2; {extend}; {op} {d}"
        return Unit(text, 0, 0, ARITH)

    def bit(self):
        op, size = self.rng.choice(("bt", "bts", "btr", "btc")), self.size((2, 4, 8))
        target = self.rng.choice((self.r(size), self.mem(size)))
        src = self.rng.choice((str(self.rng.randrange(256)), self.r(size)))
        if "ptr" in target and not src.isdigit():
            src = str(self.rng.randrange(8 * size))  # a register offset could leave the page
        und = undefined_flags(op, size)
        return Unit(f"{op} {target}, {src}", 0, CF, und)

    def count(self):
        ops = ["popcnt", "lzcnt"] + (["tzcnt"] if "bmi1" in CPU else [])
        op, size = self.rng.choice(ops), self.size((2, 4, 8))
        und = undefined_flags(op, size)
        src = self.rng.choice((self.r(size), self.mem(size)))
        return Unit(f"{op} {self.r(size)}, {src}", 0, ARITH & ~und, und)

    def extend(self):
        src_size = self.size((1, 2))
        dst_size = self.size(tuple(s for s in (2, 4, 8) if s > src_size))
        op = self.rng.choice(("movzx", "movsx"))
        forms = [f"{op} {self.r(dst_size)}, {self.rng.choice((self.r(src_size), self.mem(src_size)))}",
                 f"movsxd {self.r()}, {self.r(4)}", self.rng.choice(("cbw", "cwde", "cdqe", "cwd", "cdq", "cqo"))]
        return Unit(self.rng.choice(forms))

    def lea(self):
        base, index = self.r(), self.r()
        scale, disp = self.rng.choice((1, 2, 4, 8)), self.rng.randrange(-0x1000, 0x1000)
        size = self.size((2, 4, 8))
        return Unit(f"lea {self.r(size)}, [{base} + {index}*{scale} {disp:+#x}]")

    def mov(self):
        size = self.size()
        return Unit(self.rng.choice((
            f"mov {self.r()}, {self.rng.getrandbits(64):#x}", f"mov {self.r(size)}, {self.mem(size)}",
            f"mov {self.mem(size)}, {self.r(size)}", f"mov {self.r(size)}, {self.r(size)}")))

    def stack(self):
        a, b = self.r(), self.r()
        return Unit(self.rng.choice((
            f"push {a}; pop {b}", f"push {self.imm(4)}; pop {a}",
            f"push {self.mem(8)}; pop {a}", f"push {a}; pop {self.mem(8)}",
            f"call 1f; jmp 2f; 1: mov {a}, [rsp]; ret; 2:")))

    def cond(self):
        cc = self.rng.choice(CONDITIONS)
        size = self.size((2, 4, 8))
        if self.rng.random() < 0.3:
            # Taken or not, the flags stay determined, except what the skipped one leaves undefined.
            inner = self.alu()
            return Unit(f"j{cc} 1f; {inner.text}; 1:", COND_READS[cc] | inner.reads, 0,
                        inner.undefined)
        return Unit(self.rng.choice((
            f"set{cc} {self.rng.choice((self.r(1), self.mem(1)))}",
            f"cmov{cc} {self.r(size)}, {self.rng.choice((self.r(size), self.mem(size)))}")),
            COND_READS[cc])

    def exchange(self):
        size = self.size()
        a, b = self.r(size), self.r(size)
        text, flags = self.rng.choice(((f"xchg {a}, {b}", 0), (f"xchg {self.mem(size)}, {a}", 0),
                                       (f"xadd {a}, {b}", ARITH), (f"xadd {self.mem(size)}, {a}", ARITH),
                                       (f"cmpxchg {a}, {b}", ARITH),
                                       (f"cmpxchg {self.mem(size)}, {a}", ARITH),
                                       (f"bswap {self.r(self.size((4, 8)))}", 0)))
        return Unit(text, 0, flags)

    def string(self):
        size = self.size()
        suffix = "bwdq"[SIZES.index(size)]
        count = self.rng.randrange(0, 9)
        op = self.rng.choice(("movs", "stos", "lods", "cmps", "scas"))
        prefix = {"movs": "rep ", "stos": "rep ", "lods": ""}.get(op) or self.rng.choice(("repe ", "repne "))
        down = self.rng.random() < 0.5
        # Both pointers start 0x100 apart, far enough from the page ends for 9 qwords.
        text = (f"lea rsi, [rbx {self.rng.randrange(-0x600, 0x500):+#x}]; "
                f"lea rdi, [rbx {self.rng.randrange(-0x600, 0x500):+#x}]; mov ecx, {count}; "
                f"{'std' if down else 'cld'}; {prefix}{op}{suffix}")
        return Unit(text, 0, ARITH if op in ("cmps", "scas") and count else 0)

    def flagop(self):
        return self.rng.choice((Unit("lahf", SF | ZF | AF | PF | CF), Unit("sahf", 0, SF | ZF | AF | PF | CF),
                                Unit("cmc", CF, CF), Unit("clc", 0, CF), Unit("stc", 0, CF),
                                Unit("cld"), Unit("std")))

    def define_flags(self):
        return Unit(f"cmp {self.r(8)}, {self.imm(4)}", 0, ARITH)

    def program(self, length: int) -> Program:
        units, undef = [], 0
        while len(units) < length:
            unit = self.rng.choice(self.makers)()
            if unit.reads & undef:
                units.append(self.define_flags())
                undef = 0
            units.append(unit)
            undef = (undef & ~(unit.defined | unit.undefined)) | unit.undefined
        regs = {name: self.rng.choice((self.rng.getrandbits(64), self.rng.choice(edges(8))))
                for name in POOL}
        regs["rbx"] = MEM_BASE
        rflags = self.rng.getrandbits(12) & native.USER_FLAGS
        return Program(units, regs, rflags, self.rng.randbytes(native.DATA_MIN))


def native_signed(value: int, size: int) -> int:
    return value - (1 << 8 * size) if value & (1 << 8 * size - 1) else value


def check(program: Program, run_snippet) -> list[str]:
    """Differences between the silicon and ``run_snippet`` for ``program``."""
    code = asm.assemble(program.source)
    expected = native.run_native(code, program.regs, program.rflags, program.mem)
    if expected.exception is not None:
        return [f"generator bug: the silicon raised vector {expected.exception}"]
    regs = dict(program.regs, rsp=native.STACK_TOP)
    actual = run_snippet(code, regs, program.rflags, program.mem)
    return diff.compare(expected, actual, undefined_at_end(program.units))


def shrink(program: Program, run_snippet) -> Program:
    """Drop units one at a time while the sequence stays valid and still mismatches."""
    units = list(program.units)
    changed = True
    while changed:
        changed = False
        for i in range(len(units)):
            trial = units[:i] + units[i + 1:]
            if trial and undefined_at_end(trial) is not None and \
                    check(program.with_units(trial), run_snippet):
                units, changed = trial, True
                break
    return program.with_units(units)


def report(program: Program, problems: list[str]) -> str:
    """A failing program as a regression test would need it."""
    regs = ", ".join(f"{k}={v:#x}" for k, v in program.regs.items())
    lines = ["; kvmpy differs from the silicon on:", *program.source.splitlines(),
             f"; regs: {regs}", f"; rflags: {program.rflags:#x}  data: {program.mem[:16].hex()}... "
             f"(data area = seeded random page)", *(f"; {p}" for p in problems)]
    return "\n".join(lines)


def fuzz(count: int, seed: int, length: int, run_snippet, out=sys.stdout) -> tuple[int, list]:
    """Run ``count`` programs; return (instructions compared, shrunk failure reports)."""
    rng = random.Random(seed)
    programs = [Generator(rng).program(length) for _ in range(count)]
    asm.assemble_many(p.source for p in programs)
    compared, failures = 0, []
    for program in programs:
        compared += sum(u.text.count(";") + 1 for u in program.units)
        if check(program, run_snippet):
            small = shrink(program, run_snippet)
            failures.append(report(small, check(small, run_snippet)))
            print(failures[-1], file=out)
    return compared, failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="programs to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length", type=int, default=10, help="units per program")
    parser.add_argument("--cpu", default="host",
                        help="kvmpy's CPU model (default: host, the model of this machine's vendor)")
    args = parser.parse_args(argv)
    run_snippet = functools.partial(diff.load_run_snippet(), model=args.cpu)
    compared, failures = fuzz(args.count, args.seed, args.length, run_snippet)
    print(f"{compared} instructions compared in {args.count} programs on {models.lookup(args.cpu).name}, "
          f"{len(failures)} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
