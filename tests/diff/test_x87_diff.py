"""x87 instructions on kvmpy's processor against the host CPU (the silicon oracle).

Each snippet re-initialises the x87 (FNINIT), loads a control word and 80-bit inputs from the
data page, runs the instructions under test, then stores the whole stack (FSTP m80 until
empty, as a compiler would), the status word and the control word back to the data page;
everything must match the silicon byte for byte: values, condition codes, exception flags,
TOP and stack faults, under every rounding mode and precision control setting.  The one
exception is transcendentals of ordinary arguments, compared within 1 ulp (``X87Approx``).
"""

import dataclasses
import random
import struct

import pytest

from tests.support.fpu_oracle import Batch
from tests.oracle.native import DATA_ADDR, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

D = DATA_ADDR
IN, OUT, CW_IN, SW_OUT, CW_OUT, FL_OUT, ENV_OUT = 0x000, 0x800, 0xFF0, 0xFF4, 0xFF6, 0xFF8, 0x900
NIN = 8


def x80(v):
    """80-bit extended bits of a Python float (exact)."""
    b = struct.unpack("<Q", struct.pack("<d", v))[0]
    s, e, m = b >> 63, (b >> 52) & 0x7FF, b & ((1 << 52) - 1)
    if e == 0x7FF:
        return s << 79 | 0x7FFF << 64 | 1 << 63 | m << 11
    if e == 0:
        if m == 0:
            return s << 79
        k = m.bit_length()
        return s << 79 | (15361 - 52 + k) << 64 | m << (64 - k)
    return s << 79 | (e - 1023 + 16383) << 64 | 1 << 63 | m << 11


E80 = [0, 1 << 79, x80(1.0), x80(-1.0), x80(1.5), x80(3.0), x80(0.1), x80(-2.5), x80(1e300), x80(1e-300),
       0x7FFE_FFFFFFFFFFFFFFFF, 0xFFFE_FFFFFFFFFFFFFFFF, 0x0001_8000000000000000, 0x0000_0000000000000001,
       0x0000_4000000000000000, 0x8000_7FFFFFFFFFFFFFFF, 0x7FFF_8000000000000000, 0xFFFF_8000000000000000,
       0x7FFF_C000000000000000, 0xFFFF_C000000000000000, 0x7FFF_A000000000012345, 0xFFFF_E000000000054321,
       0x3FFF_FFFFFFFFFFFFFFFF, 0x3FFF_8000000000000001, 0x403E_8000000000000000, 0xC03E_8000000000000001,
       0x401D_FFFFFFFF80000000, x80(2.5), x80(0.5), x80(-0.5), 0x3FFE_C90FDAA22168C235, x80(32767.5)]
CWS = [0x37F, 0x27F, 0x07F, 0x77F, 0xB7F, 0xF7F, 0x67F, 0xA7F]


class X87(Batch):
    def add(self, body, values, cw=0x37F, regs=None, flags=False, env=False):
        """``values``: 80-bit inputs at data+0, +16, ... (fld tbyte [D + 16*i])."""
        mem = bytearray(4096)
        for i, v in enumerate(values):
            mem[IN + 16 * i:IN + 16 * i + 10] = (v & ((1 << 80) - 1)).to_bytes(10, "little")
        mem[CW_IN:CW_IN + 2] = cw.to_bytes(2, "little")
        body = body if isinstance(body, list) else [body]
        lines = ["fninit", "fldcw [%#x]" % (D + CW_IN)] + body
        if flags:
            lines += ["pushfq", "pop rax", "and eax, 0x8d5", "mov [%#x], eax" % (D + FL_OUT)]
        lines += ["fnstsw [%#x]" % (D + SW_OUT), "fnstcw [%#x]" % (D + CW_OUT)]
        if env:
            lines += ["fnstenv [%#x]" % (D + ENV_OUT),
                      "mov qword ptr [%#x], 0" % (D + ENV_OUT + 12), "mov qword ptr [%#x], 0" % (D + ENV_OUT + 20)]
        lines += ["fldcw [%#x]" % (D + CW_IN + 8)]          # mask everything before emptying the stack
        mem[CW_IN + 8:CW_IN + 10] = (0x37F).to_bytes(2, "little")
        lines += ["fnclex"]
        for k in range(8):          # pop the stack to the data page, skipping empty registers
            lines += ["fxam", "fnstsw ax", "and ax, 0x4500", "cmp ax, 0x4100", "jne 2f", "fincstp", "jmp 3f",
                      "2:", "fstp tbyte ptr [%#x]" % (D + OUT + 16 * k), "3:"]
        title = "[%s] cw=%#x in=%s" % ("; ".join(body), cw, [hex(v) for v in values])
        super().add(lines, mem, regs, title)


