"""The x87 execution unit: register stack, status/control words and 80-bit arithmetic.

Translated code (``kvmpy.hw.insn.x87``) reads memory operands itself, calls these functions
(reachable as ``cpu.fpu.x87``) with the raw bits, and stores what they return before calling
``store_done``; so a memory fault never leaves the stack half changed.  Arithmetic is the
exact ``kvmpy.hw.fpu.softfloat`` core on the 64-bit significand, rounded as the control word says
(precision control applies to FADD/FSUB/FMUL/FDIV/FSQRT, as on the hardware), with the
x87's NaN rules, stack faults, condition codes (C1 = rounded up) and exception flags.

Unmasked exceptions set ES and B; the next waiting x87 instruction raises #MF (translated
code checks ES first).  Invalid, denormal and zero-divide exceptions that are unmasked
leave the destination unchanged; unmasked overflow/underflow deliver the masked result
(the hardware's exponent-wrapped result is not modelled).  The last-instruction and
last-operand pointers (FIP/FDP/FOP) are not tracked.

Transcendentals (FSIN, FCOS, FSINCOS, FPTAN, FPATAN, F2XM1, FYL2X, FYL2XP1) are computed
far beyond 64 bits by ``softfloat``'s fixed-point kernels and rounded once in the RC
direction; the trigonometric argument reduction uses the silicon's 68-bit pi, so those match
the hardware rather than the exact value for large arguments.  Precision control does not
apply to them, as on the hardware.  F2XM1 outside -1..+1 and FYL2XP1 outside its
documented range return the mathematical value (the hardware's result is undefined there).
FBLD/FBSTP convert 18-digit packed BCD; FBLD of invalid digits weighs them as they are.
"""

from __future__ import annotations

from kvmpy.hw.fpu import softfloat as sf
from kvmpy.hw.fpu.softfloat import DE, F32, F64, F80, FINITE, IE, INF, PE, QNAN, SNAN, UE, UP, ZE, ZERO

C0, C1, C2, C3 = 0x100, 0x200, 0x400, 0x4000
SF, ES, BUSY = 0x40, 0x80, 0x8000
CC = C0 | C1 | C2 | C3
INDEF = F80.indef
_FMT = {"f32": F32, "f64": F64, "f80": F80}
_INT_BITS = {"i16": 16, "i32": 32, "i64": 64}
_PC = {0: 24, 1: 64, 2: 53, 3: 64}
M64 = (1 << 64) - 1


# --- stack -------------------------------------------------------------------------------
def _phys(f, i):
    return (f.top + i) & 7


def _get(f, i):
    """ST(i) bits, or None when the register is empty."""
    p = (f.top + i) & 7
    return f.st[p] if f.ftw >> p & 1 else None


def _put(f, i, bits):
    p = (f.top + i) & 7
    f.st[p] = bits
    f.ftw |= 1 << p


def _pop(f):
    f.ftw &= ~(1 << f.top)
    f.top = (f.top + 1) & 7


def _push(f, bits):
    f.top = (f.top - 1) & 7
    _put(f, 0, bits)


def _signal(f, flags, cc=None):
    """Record exception flags (and the condition codes, C1 from rounding by default);
    returns True when the destination must not be written (unmasked IE/DE/ZE)."""
    if flags & sf.TINY_EXACT and not f.fcw & UE:
        flags |= UE
    if cc is None:
        cc = (f.fsw & (C0 | C2 | C3)) | (C1 if flags & UP else 0)
    ex = flags & 0x7F
    f.fsw = (f.fsw & ~CC) | cc | ex
    if ex & ~f.fcw & 0x3F:
        f.fsw |= ES | BUSY
    return bool(ex & ~f.fcw & (IE | DE | ZE))


def _underflow(f, cc=None):
    """Stack underflow: IE|SF, C1 = 0; True when IE is unmasked."""
    return _signal(f, IE | SF, cc if cc is not None else f.fsw & (C0 | C2 | C3))


def _ctx(f):
    return (f.fcw >> 10) & 3, _PC[(f.fcw >> 8) & 3]


# --- operands ----------------------------------------------------------------------------
def _from_int(v):
    """Unpacked exact integer operand and its 80-bit bits."""
    if v == 0:
        return (ZERO, 0, 0, 0, False), 0
    bits, _ = sf.from_int(v, F80, sf.RN)
    return (sf.FINITE, 1 if v < 0 else 0, abs(v), 0, False), bits


def _signed(raw, bits):
    return raw - (1 << bits) if raw >> (bits - 1) else raw


