"""IEEE 754 binary floating point in exact integer arithmetic, with x86's exception flags.

The SSE unit (single, double) and the x87 unit (80-bit extended) round the same way, so
both use this one core: operands are unpacked to an exact ``mant * 2**exp`` (Python ints,
so nothing is lost), the operation is done exactly (or, for division and square root, to
enough bits plus a sticky bit), and ``round_pack`` rounds once to the destination format in
the requested rounding mode, reporting the flags the hardware would set.  Results are
therefore bit-exact in every rounding mode, including denormals and overflow.

x86 conventions kept here: tininess is detected after rounding; the default NaN ("real
indefinite") is negative and quiet; the flag bits are the MXCSR/FSW positions below.
"""

from __future__ import annotations

from math import isqrt

IE, DE, ZE, OE, UE, PE = 1, 2, 4, 8, 0x10, 0x20
TINY_EXACT = 0x100          # internal: exact tiny result (an underflow only when UE is unmasked)
UP = 0x200                  # internal: rounding increased the magnitude (the x87's C1)
RN, RD, RU, RZ = range(4)   # rounding control: nearest-even, down, up, toward zero

# Operand classes
ZERO, FINITE, INF, QNAN, SNAN = range(5)


class Fmt:
    """A binary interchange format: precision ``p`` (with the integer bit), exponent bits."""

    __slots__ = ("p", "ebits", "bias", "emin", "emax", "fbits", "explicit", "width", "qbit", "emask", "indef")

    def __init__(self, p: int, ebits: int, explicit: bool = False):
        self.p, self.ebits, self.explicit = p, ebits, explicit
        self.bias = (1 << (ebits - 1)) - 1
        self.emin, self.emax = 1 - self.bias, self.bias
        self.fbits = p if explicit else p - 1          # stored significand bits
        self.width = 1 + ebits + self.fbits
        self.emask = (1 << ebits) - 1
        self.qbit = 1 << (p - 2)                       # the quiet bit of a NaN
        top = (1 << (p - 1)) if explicit else 0
        self.indef = (1 << (self.width - 1)) | (self.emask << self.fbits) | top | self.qbit


F32 = Fmt(24, 8)
F64 = Fmt(53, 11)
F80 = Fmt(64, 15, explicit=True)


def unpack(bits: int, f: Fmt, daz: bool = False):
    """(class, sign, mant, exp, denormal) with value ``(-1)**sign * mant * 2**exp``."""
    sign = bits >> (f.width - 1) & 1
    e = bits >> f.fbits & f.emask
    frac = bits & ((1 << f.fbits) - 1)
    if f.explicit:
        int_bit = frac >> (f.p - 1)
        frac &= (1 << (f.p - 1)) - 1
    else:
        int_bit = 1 if e else 0
    if e == f.emask:
        if frac == 0:
            return INF, sign, 0, 0, False
        return (QNAN if frac & f.qbit else SNAN), sign, frac, 0, False
    if e == 0:
        if frac == 0 and not int_bit:
            return ZERO, sign, 0, 0, False
        if daz:
            return ZERO, sign, 0, 0, False
        return FINITE, sign, (int_bit << (f.p - 1)) | frac, f.emin - (f.p - 1), True
    if f.explicit and not int_bit:          # unnormal: the x87 treats it as invalid
        return SNAN, sign, frac | 1, 0, False
    return FINITE, sign, (1 << (f.p - 1)) | frac, e - f.bias - (f.p - 1), False


def pack_special(kind: int, sign: int, f: Fmt, p: int | None = None) -> int:
    """Bits of a zero, infinity or max finite (kind = ZERO, INF, FINITE; ``p`` bits of
    precision) of ``sign``."""
    s = sign << (f.width - 1)
    top = (1 << (f.p - 1)) if f.explicit else 0
    if kind == ZERO:
        return s
    if kind == INF:
        return s | (f.emask << f.fbits) | top
    return s | ((f.emask - 1) << f.fbits) | ((1 << f.fbits) - 1) & ~((1 << (f.p - (p or f.p))) - 1)