def m(i, size="tbyte"):
    return "%s ptr [%#x]" % (size, D + IN + 16 * i)


def sample(r, n):
    return [(r.choice(E80) if r.random() < 0.7 else r.getrandbits(80) | 1 << 63) for _ in range(n)]


ARITH = ("fadd", "fsub", "fsubr", "fmul", "fdiv", "fdivr")


def test_arithmetic(run_snippet):
    b = X87()
    r = random.Random("arith")
    for op in ARITH:
        for cw in CWS:
            for _ in range(3):
                v = sample(r, 4)
                b.add(["fld " + m(0), "fld " + m(1), "%s st, st(1)" % op, "fld " + m(2), "%s st(2), st" % op,
                       "fld " + m(3), "%sp st(1), st" % op], v, cw)
            v = [r.choice(E80), struct.unpack("<Q", struct.pack("<d", r.choice([0.1, -3.5, 1e-310, 1e308])))[0],
                 struct.unpack("<I", struct.pack("<f", r.choice([0.1, -3.5, 1e-40, 3e38])))[0],
                 r.choice([0, 1, -1, 32767, -32768, 12345]) & 0xFFFF, r.getrandbits(32)]
            b.add(["fld " + m(0), "%s %s" % (op, m(1, "qword")), "fld " + m(0), "%s %s" % (op, m(2, "dword")),
                   "fld " + m(0), "fi%s %s" % (op[1:], m(3, "word")), "fld " + m(0),
                   "fi%s %s" % (op[1:], m(4, "dword"))], v, cw)
    b.check(run_snippet)


def test_loads_and_stores(run_snippet):
    b = X87()
    r = random.Random("ldst")
    f32s = [0, 0x80000000, 0x3F800000, 0x00000001, 0x807FFFFF, 0x7F800000, 0x7FC00000, 0x7F800001, 0xFFA00001,
            0x7F7FFFFF]
    f64s = [0, 1 << 63, 0x3FF0000000000000, 1, 0x800FFFFFFFFFFFFF, 0x7FF0000000000000, 0x7FF8000000000000,
            0x7FF0000000000001, 0xFFF4000000000001, 0x7FEFFFFFFFFFFFFF]
    for a, c in zip(f32s, f64s):
        b.add(["fld " + m(0, "dword"), "fld " + m(1, "qword")], [a, c])
    for cw in CWS:
        for _ in range(4):
            v = sample(r, 1)
            b.add(["fld " + m(0), "fst " + "dword ptr [%#x]" % (D + 0x900), "fst qword ptr [%#x]" % (D + 0x910),
                   "fist word ptr [%#x]" % (D + 0x920), "fist dword ptr [%#x]" % (D + 0x930),
                   "fld st(0)", "fistp qword ptr [%#x]" % (D + 0x940), "fld st(0)",
                   "fisttp dword ptr [%#x]" % (D + 0x950), "fld st(0)", "fisttp qword ptr [%#x]" % (D + 0x958),
                   "fld st(0)", "fisttp word ptr [%#x]" % (D + 0x960)], v, cw)
        for val in (0.5, 1.5, 2.5, -0.5, -1.5, 32767.5, -32768.5, 2147483647.5, 2.0 ** 63, -2.0 ** 63, 1e19):
            b.add(["fld " + m(0), "fist word ptr [%#x]" % (D + 0x920), "fist dword ptr [%#x]" % (D + 0x930),
                   "fld st(0)", "fistp qword ptr [%#x]" % (D + 0x940)], [x80(val)], cw)
    for v in (0, 1, -1, 0x7FFF, -0x8000, 2 ** 31 - 1, -2 ** 31, 2 ** 63 - 1, -2 ** 63):
        b.add(["fild word ptr [%#x]" % (D + IN), "fild dword ptr [%#x]" % (D + IN), "fild " + m(0, "qword")],
              [v & (2 ** 64 - 1)])
    b.check(run_snippet)