def _from_bcd(raw):
    """18 packed decimal digits and a sign bit -> (unpacked, bits); -0 stays negative."""
    v = sum(((raw >> 4 * i) & 15) * 10 ** i for i in range(18))
    sign = raw >> 79 & 1
    if v == 0:
        return (ZERO, sign, 0, 0, False), sign << 79
    return _from_int(-v if sign else v)


def mem_operand(kind, raw):
    """(unpacked, 80-bit bits) of a memory operand; NaNs keep their (un)quietness."""
    if kind == "bcd":
        return _from_bcd(raw)
    if kind in _INT_BITS:
        return _from_int(_signed(raw, _INT_BITS[kind]))
    fmt = _FMT[kind]
    u = sf.unpack(raw, fmt)
    if fmt is F80:
        return u, raw
    if u[0] >= QNAN:
        return u, sf.convert_nan(raw, fmt, F80, make_quiet=False)
    if u[0] in (ZERO, INF):
        return u, sf.pack_special(u[0], u[1], F80)
    return u, sf.round_pack(u[1], u[2], u[3], F80, sf.RN)[0]


def _nan_result(ops):
    """x87 NaN propagation over (unpacked, bits) operands: the QNaN over an SNaN, else the
    larger significand (the positive one on a tie); the result is quiet."""
    nans = [(u, b) for u, b in ops if u[0] >= QNAN]
    flags = IE if any(u[0] == SNAN for u, _ in ops) else 0
    if len(nans) == 2:
        (ua, a), (ub, b) = nans
        if ua[0] != ub[0]:
            pick = a if ua[0] == QNAN else b
        else:
            pick = max(a, b, key=lambda x: (x & M64, not x >> 79))
    else:
        pick = nans[0][1]
    return pick | F80.qbit, flags


def _denormal(*us):
    return DE if any(u[4] for u in us) else 0


# --- arithmetic --------------------------------------------------------------------------
_OPS = {"add": sf.add, "mul": sf.mul, "div": sf.div}


def _binary(op, ua, a, ub, b, rc, p):
    """a op b on unpacked operands -> (bits, flags)."""
    if ua[0] >= QNAN or ub[0] >= QNAN:
        return _nan_result([(ua, a), (ub, b)])
    if op in ("subr", "divr"):
        ua, ub = ub, ua
        op = op[:3]
    if op == "sub":
        ub = (ub[0], ub[1] ^ 1) + ub[2:]
        op = "add"
    r, fl = _OPS[op](ua, ub, F80, rc, False, p)
    if not fl & IE:
        fl |= _denormal(ua, ub)
    return r, fl


def arith(cpu, op, dst, src, kind=None, raw=0, pop=False):
    """ST(dst) = ST(dst) op (ST(src), or the memory operand when ``kind`` is given); an
    unmasked invalid/denormal/zero-divide exception leaves the stack as it was (no pop)."""
    f = cpu.fpu
    a = _get(f, dst)
    b = _get(f, src) if kind is None else None
    if a is None or (kind is None and b is None):
        if _underflow(f):
            return
        _put(f, dst, INDEF)
    else:
        ua = sf.unpack(a, F80)
        ub, b = mem_operand(kind, raw) if kind else (sf.unpack(b, F80), b)
        rc, p = _ctx(f)
        r, fl = _binary(op, ua, a, ub, b, rc, p)
        if _signal(f, fl):
            return
        _put(f, dst, r)
    if pop:
        _pop(f)


def _relation(ua, ub):
    if ua[0] >= QNAN or ub[0] >= QNAN:
        return 3
    return sf.compare(ua, ub) + 1


_FCOM_CC = (C0, C3, 0, C0 | C2 | C3)
_FCOMI_FLAGS = (0x1, 0x40, 0, 0x45)


def _compare(f, src, kind, raw, signal_qnan):
    """Relation of ST0 to the operand (0 less, 1 equal, 2 greater, 3 unordered) and flags."""
    a = _get(f, 0)
    b = _get(f, src) if kind is None else 0
    if a is None or b is None:
        return 3, IE | SF
    ua = sf.unpack(a, F80)
    ub = mem_operand(kind, raw)[0] if kind else sf.unpack(b, F80)
    rel = _relation(ua, ub)
    if SNAN in (ua[0], ub[0]) or (rel == 3 and signal_qnan):
        return rel, IE
    return rel, (_denormal(ua, ub) if rel != 3 else 0)


def fcom(cpu, src, kind=None, raw=0, pops=0, signal_qnan=True):
    """FCOM/FCOMP/FCOMPP/FUCOM*/FICOM*/FTST (kind 'zero'): C3 C2 C0 from the relation."""
    f = cpu.fpu
    if kind == "zero":
        kind, raw = "i16", 0
    rel, fl = _compare(f, src, kind, raw, signal_qnan)
    if _signal(f, fl, _FCOM_CC[rel]):
        return
    for _ in range(pops):
        _pop(f)


