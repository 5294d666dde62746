"""The SSE execution unit: integer lane arithmetic and IEEE lane arithmetic under MXCSR.

Translated code (``kvmpy.hw.insn.sse``) keeps XMM registers as 128-bit Python ints (MMX
registers as 64-bit ints) and calls these functions, reachable as ``cpu.fpu.sse``, for
everything that is more than a bitwise operation or a move.  Integer functions take and
return whole registers; ``n`` is the register width in bytes (16 for XMM, 8 for MMX).
Floating-point functions take the processor, raise its MXCSR flags and, when a raised
flag is unmasked, the SIMD floating-point exception (#XM, or #UD without CR4.OSXMMEXCPT)
before the destination is written.
"""

from __future__ import annotations

import struct

from kvmpy.hw.fpu import softfloat as sf
from kvmpy.hw.events import Fault
from kvmpy.hw.fpu.softfloat import F32, F64, IE, DE, QNAN, SNAN

_SIZE = {"b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "q": 8, "Q": 8}
_UNSIGNED = {1: "B", 2: "H", 4: "I", 8: "Q"}
_SIGNED = {1: "b", 2: "h", 4: "i", 8: "q"}
_CACHE: dict = {}


def _st(code: str, n: int) -> struct.Struct:
    key = (code, n)
    s = _CACHE.get(key)
    if s is None:
        s = _CACHE[key] = struct.Struct("<%d%s" % (n // _SIZE[code], code))
    return s


def split(v: int, code: str, n: int = 16) -> tuple:
    """Lanes of a register (struct code: b/B h/H i/I q/Q = signed/unsigned 8..64 bits)."""
    return _st(code, n).unpack(v.to_bytes(n, "little"))


def join(lanes, size: int) -> int:
    """A register from lane values (taken modulo the lane width)."""
    m = (1 << (8 * size)) - 1
    return int.from_bytes(_st(_UNSIGNED[size], len(lanes) * size).pack(*[x & m for x in lanes]), "little")


# --- integer lanes ---------------------------------------------------------------------
def _sat(v, lo, hi):
    return lo if v < lo else hi if v > hi else v


def _range(code):
    bits = 8 * _SIZE[code]
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)


def _lanewise(fn):
    def op(a, b, code, n=16):
        return join([fn(x, y, code) for x, y in zip(split(a, code, n), split(b, code, n))], _SIZE[code])
    return op


add = _lanewise(lambda x, y, c: x + y)
sub = _lanewise(lambda x, y, c: x - y)
adds = _lanewise(lambda x, y, c: _sat(x + y, *_range(c)))
subs = _lanewise(lambda x, y, c: _sat(x - y, *_range(c)))
minimum = _lanewise(lambda x, y, c: min(x, y))
maximum = _lanewise(lambda x, y, c: max(x, y))
cmpeq = _lanewise(lambda x, y, c: -1 if x == y else 0)
cmpgt = _lanewise(lambda x, y, c: -1 if x > y else 0)
avg = _lanewise(lambda x, y, c: (x + y + 1) >> 1)
mullo = _lanewise(lambda x, y, c: x * y)
mulhi = _lanewise(lambda x, y, c: (x * y) >> (8 * _SIZE[c]))
mulhrs = _lanewise(lambda x, y, c: (((x * y) >> 14) + 1) >> 1)
sign = _lanewise(lambda x, y, c: -x if y < 0 else (0 if y == 0 else x))


def absolute(b, code, n=16):
    return join([abs(x) for x in split(b, code, n)], _SIZE[code])


def mul_even(a, b, code, n=16):
    """PMULUDQ / PMULDQ: the even 32-bit lanes multiplied into 64-bit lanes."""
    x, y = split(a, code, n), split(b, code, n)
    return join([x[i] * y[i] for i in range(0, len(x), 2)], 8)


def maddwd(a, b, n=16):
    x, y = split(a, "h", n), split(b, "h", n)
    return join([x[i] * y[i] + x[i + 1] * y[i + 1] for i in range(0, len(x), 2)], 4)


def maddubsw(a, b, n=16):
    x, y = split(a, "B", n), split(b, "b", n)
    return join([_sat(x[i] * y[i] + x[i + 1] * y[i + 1], -32768, 32767) for i in range(0, len(x), 2)], 2)


def sadbw(a, b, n=16):
    x, y = split(a, "B", n), split(b, "B", n)
    return join([sum(abs(x[i] - y[i]) for i in range(k, k + 8)) for k in range(0, n, 8)], 8)


def mpsadbw(a, b, imm):
    """MPSADBW: eight sums of absolute differences of a 4-byte block of b (imm[1:0]) against
    sliding 4-byte windows of a starting at byte 4*imm[2]."""
    x, y = split(a, "B"), split(b, "B")
    src, dst = 4 * (imm & 3), 4 * (imm >> 2 & 1)
    return join([sum(abs(x[dst + i + j] - y[src + j]) for j in range(4)) for i in range(8)], 2)


def pack(a, b, code, out_code, n=16):
    """PACKSSWB/PACKSSDW/PACKUSWB/PACKUSDW: saturate the lanes of a then b to half width."""
    lo, hi = _range(out_code)
    return join([_sat(x, lo, hi) for x in split(a, code, n) + split(b, code, n)], _SIZE[out_code])


def unpack_lo(a, b, size, n=16):
    x, y = split(a, _UNSIGNED[size], n), split(b, _UNSIGNED[size], n)
    half = len(x) // 2
    return join([v for i in range(half) for v in (x[i], y[i])], size)


def unpack_hi(a, b, size, n=16):
    x, y = split(a, _UNSIGNED[size], n), split(b, _UNSIGNED[size], n)
    half = len(x) // 2
    return join([v for i in range(half, 2 * half) for v in (x[i], y[i])], size)


def hadd(a, b, code, subtract=False, saturate=False, n=16):
    """PHADD/PHSUB (W, D, SW): pairs of a, then pairs of b."""
    lo, hi = _range(code)
    out = []
    for v in (split(a, code, n), split(b, code, n)):
        for i in range(0, len(v), 2):
            r = v[i] - v[i + 1] if subtract else v[i] + v[i + 1]
            out.append(_sat(r, lo, hi) if saturate else r)
    return join(out, _SIZE[code])


def shift(a, count, size, kind, n=16):
    """PSLL/PSRL/PSRA by ``count`` bits (kind 'l', 'r', 'a'); counts past the lane width
    clear the lane (or fill it with the sign)."""
    bits = 8 * size
    if kind == "a":
        c = min(count, bits - 1)
        return join([x >> c for x in split(a, _SIGNED[size], n)], size)
    if count >= bits:
        return 0
    if kind == "l":
        return join([x << count for x in split(a, _UNSIGNED[size], n)], size)
    return join([x >> count for x in split(a, _UNSIGNED[size], n)], size)


def movmsk(a, size, n=16):
    """PMOVMSKB / MOVMSKPS / MOVMSKPD: the top bit of each lane."""
    r = 0
    for i, x in enumerate(split(a, _UNSIGNED[size], n)):
        r |= (x >> (8 * size - 1)) << i
    return r


def shuffle_lanes(a, order, size, n=16):
    x = split(a, _UNSIGNED[size], n)
    return join([x[i] for i in order], size)


def pshufd(b, imm):
    return shuffle_lanes(b, [(imm >> (2 * i)) & 3 for i in range(4)], 4)


def pshufw(b, imm, high):
    """PSHUFHW (high) / PSHUFLW: shuffle the words of one quadword, keep the other."""
    order = [(imm >> (2 * i)) & 3 for i in range(4)]
    order = list(range(4)) + [4 + o for o in order] if high else order + list(range(4, 8))
    return shuffle_lanes(b, order, 2)


def shufps(a, b, imm):
    x, y = split(a, "I"), split(b, "I")
    return join([x[imm & 3], x[imm >> 2 & 3], y[imm >> 4 & 3], y[imm >> 6 & 3]], 4)


def shufpd(a, b, imm):
    return join([split(a, "Q")[imm & 1], split(b, "Q")[imm >> 1 & 1]], 8)


def pshufb(a, b, n=16):
    x = split(a, "B", n)
    return join([0 if c & 0x80 else x[c & (n - 1)] for c in split(b, "B", n)], 1)


def palignr(a, b, imm, n=16):
    return ((a << (8 * n) | b) >> (8 * imm)) & ((1 << (8 * n)) - 1) if imm < 2 * n else 0


def blend(a, b, mask_bits, size):
    x, y = split(a, _UNSIGNED[size]), split(b, _UNSIGNED[size])
    return join([y[i] if mask_bits >> i & 1 else x[i] for i in range(len(x))], size)


def blendv(a, b, mask, size):
    """PBLENDVB/BLENDVPS/BLENDVPD: lanes of b where the mask lane's top bit is set."""
    return blend(a, b, movmsk(mask, size), size)


def extend(b, code, size):
    """PMOVSX/PMOVZX: the low lanes of b widened to ``size`` bytes."""
    x = split(b, code)
    return join(list(x[:16 // size]), size)


def minpos(b):
    x = split(b, "H")
    i = min(range(8), key=lambda k: (x[k], k))
    return x[i] | i << 16


def insertps(a, b_lane, imm):
    x = list(split(a, "I"))
    x[imm >> 4 & 3] = b_lane
    return join([0 if imm >> i & 1 else v for i, v in enumerate(x)], 4)


# --- floating point --------------------------------------------------------------------
def _xm(cpu, flags):
    """Raise the MXCSR flags; #XM (#UD without OSXMMEXCPT) if any is unmasked."""
    fpu = cpu.fpu
    mx = fpu.mxcsr
    if flags & sf.TINY_EXACT and not mx & 0x800:
        flags |= sf.UE
    flags &= 0x3F
    fpu.mxcsr = mx | flags
    if flags & ~(mx >> 7):
        raise Fault(19 if cpu.cr4 & 0x400 else 6)


def _ctx(cpu):
    mx = cpu.fpu.mxcsr
    return (mx >> 13) & 3, bool(mx & 0x8000), bool(mx & 0x40)


def _nan_result(ua, ub, x, y, f):
    """SSE NaN propagation: the first source's NaN (quieted), else the second's; IE on SNaN."""
    flags = IE if ua[0] == SNAN or (ub is not None and ub[0] == SNAN) else 0
    if ua[0] >= QNAN:
        return sf.quiet(x, f), flags
    return sf.quiet(y, f), flags


_ARITH = {"add": sf.add, "mul": sf.mul, "div": sf.div}


def _lane_arith(op, x, y, f, rc, ftz, daz):
    ua, ub = sf.unpack(x, f, daz), sf.unpack(y, f, daz)
    if op in ("min", "max"):
        if ua[0] >= QNAN or ub[0] >= QNAN:
            return _daz_bits(y, ub, f), IE
        c = sf.compare(ua, ub)
        keep_a = c < 0 if op == "min" else c > 0
        r = _daz_bits(x, ua, f) if keep_a else _daz_bits(y, ub, f)
        return r, (DE if ua[4] or ub[4] else 0)
    if op == "sqrt":
        if ub[0] >= QNAN:
            return _nan_result(ub, None, y, y, f)
        r, fl = sf.sqrt(ub, f, rc, ftz)
        return r, fl if fl & IE or not ub[4] else fl | DE
    if ua[0] >= QNAN or ub[0] >= QNAN:
        return _nan_result(ua, ub, x, y, f)
    den = DE if ua[4] or ub[4] else 0
    if op == "sub":
        ub = (ub[0], ub[1] ^ 1) + ub[2:]
        op = "add"
    r, fl = _ARITH[op](ua, ub, f, rc, ftz)
    return r, fl | den


def _daz_bits(bits, u, f):
    """A source returned as the result: a denormal read as zero (DAZ) is returned as that zero."""
    return sf.pack_special(sf.ZERO, u[1], f) if u[0] == sf.ZERO else bits


def _fmt(size):
    return F32 if size == 4 else F64


def arith(cpu, op, a, b, size, count):
    """ADD/SUB/MUL/DIV/MIN/MAX/SQRT on the low ``count`` lanes of ``size`` bytes of a and b;
    returns the new destination (the other lanes of a kept)."""
    rc, ftz, daz = _ctx(cpu)
    f = _fmt(size)
    code = _UNSIGNED[size]
    x, y = list(split(a, code)), split(b, code)
    flags = 0
    for i in range(count):
        x[i], fl = _lane_arith(op, x[i], y[i], f, rc, ftz, daz)
        flags |= fl
    _xm(cpu, flags)
    return join(x, size)


def horizontal(cpu, op, a, b, size):
    """HADDPS/HADDPD/HSUBPS/HSUBPD: pairs of a, then pairs of b."""
    rc, ftz, daz = _ctx(cpu)
    f = _fmt(size)
    code = _UNSIGNED[size]
    flags = 0
    out = []
    for v in (split(a, code), split(b, code)):
        for i in range(0, len(v), 2):
            r, fl = _lane_arith(op, v[i], v[i + 1], f, rc, ftz, daz)
            out.append(r)
            flags |= fl
    _xm(cpu, flags)
    return join(out, size)


def addsub(cpu, a, b, size):
    rc, ftz, daz = _ctx(cpu)
    f = _fmt(size)
    code = _UNSIGNED[size]
    x, y = list(split(a, code)), split(b, code)
    flags = 0
    for i in range(len(x)):
        x[i], fl = _lane_arith("add" if i & 1 else "sub", x[i], y[i], f, rc, ftz, daz)
        flags |= fl
    _xm(cpu, flags)
    return join(x, size)


# CMPPS predicates: (true when less, equal, greater, unordered; signals on QNaN)
_PRED = [(0, 1, 0, 0, 0), (1, 0, 0, 0, 1), (1, 1, 0, 0, 1), (0, 0, 0, 1, 0),
         (1, 0, 1, 1, 0), (0, 1, 1, 1, 1), (0, 0, 1, 1, 1), (1, 1, 1, 0, 0)]


def _relation(ua, ub):
    """0 less, 1 equal, 2 greater, 3 unordered."""
    if ua[0] >= QNAN or ub[0] >= QNAN:
        return 3
    return sf.compare(ua, ub) + 1


def cmp(cpu, a, b, size, count, pred):
    rc, ftz, daz = _ctx(cpu)
    f = _fmt(size)
    code = _UNSIGNED[size]
    x, y = list(split(a, code)), split(b, code)
    p = _PRED[pred & 7]
    flags = 0
    for i in range(count):
        ua, ub = sf.unpack(x[i], f, daz), sf.unpack(y[i], f, daz)
        rel = _relation(ua, ub)
        if SNAN in (ua[0], ub[0]) or (rel == 3 and p[4]):
            flags |= IE
        elif rel != 3 and (ua[4] or ub[4]):
            flags |= DE
        x[i] = -1 if p[rel] else 0
    _xm(cpu, flags)
    return join(x, size)


def comi(cpu, a, b, size, signal_qnan):
    """COMISS/UCOMISS (SD): the ZF/PF/CF pattern of the relation."""
    daz = bool(cpu.fpu.mxcsr & 0x40)
    f = _fmt(size)
    m = (1 << (8 * size)) - 1
    ua, ub = sf.unpack(a & m, f, daz), sf.unpack(b & m, f, daz)
    rel = _relation(ua, ub)
    if SNAN in (ua[0], ub[0]) or (rel == 3 and signal_qnan):
        _xm(cpu, IE)
    elif rel != 3 and (ua[4] or ub[4]):
        _xm(cpu, DE)
    return (0x1, 0x40, 0, 0x45)[rel]


def cvt_f2f(cpu, b, src_size, dst_size, count):
    """CVTSS2SD/CVTSD2SS/CVTPS2PD/CVTPD2PS lanes -> list of converted lanes."""
    rc, ftz, daz = _ctx(cpu)
    fs, fd = _fmt(src_size), _fmt(dst_size)
    out, flags = [], 0
    for x in split(b, _UNSIGNED[src_size])[:count]:
        u = sf.unpack(x, fs, daz)
        if u[0] >= QNAN:
            out.append(sf.convert_nan(x, fs, fd))
            flags |= IE if u[0] == SNAN else 0
        elif u[0] in (sf.ZERO, sf.INF):
            out.append(sf.pack_special(u[0], u[1], fd))
        else:
            r, fl = sf.round_pack(u[1], u[2], u[3], fd, rc, ftz)
            out.append(r)
            flags |= fl | (DE if u[4] else 0)
    _xm(cpu, flags)
    return out


def cvt_f2i(cpu, b, src_size, bits, count, truncate):
    """CVT(T)SS2SI/SD2SI/PS2DQ/PD2DQ lanes -> list of integers (masked to ``bits``)."""
    rc, _, daz = _ctx(cpu)
    f = _fmt(src_size)
    out, flags = [], 0
    for x in split(b, _UNSIGNED[src_size])[:count]:
        v, fl = sf.to_int(sf.unpack(x, f, daz), bits, sf.RZ if truncate else rc)
        out.append(v)
        flags |= fl
    _xm(cpu, flags)
    return out


def cvt_i2f(cpu, values, dst_size):
    """CVTSI2SS/SD, CVTDQ2PS/PD: signed integers -> list of lanes."""
    rc = (cpu.fpu.mxcsr >> 13) & 3
    f = _fmt(dst_size)
    out, flags = [], 0
    for v in values:
        r, fl = sf.from_int(v, f, rc)
        out.append(r)
        flags |= fl
    _xm(cpu, flags)
    return out


def round_lanes(cpu, b, size, count, imm):
    """ROUNDPS/PD/SS/SD: lanes rounded to integral values -> list of lanes."""
    rc, _, daz = _ctx(cpu)
    if not imm & 4:
        rc = imm & 3
    f = _fmt(size)
    out, flags = [], 0
    for x in split(b, _UNSIGNED[size])[:count]:
        u = sf.unpack(x, f, daz)
        if u[0] >= QNAN:
            out.append(sf.quiet(x, f))
            flags |= IE if u[0] == SNAN else 0
            continue
        r, fl = sf.round_to_integral(u, f, rc)
        out.append(x if r is None else r)
        flags |= 0 if imm & 8 else fl
    _xm(cpu, flags)
    return out


def _approx(x, rsqrt):
    """RCP/RSQRT of one single: the exact reciprocal (square root) rounded to single, well
    inside the architectural 1.5 * 2**-12 relative error; denormal inputs count as zero and
    results below the normal range flush to zero.  MXCSR is neither read nor changed."""
    u = sf.unpack(x, F32, daz=True)
    c, s = u[0], u[1]
    if c >= QNAN:
        return sf.quiet(x, F32)
    if c == sf.ZERO:
        return sf.pack_special(sf.INF, s, F32)
    if rsqrt and s:
        return F32.indef
    if c == sf.INF:
        return sf.pack_special(sf.ZERO, s, F32)
    if rsqrt:
        u = sf.unpack(sf.sqrt(u, F64, sf.RN)[0], F64)
    return sf.div((sf.FINITE, 0, 1, 0, False), u, F32, sf.RN, True)[0]


def approx(b, count, rsqrt):
    """RCPPS/RCPSS/RSQRTPS/RSQRTSS -> list of lanes."""
    return [_approx(x, rsqrt) for x in split(b, "I")[:count]]


def dot(cpu, a, b, size, imm):
    """DPPS/DPPD: products of the lanes selected by imm[7:4], summed in the order of the
    hardware's adder tree, broadcast to the lanes selected by imm[3:0]."""
    rc, ftz, daz = _ctx(cpu)
    code = _UNSIGNED[size]
    x, y = split(a, code), split(b, code)
    flags = 0
    prods = []
    for i in range(len(x)):
        if imm >> (4 + i) & 1:
            p, fl = _lane_arith("mul", x[i], y[i], _fmt(size), rc, ftz, daz)
        else:
            p, fl = 0, 0
        prods.append(p)
        flags |= fl

    def add2(p, q):
        nonlocal flags
        r, fl = _lane_arith("add", p, q, _fmt(size), rc, ftz, daz)
        flags |= fl
        return r
    total = add2(prods[0], prods[1]) if size == 8 else add2(add2(prods[0], prods[1]), add2(prods[2], prods[3]))
    _xm(cpu, flags)
    return join([total if imm >> i & 1 else 0 for i in range(len(x))], size)


# SSE4.2's units, reached from translated code like the rest of this module (``SV.<name>``)
from kvmpy.hw.fpu.sse42 import crc32c, explicit_length, implicit_length, pcmpstr  # noqa: E402,F401