def test_compares(run_snippet):
    b = X87()
    r = random.Random("cmp")
    for _ in range(40):
        v = sample(r, 2)
        b.add(["fld " + m(1), "fld " + m(0), "fcom st(1)", "fnstsw ax", "mov [%#x], ax" % (D + 0x900),
               "fucom st(1)", "fnstsw ax", "mov [%#x], ax" % (D + 0x902), "ftst", "fnstsw ax",
               "mov [%#x], ax" % (D + 0x904), "fxam", "fnstsw ax", "mov [%#x], ax" % (D + 0x906),
               "fcomi st, st(1)", "pushfq", "pop rax", "and eax, 0x8d5", "mov [%#x], eax" % (D + 0x908),
               "fucomip st, st(1)"], v, flags=True)
        b.add(["fld " + m(1), "fld " + m(0), "fcompp"], v)
        b.add(["fld " + m(1), "fld " + m(0), "fucompp"], v)
        b.add(["fld " + m(0), "fcom dword ptr [%#x]" % (D + 0x20), "fnstsw ax", "mov [%#x], ax" % (D + 0x900),
               "ficomp dword ptr [%#x]" % (D + 0x20)], v + [r.getrandbits(32)])
    b.check(run_snippet)


def test_unary_and_misc(run_snippet):
    b = X87()
    r = random.Random("misc")
    for cw in CWS:
        for _ in range(4):
            v = sample(r, 2)
            for op in ("fchs", "fabs", "fsqrt", "frndint", "fscale", "fxtract", "fprem", "fprem1", "fxch st(1)"):
                b.add(["fld " + m(1), "fld " + m(0), op], v, cw)
        for c in ("fld1", "fldz", "fldpi", "fldl2e", "fldl2t", "fldlg2", "fldln2"):
            b.add([c], [], cw)
    for x, y in ((10.0, 3.0), (-10.0, 3.0), (7.5, -2.0), (1e30, 7.0), (5.0, 0.0), (2.0 ** 60, 3.0), (1.0, 10.0)):
        b.add(["fld " + m(1), "fld " + m(0), "fprem", "fld " + m(1), "fld " + m(0), "fprem1"], [x80(x), x80(y)])
    for s in (3.0, -3.7, 16400.0, -16500.0, 0.0):
        b.add(["fld " + m(1), "fld " + m(0), "fscale"], [x80(1.5), x80(s)])
    b.add(["fld1"] * 9, [])                                            # stack overflow
    b.add(["fld1", "fadd st, st(3)", "fxch st(5)", "fst st(6)"], [])     # stack underflow
    b.add(["fld1", "fldz", "fincstp", "fincstp", "fdecstp", "ffree st(0)", "fld " + m(0)], [x80(2.0)])
    for cc in ("fcmovb", "fcmove", "fcmovbe", "fcmovu", "fcmovnb", "fcmovne", "fcmovnbe", "fcmovnu"):
        for flags in (0, 1, 0x40, 0x4, 0x41):
            b.add(["fld " + m(1), "fld " + m(0), "push %d" % flags, "popfq", "%s st, st(1)" % cc],
                  [x80(1.0), x80(2.0)])
    b.add(["fld " + m(0), "fld " + m(1), "faddp st(1), st"], [x80(1.0), x80(2.0)], env=True)
    consts = ["fld1", "fldpi", "fldz", "fldl2e", "fldl2t", "fldlg2", "fldln2", "fld1"]    # all 8 valid
    b.add(consts + ["fnsave [%#x]" % (D + 0xA00), "mov qword ptr [%#x], 0" % (D + 0xA0C),
           "mov qword ptr [%#x], 0" % (D + 0xA14), "frstor [%#x]" % (D + 0xA00), "fadd st, st(1)"], [])
    b.check(run_snippet)