def fcomi(cpu, src, signal_qnan, pop):
    """FCOMI/FUCOMI(P): returns ZF/PF/CF for the translated code to set."""
    f = cpu.fpu
    rel, fl = _compare(f, src, None, 0, signal_qnan)
    if not _signal(f, fl, f.fsw & (CC if not fl & SF else C0 | C2 | C3)) and pop:     # C1 kept (AMD)
        _pop(f)
    return _FCOMI_FLAGS[rel]


# --- loads and stores ----------------------------------------------------------------------
def load(cpu, kind, raw):
    """FLD m32/m64/m80, FILD m16/m32/m64: push the converted operand."""
    f = cpu.fpu
    if _get(f, 7) is not None:              # stack overflow
        if not _signal(f, IE | SF | UP, C1):
            _push(f, INDEF)
        return
    u, bits = mem_operand(kind, raw)
    fl = 0
    if kind in ("f32", "f64"):
        if u[0] == SNAN:
            fl, bits = IE, bits | F80.qbit
        else:
            fl = _denormal(u)
    if not _signal(f, fl, f.fsw & (C0 | C2 | C3)):
        _push(f, bits)


def load_st(cpu, i):
    """FLD ST(i)."""
    f = cpu.fpu
    v = _get(f, i)
    if _get(f, 7) is not None:
        if not _signal(f, IE | SF | UP, C1):
            _push(f, INDEF)
    elif v is None:
        if not _underflow(f):
            _push(f, INDEF)
    else:
        _signal(f, 0, f.fsw & (C0 | C2 | C3))
        _push(f, v)


def load_const(cpu, name):
    """FLD1/FLDZ/FLDPI/FLDL2E/FLDL2T/FLDLG2/FLDLN2, rounded to 64 bits in the RC direction."""
    f = cpu.fpu
    if _get(f, 7) is not None:
        if not _signal(f, IE | SF | UP, C1):
            _push(f, INDEF)
        return
    mant, exp = _CONSTS[name]
    bits = sf.round_pack(0, mant, exp, F80, (f.fcw >> 10) & 3)[0] if mant else 0
    _signal(f, 0, f.fsw & (C0 | C2 | C3))
    _push(f, bits)


_CONSTS = {
    "one": (1, 0), "zero": (0, 0),
    "pi": (0xC90FDAA22168C234C4C6628B80DC1CD1, -126),
    "l2e": (0xB8AA3B295C17F0BBBE87FED0691D3E89, -127),
    "l2t": (0xD49A784BCD1B8AFE492BF6FF4DAFDB4D, -126),
    "lg2": (0x9A209A84FBCFF7988F8959AC0B7C9178, -129),
    "ln2": (0xB17217F7D1CF79ABC9E3B39803F2F6AF, -128),
}


BCD_INDEF = 0xFFFF << 64 | 0xC0 << 56
BCD_LIMIT = 10 ** 18


def _to_bcd(u, rc):
    """ST0 rounded to an integer as 18 packed BCD digits -> (bits, flags); NaN, infinity and
    magnitudes of 10**18 and more give the BCD indefinite with IE."""
    c, s, m, e, _ = u
    if c in (QNAN, SNAN, INF) or (c == FINITE and e + m.bit_length() > 60):
        return BCD_INDEF, IE
    v, fl = (0, 0) if c == ZERO else (m << e, 0) if e >= 0 else sf.round_int(s, m, e, rc)
    if v >= BCD_LIMIT:
        return BCD_INDEF, IE
    return s << 79 | int(str(v), 16), fl


def _indefinite(kind):
    if kind == "bcd":
        return BCD_INDEF
    if kind in _INT_BITS:
        return 1 << (_INT_BITS[kind] - 1)
    return _FMT[kind].indef


def store_value(cpu, kind, truncate=False):
    """The value FST/FIST(P)/FISTTP would store from ST0 -> (value or None, flags)."""
    f = cpu.fpu
    a = _get(f, 0)
    if a is None:
        return (None if ~f.fcw & IE else _indefinite(kind)), IE | SF
    if kind == "f80":
        return a, 0
    u = sf.unpack(a, F80)
    rc = sf.RZ if truncate else (f.fcw >> 10) & 3
    if kind == "bcd":
        v, fl = _to_bcd(u, rc)
    elif kind in _INT_BITS:
        v, fl = sf.to_int(u, _INT_BITS[kind], rc)
    else:
        fmt = _FMT[kind]
        if u[0] >= QNAN:
            v, fl = sf.convert_nan(a, F80, fmt), (IE if u[0] == SNAN else 0)
        elif u[0] in (ZERO, INF):
            v, fl = sf.pack_special(u[0], u[1], fmt), 0
        else:
            v, fl = sf.round_pack(u[1], u[2], u[3], fmt, rc)
    if fl & sf.TINY_EXACT and not f.fcw & UE:
        fl |= UE
    if fl & ~f.fcw & 0x3F & ~PE:
        return None, fl
    return v, fl