def round_pack(sign: int, mant: int, exp: int, f: Fmt, rc: int, ftz: bool = False, p: int | None = None):
    """Round ``(-1)**sign * mant * 2**exp`` (mant > 0; its last bit may be a sticky bit) to
    format ``f`` with ``p`` bits of precision (x87 precision control) -> (bits, flags)."""
    p = p or f.p
    n = mant.bit_length()
    e = exp + n - 1                          # exponent of the leading bit
    q = max(e, f.emin) - p + 1               # exponent of the result's last bit
    flags = 0
    sh = q - exp
    if sh > 0:
        rem = mant & ((1 << sh) - 1)
        m = mant >> sh
        if rem:
            flags = PE
            half = 1 << (sh - 1)
            if rc == RN:
                up = rem > half or (rem == half and m & 1)
            else:
                up = rc == (RD if sign else RU)
            if up:
                m += 1
                flags |= UP
    else:
        m = mant << -sh
        rem = 0
    tiny = e < f.emin
    if tiny and e == f.emin - 1 and flags:
        # after rounding to p bits with an unbounded exponent, does it reach 2**emin?
        sh2 = n - p
        if sh2 > 0:
            r2 = mant & ((1 << sh2) - 1)
            m2 = mant >> sh2
            half = 1 << (sh2 - 1)
            up = (r2 > half or (r2 == half and m2 & 1)) if rc == RN else (r2 and rc == (RD if sign else RU))
            if up and m2 + 1 == 1 << p:
                tiny = False
    if tiny:
        if ftz:
            return pack_special(ZERO, sign, f), UE | PE
        flags |= UE if flags else TINY_EXACT
    if m >> p:
        m >>= 1
        q += 1
    if m == 0:
        return pack_special(ZERO, sign, f), flags
    er = q + m.bit_length() - 1
    if er > f.emax:
        to_inf = rc == RN or rc == (RD if sign else RU)
        return pack_special(INF if to_inf else FINITE, sign, f, p), (flags & ~UP) | OE | PE | (UP if to_inf else 0)
    m <<= f.p - p                            # precision control keeps the format's field width
    if m >> (f.p - 1):
        biased = er + f.bias
    else:
        biased = 0
    if not f.explicit:
        m &= (1 << (f.p - 1)) - 1
    return (sign << (f.width - 1)) | (biased << f.fbits) | m, flags


def quiet(bits: int, f: Fmt) -> int:
    return bits | f.qbit


def convert_nan(bits: int, src: Fmt, dst: Fmt, make_quiet: bool = True) -> int:
    """A NaN moved between formats keeps its sign and top payload bits (and becomes quiet)."""
    sign = bits >> (src.width - 1) & 1
    payload = bits & ((1 << (src.p - 1)) - 1)
    shift = (dst.p - 1) - (src.p - 1)
    payload = payload << shift if shift >= 0 else payload >> -shift
    top = (1 << (dst.p - 1)) if dst.explicit else 0
    return (sign << (dst.width - 1)) | (dst.emask << dst.fbits) | top | payload | (dst.qbit if make_quiet else 0)


# --- arithmetic on unpacked operands -----------------------------------------------------
def _zero_sign_of_sum(sa, sb, rc):
    if sa == sb:
        return sa
    return 1 if rc == RD else 0


def add(a, b, f: Fmt, rc: int, ftz=False, p=None):
    """Sum of two unpacked non-NaN operands -> (bits, flags)."""
    ca, sa, ma, ea, _ = a
    cb, sb, mb, eb, _ = b
    if ca == INF or cb == INF:
        if ca == INF and cb == INF and sa != sb:
            return f.indef, IE
        return pack_special(INF, sa if ca == INF else sb, f), 0
    if ca == ZERO and cb == ZERO:
        return pack_special(ZERO, _zero_sign_of_sum(sa, sb, rc), f), 0
    if ca == ZERO:
        return round_pack(sb, mb, eb, f, rc, ftz, p)
    if cb == ZERO:
        return round_pack(sa, ma, ea, f, rc, ftz, p)
    e = min(ea, eb)
    va = (ma << (ea - e)) * (-1 if sa else 1)
    vb = (mb << (eb - e)) * (-1 if sb else 1)
    s = va + vb
    if s == 0:
        return pack_special(ZERO, 1 if rc == RD else 0, f), 0
    return round_pack(1 if s < 0 else 0, abs(s), e, f, rc, ftz, p)