def test_exceptions(run_snippet):
    b = X87()
    b.add(["fld " + m(0), "fsqrt", "fld1"], [x80(-1.0)], 0x37E)                 # IE unmasked: #MF at fld1
    b.add(["fld1", "fldz", "fdivp st(1), st", "fld1"], [], 0x37B)               # ZE unmasked
    b.add(["fld1", "fldz", "fdivp st(1), st", "fnstsw ax", "fnclex", "fld1"], [], 0x37B)
    b.add(["fld " + m(0), "fld " + m(0), "fmulp st(1), st", "fst dword ptr [%#x]" % (D + 0x900)], [x80(1e300)], 0x377)
    b.add(["fldcw [%#x]" % (D + 0xFE0), "fnstcw [%#x]" % (D + 0x900)], [])
    b.check(run_snippet)


# --- transcendentals and packed BCD ----------------------------------------------------------
ULP_TOLERANCE = 1
C1 = 0x200
INF80, NAN80, SNAN80 = 0x7FFF_8000000000000000, 0x7FFF_C000000000000000, 0x7FFF_A000000000000001
SPECIALS = [0, 1 << 79, INF80, INF80 | 1 << 79, NAN80, SNAN80 | 1 << 79, x80(1.0), x80(-1.0), x80(2.0),
            x80(0.5), x80(-0.25), 0x0000_4000000000000000, 0x403E_8000000000000000, 0xC043_8000000000000000,
            0x403D_FFFFFFFFFFFFFFFF]


def _ulps(a, b):
    """Distance in units in the last place of two 80-bit finite values of the same sign."""
    if (a ^ b) >> 79 or (a >> 64 & 0x7FFF) == 0x7FFF:
        return 0 if a == b else 1 << 80
    return abs((a & ((1 << 79) - 1)) - (b & ((1 << 79) - 1)) + ((b >> 64) - (a >> 64) & 0x7FFF) * (1 << 63))


class X87Approx(X87):
    """Batch compared with a tolerance: silicon transcendentals are not always correctly
    rounded (AMD and Intel document errors up to about 1 ulp on the 64-bit significand),
    while kvmpy rounds the exact value; so each stored ST(i) may differ by ``ULP_TOLERANCE``
    ulp and the status word's C1 (round-up indication, which follows that rounding) is
    ignored.  Everything else (exception flags, C0/C2/C3, TOP, tags) must match exactly."""

    def tolerate(self, expected, actual):
        got = bytearray(actual.mem)
        for k in range(8):
            at = OUT + 16 * k
            e, a = (int.from_bytes(x[at:at + 10], "little") for x in (expected.mem, got))
            if _ulps(e, a) <= ULP_TOLERANCE:
                got[at:at + 10] = expected.mem[at:at + 10]
        got[SW_OUT + 1] = (got[SW_OUT + 1] & ~(C1 >> 8)) | (expected.mem[SW_OUT + 1] & (C1 >> 8))
        return dataclasses.replace(actual, mem=bytes(got))


UNARY_T = ("fsin", "fcos", "fsincos", "fptan", "f2xm1")
BINARY_T = ("fpatan", "fyl2x", "fyl2xp1")