def store_done(cpu, flags, pop):
    """Record a store's flags and pop, unless an unmasked exception suppressed the store."""
    f = cpu.fpu
    suppressed = flags & ~f.fcw & 0x3F & ~PE
    _signal(f, flags & ~UP if suppressed else flags, f.fsw & (C0 | C2 | C3) if flags & SF else None)
    if pop and not suppressed:
        _pop(f)


def store_st(cpu, i, pop):
    """FST/FSTP ST(i)."""
    f = cpu.fpu
    a = _get(f, 0)
    if a is None:
        if not _underflow(f):
            _put(f, i, INDEF)
    else:
        _signal(f, 0, f.fsw & (C0 | C2 | C3))
        _put(f, i, a)
    if pop:
        _pop(f)


def fxch(cpu, i):
    f = cpu.fpu
    a, b = _get(f, 0), _get(f, i)
    if a is None or b is None:
        if _underflow(f):
            return
        a = INDEF if a is None else a
        b = INDEF if b is None else b
    else:
        _signal(f, 0, f.fsw & (C0 | C2 | C3))
    _put(f, 0, b)
    _put(f, i, a)


def fcmov(cpu, i, cond):
    f = cpu.fpu
    b = _get(f, i)
    if _get(f, 0) is None or b is None:
        if not _underflow(f) and cond:
            _put(f, 0, INDEF)
        return
    _signal(f, 0, f.fsw & (C0 | C2 | C3))
    if cond:
        _put(f, 0, b)


# --- one-operand instructions on ST0 -----------------------------------------------------
def _unary(cpu, fn):
    """ST0 = fn(bits, unpacked, f) -> (bits, flags)."""
    f = cpu.fpu
    a = _get(f, 0)
    if a is None:
        if not _underflow(f):
            _put(f, 0, INDEF)
        return
    r, fl = fn(a, sf.unpack(a, F80), f)
    if not _signal(f, fl):
        _put(f, 0, r)


def fchs(cpu):
    _unary(cpu, lambda a, u, f: (a ^ (1 << 79), 0))


def fabs(cpu):
    _unary(cpu, lambda a, u, f: (a & ~(1 << 79), 0))


def _nan_or(fn):
    def op(a, u, f):
        if u[0] >= QNAN:
            return _nan_result([(u, a)])
        r, fl = fn(a, u, f)
        return r, fl if fl & IE else fl | _denormal(u)
    return op


def _sqrt(a, u, f):
    rc, p = _ctx(f)
    return sf.sqrt(u, F80, rc, False, p)


def fsqrt(cpu):
    _unary(cpu, _nan_or(_sqrt))


def _rndint(a, u, f):
    r, fl = sf.round_to_integral(u, F80, (f.fcw >> 10) & 3)
    return (a if r is None else r), fl


def frndint(cpu):
    _unary(cpu, _nan_or(_rndint))


def fxam(cpu):
    f = cpu.fpu
    a = _get(f, 0)
    raw = f.st[f.top]
    sign = C1 if raw >> 79 & 1 else 0
    if a is None:
        cc = C3 | C0
    else:
        c, _, _, _, den = sf.unpack(a, F80)
        e, m = a >> 64 & 0x7FFF, a & M64
        if e and e != 0x7FFF and not m >> 63:
            cc = 0                              # unnormal: unsupported
        elif c >= QNAN:
            cc = 0 if not m >> 63 else C0
        elif c == INF:
            cc = C2 | C0 if m >> 63 else 0
        elif c == ZERO:
            cc = C3
        elif den:
            cc = C3 | C2
        else:
            cc = C2
    f.fsw = (f.fsw & ~CC) | cc | sign


def _st0_st1(f):
    """ST(0) and ST(1) with their unpacked forms, or None after a stack underflow
    (which leaves the indefinite in ST(0) when the invalid exception is masked)."""
    a, b = _get(f, 0), _get(f, 1)
    if a is None or b is None:
        if not _underflow(f):
            _put(f, 0, INDEF)
        return None
    return a, b, sf.unpack(a, F80), sf.unpack(b, F80)