def mul(a, b, f: Fmt, rc: int, ftz=False, p=None):
    ca, sa, ma, ea, _ = a
    cb, sb, mb, eb, _ = b
    s = sa ^ sb
    if ca == INF or cb == INF:
        if ca == ZERO or cb == ZERO:
            return f.indef, IE
        return pack_special(INF, s, f), 0
    if ca == ZERO or cb == ZERO:
        return pack_special(ZERO, s, f), 0
    return round_pack(s, ma * mb, ea + eb, f, rc, ftz, p)


def div(a, b, f: Fmt, rc: int, ftz=False, p=None):
    ca, sa, ma, ea, _ = a
    cb, sb, mb, eb, _ = b
    s = sa ^ sb
    if ca == INF:
        return (f.indef, IE) if cb == INF else (pack_special(INF, s, f), 0)
    if cb == INF:
        return pack_special(ZERO, s, f), 0
    if cb == ZERO:
        return (f.indef, IE) if ca == ZERO else (pack_special(INF, s, f), ZE)
    if ca == ZERO:
        return pack_special(ZERO, s, f), 0
    k = max(0, f.p + 3 + mb.bit_length() - ma.bit_length())
    qt, r = divmod(ma << k, mb)
    return round_pack(s, (qt << 1) | (1 if r else 0), ea - eb - k - 1, f, rc, ftz, p)