def test_transcendental_special_values(run_snippet):
    """Zeros, infinities, NaNs, out-of-range arguments, exact cases and stack faults: exact."""
    b = X87()
    for v in SPECIALS[:6] + [0x403E_8000000000000000, 0xC043_8000000000000000]:     # ... and |x| >= 2**63
        for op in UNARY_T:
            if op != "f2xm1" or v < 0x403E << 64:
                b.add(["fld " + m(0), op], [v])
    b.add(["fld " + m(0), "f2xm1"], [x80(-1.0)])
    for y in SPECIALS[:8] + [x80(3.0)]:
        for x in SPECIALS[:8] + [x80(8.0), x80(0.25)]:
            if y in SPECIALS[:6] or x in SPECIALS[:6]:                 # both ordinary: the next test
                b.add(["fld " + m(0), "fld " + m(1), "fpatan"], [y, x])
            b.add(["fld " + m(0), "fld " + m(1), "fyl2x"], [y, x])
    for y in SPECIALS[:6] + [x80(3.0), x80(-3.0)]:
        for x in (0, 1 << 79, x80(0.25), x80(-0.25)):
            b.add(["fld " + m(0), "fld " + m(1), "fyl2xp1"], [y, x])
    for op in UNARY_T + BINARY_T:
        b.add([op], [])                                                 # stack underflow
        b.add(["fldz"] * 8 + [op], [])                                  # full stack (overflow for 2 results)
    b.add(["fld " + m(0), "fsin", "fld1"], [INF80], 0x37E)              # unmasked IE: #MF, ST0 kept
    b.add(["fld1", "fldz", "fyl2x", "fld1"], [], 0x37B)                 # unmasked ZE
    b.check(run_snippet)


def test_transcendental_values(run_snippet):
    """Ordinary arguments in every rounding mode, within ``ULP_TOLERANCE`` of the silicon."""
    b = X87Approx()
    r = random.Random("transcendental")
    pts = [0.1, -0.7, 1.0e-5, 0.78, -1.2, 1.5, 2.9, 100.0, -12345.678, 1e-300, 7.0e15]
    for cw in CWS[:4]:
        for v in pts:
            for op in ("fsin", "fcos", "fsincos", "fptan"):
                b.add(["fld " + m(0), op], [x80(v)], cw)
        for v in (0.1, -0.9, 0.5, 1e-10, -0.3, 0.99):
            b.add(["fld " + m(0), "f2xm1"], [x80(v)], cw)
            b.add(["fld " + m(0), "fld " + m(1), "fyl2xp1"], [x80(r.uniform(-4, 4)), x80(v * 0.29)], cw)
        for _ in range(6):
            y, x = r.uniform(-5, 5), r.choice([r.uniform(-5, 5), r.uniform(-1e-3, 1e3)])
            b.add(["fld " + m(0), "fld " + m(1), "fpatan"], [x80(y), x80(x)], cw)
            b.add(["fld " + m(0), "fld " + m(1), "fyl2x"], [x80(y), x80(abs(x) * r.choice([1, 1e-200, 1e200]))], cw)
    b.check(run_snippet)


def bcd(v):
    """Packed BCD bits of an integer (18 digits and a sign bit)."""
    return (1 << 79 if v < 0 else 0) | int(str(abs(v)), 16)


def test_packed_bcd(run_snippet):
    b = X87()
    for v in (0, 1, -1, 9, 123456789012345678, -999999999999999999, 10 ** 17):
        b.add(["fbld " + m(0), "fbld " + m(0), "fbstp " + "tbyte ptr [%#x]" % (D + 0x900)], [bcd(v)])
    b.add(["fbld " + m(0)], [1 << 79])                                  # -0
    for cw in CWS[:4]:
        for v in (0.5, 1.5, -2.5, -0.3, 0.0, -0.0, 1e17 + 0.5, 999999999999999999.4, 1e18, -1e18, 1e30, 2.0 ** 70,
                  float("inf"), float("nan"), 1e-310, 12345.678):
            b.add(["fld " + m(0), "fbstp tbyte ptr [%#x]" % (D + 0x900)], [x80(v)], cw)
    b.add(["fld " + m(0), "fbstp tbyte ptr [%#x]" % (D + 0x900), "fld1"], [x80(1e19)], 0x37E)     # IE unmasked
    b.add(["fbstp tbyte ptr [%#x]" % (D + 0x900)], [])                 # stack underflow
    b.add(["fld1"] * 8 + ["fbld " + m(0)], [bcd(42)])                  # stack overflow
    b.check(run_snippet)