def fscale(cpu):
    f = cpu.fpu
    ops = _st0_st1(f)
    if ops is None:
        return
    a, b, ua, ub = ops
    if ua[0] >= QNAN or ub[0] >= QNAN:
        r, fl = _nan_result([(ua, a), (ub, b)])
    elif ub[0] == INF:
        if (ua[0] == ZERO and not ub[1]) or (ua[0] == INF and ub[1]):
            r, fl = INDEF, IE
        elif ua[0] in (ZERO, INF):
            r, fl = a, 0
        else:
            r, fl = sf.pack_special(ZERO if ub[1] else INF, ua[1], F80), _denormal(ua)
    elif ua[0] in (ZERO, INF):
        r, fl = a, _denormal(ub)
    else:
        n = 0 if ub[0] == ZERO else min(ub[2] << ub[3] if ub[3] >= 0 else ub[2] >> -ub[3], 1 << 17)
        n = -n if ub[1] else n              # beyond +-2**17 the result saturates anyway
        r, fl = sf.round_pack(ua[1], ua[2], ua[3] + n, F80, (f.fcw >> 10) & 3)
        fl |= _denormal(ua, ub)
    if not _signal(f, fl):
        _put(f, 0, r)


def fxtract(cpu):
    """ST0 -> ST1 = exponent, ST0 = significand in [1, 2)."""
    f = cpu.fpu
    a = _get(f, 0)
    if a is None or _get(f, 7) is not None:
        if a is None:
            if not _underflow(f):
                _put(f, 0, INDEF)
                _push(f, INDEF)
        elif not _signal(f, IE | SF | UP, C1):
            _put(f, 0, INDEF)
            _push(f, INDEF)
        return
    u = sf.unpack(a, F80)
    if u[0] >= QNAN:
        r, fl = _nan_result([(u, a)])
        exp_bits, sig = r, r
    elif u[0] == ZERO:
        fl = ZE
        exp_bits, sig = sf.pack_special(INF, 1, F80), a
    elif u[0] == INF:
        fl = 0
        exp_bits, sig = sf.pack_special(INF, 0, F80), a
    else:
        fl = _denormal(u)
        e = u[3] + u[2].bit_length() - 1
        exp_bits = _from_int(e)[1]
        sig = sf.round_pack(u[1], u[2], -(u[2].bit_length() - 1), F80, sf.RN)[0]
    if not _signal(f, fl):
        _put(f, 0, exp_bits)
        _push(f, sig)