def sqrt(a, f: Fmt, rc: int, ftz=False, p=None):
    ca, sa, ma, ea, _ = a
    if ca == ZERO:
        return pack_special(ZERO, sa, f), 0
    if sa:
        return f.indef, IE
    if ca == INF:
        return pack_special(INF, 0, f), 0
    k = max(0, 2 * f.p + 6 - ma.bit_length())
    if (ea - k) & 1:
        k += 1
    m = ma << k
    r = isqrt(m)
    return round_pack(0, (r << 1) | (1 if r * r != m else 0), (ea - k) // 2 - 1, f, rc, ftz, p)


def compare(a, b) -> int:
    """-1, 0, 1 for ordered (non-NaN) unpacked operands; +0 equals -0."""
    va, vb = _signed(a), _signed(b)
    return (va > vb) - (va < vb)


def _signed(a):
    """An exact sortable key: infinities as +-2**40000 (beyond any 80-bit magnitude)."""
    c, s, m, e, _ = a
    if c == ZERO:
        return 0
    if c == INF:
        v = 1 << 40000
    else:
        v = m << (e + 20000)
    return -v if s else v


def from_int(v: int, f: Fmt, rc: int, p=None):
    if v == 0:
        return 0, 0
    return round_pack(1 if v < 0 else 0, abs(v), 0, f, rc, False, p)


def round_int(s, m, e, rc):
    """Round the magnitude ``m * 2**e`` (e < 0) to an integer -> (value, flags)."""
    v = m >> -e
    rem = m & ((1 << -e) - 1)
    if not rem:
        return v, 0
    half = 1 << (-e - 1)
    if rc == RN:
        up = rem > half or (rem == half and v & 1)
    else:
        up = rc == (RD if s else RU)
    return (v + 1, PE | UP) if up else (v, PE)


def to_int(a, bits: int, rc: int):
    """Convert an unpacked operand to a signed integer of ``bits`` -> (value & mask, flags).

    NaN, infinity and out-of-range values give the integer indefinite (most negative) with IE.
    """
    c, s, m, e, _ = a
    indef = 1 << (bits - 1)
    if c in (QNAN, SNAN, INF):
        return indef, IE
    if c == ZERO:
        return 0, 0
    v, flags = (m << e, 0) if e >= 0 else round_int(s, m, e, rc)
    if s:
        v = -v
    if not -indef <= v < indef:
        return indef, IE
    return v & ((1 << bits) - 1), flags


def round_to_integral(a, f: Fmt, rc: int):
    """The operand rounded to an integral value in format ``f`` -> (bits, flags); bits is
    None when the operand is already integral, infinite or NaN."""
    c, s, m, e, _ = a
    if c == ZERO:
        return pack_special(ZERO, s, f), 0
    if c != FINITE or e >= 0:
        return None, 0
    v, flags = round_int(s, m, e, rc)
    if v == 0:
        return pack_special(ZERO, s, f), flags
    bits, _ = round_pack(s, v, 0, f, RN)
    return bits, flags


# --- transcendental kernels --------------------------------------------------------------
# The x87's FSIN/FCOS/FPTAN/FPATAN/F2XM1/FYL2X(P1) are computed here in fixed point: a real
# value v is the int ``round(v * 2**w)``.  Callers pick ``w`` so that the result carries well
# over 64 significant bits beyond its leading bit (and enough to see the first correction
# term for tiny arguments), then round once with ``round_fixed``.  The results are
# irrational (exact cases are handled by the callers), so a value a few units of 2**-w from
# the truth rounds as the truth does, barring a rounding boundary within 2**-w.

def _series(first: int, step) -> int:
    """Sum of ``first``, ``step(1, first)``, ``step(2, that)``, ... until the terms vanish."""
    total, term, k = first, first, 1
    while term:
        term = step(k, term)
        total += term
        k += 1
    return total


def _atan_inv(n: int, w: int) -> int:
    """atan(1/n) * 2**w (n > 1), by its Taylor series."""
    x = (1 << w) // n
    n2 = n * n
    total, power, k = 0, x, 0
    while power:
        total += power // (2 * k + 1) if k % 2 == 0 else -(power // (2 * k + 1))
        power //= n2
        k += 1
    return total


_PI_CACHE = {}


def pi_fixed(w: int) -> int:
    """pi * 2**w (Machin's formula, with 32 guard bits)."""
    key = -(-w // 64) * 64
    if key not in _PI_CACHE:
        g = key + 32
        _PI_CACHE[key] = (16 * _atan_inv(5, g) - 4 * _atan_inv(239, g)) >> 32
    return _PI_CACHE[key] >> (key - w)


def _div(a: int, d: int) -> int:
    """a / d truncated toward zero, so that series terms of either sign reach 0."""
    q = abs(a) // d
    return -q if a < 0 else q


def _mul(a: int, b: int, w: int) -> int:
    return _div(a * b, 1 << w)


def sincos_fixed(x: int, w: int):
    """(sin x, cos x) * 2**w for the fixed value ``x`` with |x| <= 1."""
    x2 = _mul(x, x, w)
    s = _series(x, lambda k, t: -_div(_mul(t, x2, w), (2 * k) * (2 * k + 1)))
    c = _series(1 << w, lambda k, t: -_div(_mul(t, x2, w), (2 * k - 1) * (2 * k)))
    return s, c


def atan_fixed(t: int, w: int) -> int:
    """atan(t) * 2**w for 0 <= t <= 2**w (t fixed); halves the argument three times first
    (atan t = 2 atan(t / (1 + sqrt(1 + t*t)))) so that the series converges fast."""
    one = 1 << w
    for _ in range(3):
        t = (t << w) // (one + isqrt((one * one) + t * t))
    t2 = _mul(t, t, w)
    total, power, k = 0, t, 0
    while power:
        total += power // (2 * k + 1) if k % 2 == 0 else -(power // (2 * k + 1))
        power = _mul(power, t2, w)
        k += 1
    return total << 3


def ln2_fixed(w: int) -> int:
    """ln 2 * 2**w = 2 atanh(1/3)."""
    return _atanh_fixed(((1 << (w + 32)) // 3), w + 32) >> 32


def _atanh_fixed(u: int, w: int) -> int:
    """2 atanh(u) * 2**w for the fixed value ``u`` with |u| <= 1/3."""
    u2 = _mul(u, u, w)
    total, power, k = 0, u, 0
    while power:
        total += _div(power, 2 * k + 1)
        power = _mul(power, u2, w)
        k += 1
    return 2 * total


def ln_ratio_fixed(num: int, den: int, w: int) -> int:
    """ln(num / den) * 2**w for num/den in [1/2, 2] (positive ints)."""
    return _atanh_fixed(((num - den) << w) // (num + den), w)


def expm1_fixed(y: int, w: int) -> int:
    """(e**y - 1) * 2**w for the fixed value ``y`` with |y| <= 1."""
    return _series(y, lambda k, t: _div(_mul(t, y, w), k + 1))


def round_fixed(v: int, w: int, f: Fmt, rc: int, scale: int = 1, exp: int = 0):
    """Round the inexact value ``v * scale * 2**(exp - w)`` (v fixed, scale an exact int) to
    ``f``: the value is taken to lie strictly between v and v + 1 units, so it rounds as
    the irrational truth does and raises PE."""
    sign = 1 if (v < 0) != (scale < 0) else 0
    return round_pack(sign, abs(scale) * (4 * abs(v) + 2), exp - w - 2, f, rc)