def fprem(cpu, ieee):
    """FPREM (quotient truncated) / FPREM1 (quotient rounded to nearest): partial remainder;
    C0, C3, C1 = quotient bits 2, 1, 0; C2 = 1 when the reduction is incomplete."""
    f = cpu.fpu
    ops = _st0_st1(f)
    if ops is None:
        return
    a, b, ua, ub = ops
    cc = 0
    if ua[0] >= QNAN or ub[0] >= QNAN:
        r, fl = _nan_result([(ua, a), (ub, b)])
    elif ua[0] == INF or ub[0] == ZERO:
        r, fl = INDEF, IE
    elif ua[0] == ZERO or ub[0] == INF:
        r, fl = a, _denormal(ua, ub)
    else:
        _, sa, ma, ea, _ = ua
        _, _, mb, eb, _ = ub
        d = (ea + ma.bit_length()) - (eb + mb.bit_length())
        e = min(ea, eb)
        x, y = ma << (ea - e), mb << (eb - e)
        if d < 64:
            q, rem = divmod(x, y)
            if ieee and (2 * rem > y or (2 * rem == y and q & 1)):
                q += 1
                rem -= y
            cc = (C0 if q & 4 else 0) | (C3 if q & 2 else 0) | (C1 if q & 1 else 0)
        else:                   # reduce the exponent difference to a multiple of 32 (by 32..63)
            shift = (d // 32 - 1) * 32
            q = x // (y << shift)
            rem = x - q * (y << shift)
            cc = C2
        sign = sa ^ (1 if rem < 0 else 0)
        if rem == 0:
            r, fl = sf.pack_special(ZERO, sa, F80), 0
        else:
            r, fl = sf.round_pack(sign, abs(rem), e, F80, sf.RN)
        fl = (fl & ~UP) | _denormal(ua, ub)
    if not _signal(f, fl, cc):
        _put(f, 0, r)


# --- transcendentals -------------------------------------------------------------------------
ONE = 0x3FFF << 64 | 1 << 63
_GUARD = 200                # fixed-point bits beyond the leading bit of a result near 1


def _magnitude(u):
    """floor(log2 |x|) + 1 of a finite nonzero unpacked operand."""
    return u[3] + u[2].bit_length()


def _fixed(u, w):
    """The finite operand as a signed fixed-point int with ``w`` fraction bits (exact when
    w + exp >= 0)."""
    _, s, m, e, _ = u
    v = m << (e + w) if e + w >= 0 else m >> -(e + w)
    return -v if s else v


PI_68 = 0xC90FDAA22168C234C     # pi * 2**66, truncated: the hardware's reduction constant


def _sin_cos(u):
    """(sin x, cos x, w) in fixed point for finite nonzero |x| < 2**63: x = k*pi/2 + r with
    |r| <= pi/4.  The reduction uses the 68-bit pi of the silicon (checked against it), so
    large arguments and those near multiples of pi/2 give the hardware's results."""
    w = _GUARD + 3 * max(0, -_magnitude(u))         # sin x = x(1 - x*x/6): see the x*x term
    x = _fixed(u, w)
    q, r = 0, x
    if _magnitude(u) > 0:
        g = w + 128
        half_pi = PI_68 << (g - 67)
        xg = x << 128
        k = (2 * xg + half_pi) // (2 * half_pi)
        q, r = k & 3, (xg - k * half_pi) >> 128
    s, c = sf.sincos_fixed(r, w)
    return (s, c, -s, -c)[q], (c, -s, -c, s)[q], w


TINY_COS_MAGNITUDE = -31       # |x| < 2**-32: cos x rounds to 1.0 to nearest


def _trig_results(kind, u, a, rc, tiny_cos_is_one=False):
    """(results for ST0 then the pushed value, flags) of FSIN/FCOS/FPTAN/FSINCOS on a
    non-empty, in-range ST0.  ``tiny_cos_is_one`` (the CPU model's ``x87_cos_tiny_is_one``):
    the cosine of a tiny argument is 1.0, inexact and rounded up, whatever the rounding
    mode, as Intel's silicon gives it; otherwise it is rounded as RC says (AMD)."""
    c = u[0]
    if c >= QNAN:
        r, fl = _nan_result([(u, a)])
        return (r, r), fl
    if c == INF:
        return (INDEF, INDEF), IE
    if c == ZERO:
        return {"sin": (a,), "cos": (ONE,), "tan": (a, ONE), "sincos": (a, ONE)}[kind], 0
    s, co, w = _sin_cos(u)
    if kind == "tan":
        r, fl = sf.round_fixed((s << w) // co, w, F80, rc)
        return (r, ONE), fl | _denormal(u)
    out = [sf.round_fixed(v, w, F80, rc) for v in {"sin": [s], "cos": [co], "sincos": [s, co]}[kind]]
    if tiny_cos_is_one and kind != "sin" and _magnitude(u) <= TINY_COS_MAGNITUDE:
        out[-1] = (ONE, PE | UP)
    fl = _denormal(u)
    for _, f1 in out:
        fl |= f1
    return tuple(r for r, _ in out), fl


def trig(cpu, kind):
    """FSIN/FCOS ('sin', 'cos': ST0 replaced), FPTAN ('tan': ST0 = tan, then push 1.0) and
    FSINCOS ('sincos': ST0 = sin, then push cos).  |x| >= 2**63 sets C2 and changes nothing."""
    f = cpu.fpu
    push = kind in ("tan", "sincos")
    a = _get(f, 0)
    cc = f.fsw & (C0 | C3)
    if a is None or (push and _get(f, 7) is not None):
        if a is None:
            unmasked = _underflow(f, cc)
        else:
            unmasked = _signal(f, IE | SF | UP, cc | C1)
        if not unmasked:
            _put(f, 0, INDEF)
            if push:
                _push(f, INDEF)
        return
    u = sf.unpack(a, F80)
    if u[0] == FINITE and _magnitude(u) > 63:
        _signal(f, 0, cc | C2)
        return
    res, fl = _trig_results(kind, u, a, (f.fcw >> 10) & 3, cpu.model.x87_cos_tiny_is_one)
    if _signal(f, fl, cc | (C1 if fl & UP else 0)):
        return
    _put(f, 0, res[0])
    if push:
        _push(f, res[1])


def _st1_op(cpu, fn):
    """ST1 = fn(ST1, ST0) on unpacked non-NaN operands (NaNs propagate), then pop."""
    f = cpu.fpu
    a, b = _get(f, 0), _get(f, 1)
    if a is None or b is None:
        if not _underflow(f):
            _put(f, 1, INDEF)
            _pop(f)
        return
    ux, uy = sf.unpack(a, F80), sf.unpack(b, F80)
    if ux[0] >= QNAN or uy[0] >= QNAN:
        r, fl = _nan_result([(uy, b), (ux, a)])
    else:
        r, fl = fn(uy, ux, (f.fcw >> 10) & 3)
        if not fl & IE:
            fl |= _denormal(ux, uy)
    if not _signal(f, fl):
        _put(f, 1, r)
        _pop(f)


def _pi_times(quarters, sign, rc):
    w = _GUARD + 56
    v = sf.pi_fixed(w) * quarters >> 2
    return sf.round_fixed(-v if sign else v, w, F80, rc)


def _atan2(uy, ux, rc):
    """FPATAN: the angle of (x, y), in -pi..pi, with the x87's signed-zero and infinity
    quadrant rules."""
    cy, sy, my, ey, _ = uy
    cx, sx, mx, ex, _ = ux
    if cy == ZERO or (cx == INF and cy != INF):
        return _pi_times(4, sy, rc) if sx else (sf.pack_special(ZERO, sy, F80), 0)
    if cx == ZERO or (cy == INF and cx != INF):
        return _pi_times(2, sy, rc)
    if cy == INF:
        return _pi_times(3 if sx else 1, sy, rc)
    d = _magnitude(uy) - _magnitude(ux)
    w = _GUARD + 56 + 3 * max(0, -d)
    if d <= 0:
        angle = sf.atan_fixed((my << (w + ey - ex)) // mx, w)
    else:
        sh = w + ex - ey
        angle = (sf.pi_fixed(w) >> 1) - sf.atan_fixed((mx << sh) // my if sh >= 0 else 0, w)
    if sx:
        angle = sf.pi_fixed(w) - angle
    return sf.round_fixed(-angle if sy else angle, w, F80, rc)


def fpatan(cpu):
    _st1_op(cpu, _atan2)


def _f2xm1(a, u, f):
    """2**x - 1 (exact for integral x; beyond |x| = 2**15 the result saturates)."""
    c, s, m, e, _ = u
    rc = (f.fcw >> 10) & 3
    if c == ZERO:
        return a, 0
    if c == INF:
        return (sf.round_pack(1, 1, 0, F80, rc)[0] if s else a), 0
    mag = _magnitude(u)
    if mag > 16:
        if s:
            return sf.round_fixed(1 - (1 << _GUARD), _GUARD, F80, rc)
        return sf.round_pack(0, 1, 1 << 16, F80, rc)
    if e >= 0:
        n = m << e
        return sf.round_pack(s, (1 << n) - 1, -n if s else 0, F80, rc)
    w = _GUARD + 2 * max(0, -mag) + 16
    x = _fixed(u, w)
    n = x >> w if mag > 0 else 0
    em = sf.expm1_fixed(((x - (n << w)) * sf.ln2_fixed(w)) >> w, w)
    if n >= 0:
        return sf.round_fixed(((em + (1 << w)) << n) - (1 << w), w, F80, rc)
    return sf.round_fixed(em + (1 << w) - (1 << (w - n)), w, F80, rc, exp=n)


def f2xm1(cpu):
    _unary(cpu, _nan_or(_f2xm1))


def _log2(ux, plus_one):
    """log2(x) (FYL2X) or log2(1 + x) (FYL2XP1) -> (unpacked exact/special value or None,
    fixed value, w, ZE-if-from-zero); None, None means invalid (log of a negative)."""
    c, s, m, e, _ = ux
    if c == ZERO:
        return ((ZERO, s, 0, 0, False) if plus_one else (INF, 1, 0, 0, False)), None, 0, not plus_one
    if c == INF:
        return ((INF, 0, 0, 0, False), None, 0, False) if not s else (None, None, 0, False)
    if plus_one:                        # 1 + x as zn / zd, zd a power of two
        zd = 1 << max(0, -e)
        zn = (-m if s else m) << max(0, e)
        zn += zd
    else:
        zn, zd = (m << max(0, e)) * (-1 if s else 1), 1 << max(0, -e)
    if zn < 0:
        return None, None, 0, False
    if zn == 0:                         # FYL2XP1 of -1
        return (INF, 1, 0, 0, False), None, 0, True
    if zn & (zn - 1) == 0:
        k = zn.bit_length() - zd.bit_length()
        return ((ZERO, 0, 0, 0, False) if k == 0 else (FINITE, int(k < 0), abs(k), 0, False)), None, 0, False
    k = zn.bit_length() - zd.bit_length()
    num, den = zn, 1 << (zn.bit_length() - 1)          # num / den in [1, 2)
    if num * num > 2 * den * den:                        # keep it within [sqrt(1/2), sqrt(2)]
        k, den = k + 1, den << 1
    w = _GUARD + (2 * max(0, -_magnitude(ux)) if plus_one else 0)
    lv = (k << w) + (sf.ln_ratio_fixed(num, den, w) << w) // sf.ln2_fixed(w)
    return None, lv, w, False


def _ylog(plus_one):
    """FYL2X / FYL2XP1: y * log2(x) or y * log2(1 + x), with the product's sign and
    zero/infinity rules; a zero x with a finite nonzero y is a division by zero."""
    def op(uy, ux, rc):
        exact, lv, w, from_zero = _log2(ux, plus_one)
        if exact is None and lv is None:
            return INDEF, IE
        if exact is not None:
            r, fl = sf.mul(uy, exact, F80, rc)
            if uy[0] == exact[0] == FINITE:
                fl |= PE                # the silicon flags even an exact y * log2(2**k)
            return r, fl | (ZE if from_zero and uy[0] == FINITE else 0)
        cy, sy, my, ey, _ = uy
        if cy != FINITE:
            return sf.pack_special(cy, sy ^ (lv < 0), F80), 0
        return sf.round_fixed(lv, w, F80, rc, scale=-my if sy else my, exp=ey)
    return op


def fyl2x(cpu):
    _st1_op(cpu, _ylog(False))


def fyl2xp1(cpu):
    _st1_op(cpu, _ylog(True))


# --- control ---------------------------------------------------------------------------------
def status_word(f):
    return (f.fsw & ~0x3800) | (f.top << 11)


def fninit(cpu):
    f = cpu.fpu
    f.fcw, f.fsw, f.ftw, f.top, f.fop, f.fip, f.fdp = 0x37F, 0, 0, 0, 0, 0, 0


def fnclex(cpu):
    cpu.fpu.fsw &= ~(0xFF | BUSY)


def fldcw(cpu, value):
    f = cpu.fpu
    f.fcw = value & 0x1F7F | 0x40
    if f.fsw & ~f.fcw & 0x3F:
        f.fsw |= ES | BUSY
    else:
        f.fsw &= ~(ES | BUSY)


def step_top(cpu, delta):
    """FINCSTP/FDECSTP: rotate the stack without changing tags; C1 = 0."""
    f = cpu.fpu
    f.top = (f.top + delta) & 7
    f.fsw &= ~C1


def ffree(cpu, i, pop=False):
    f = cpu.fpu
    f.ftw &= ~(1 << _phys(f, i))
    if pop:
        _pop(f)


def full_tag_word(f):
    """The 16-bit tag word of FNSTENV/FNSAVE: 0 valid, 1 zero, 2 special, 3 empty."""
    tw = 0
    for p in range(8):
        if not f.ftw >> p & 1:
            t = 3
        else:
            v = f.st[p]
            e, m = v >> 64 & 0x7FFF, v & M64
            if e == 0:
                t = 1 if m == 0 else 2
            elif e == 0x7FFF or not m >> 63:
                t = 2
            else:
                t = 0
        tw |= t << (2 * p)
    return tw


def env_image(cpu, size):
    """The FNSTENV image (protected-mode format; size 2 = 16-bit operand size)."""
    f = cpu.fpu
    words = [f.fcw, status_word(f), full_tag_word(f), f.fip & 0xFFFFFFFF, f.fop & 0x7FF,
             f.fdp & 0xFFFFFFFF, 0]
    if size == 2:
        return b"".join((w & 0xFFFF).to_bytes(2, "little") for w in words)
    return b"".join(((w | 0xFFFF0000) if k < 3 else w).to_bytes(4, "little") for k, w in enumerate(words))


def after_fnstenv(cpu):
    """FNSTENV/FNSAVE mask every x87 exception afterwards (FNSAVE then re-initialises)."""
    cpu.fpu.fcw |= 0x3F


def save_image(cpu, size):
    """FNSAVE: environment then ST0..ST7."""
    f = cpu.fpu
    regs = b"".join(f.st[(f.top + i) & 7].to_bytes(10, "little") for i in range(8))
    return env_image(cpu, size) + regs


def load_env(cpu, data, size):
    """FLDENV/FRSTOR environment: control, status (with TOP), tags (only 'empty' matters)."""
    f = cpu.fpu
    w = 2 if size == 2 else 4
    fcw = int.from_bytes(data[0:2], "little")
    fsw = int.from_bytes(data[w:w + 2], "little")
    tw = int.from_bytes(data[2 * w:2 * w + 2], "little")
    f.top = (fsw >> 11) & 7
    f.fsw = fsw & ~0x3800
    f.ftw = sum(1 << p for p in range(8) if (tw >> (2 * p)) & 3 != 3)
    fldcw(cpu, fcw)


def load_state(cpu, data, size):
    """FRSTOR."""
    n = 14 if size == 2 else 28
    load_env(cpu, data, size)
    f = cpu.fpu
    for i in range(8):
        f.st[(f.top + i) & 7] = int.from_bytes(data[n + 10 * i:n + 10 * i + 10], "little")
