"""SSE4.2's execution units: the packed string compare (PCMPxSTRx) and CRC32C.

Both are reached from translated code as ``cpu.fpu.sse.<name>`` (``kvmpy.hw.fpu.simd`` re-exports
them).  ``pcmpstr`` follows the SDM's description (vol. 2, "Packed Compare String"): a
comparison matrix between the elements of the first operand (the needle / character set /
ranges) and the second (the haystack), overridden where either element lies past its
string's end, aggregated into ``IntRes1``, negated by the polarity into ``IntRes2``, which
then becomes an index (ECX) or a mask (XMM0) and the flags.
"""

from __future__ import annotations

import struct

CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800

_LANES = {code: struct.Struct("<%d%s" % (16 // struct.calcsize(code), code)) for code in "bBhH"}
_CRC32C_POLY = 0x82F63B78       # 0x1EDC6F41, bit-reflected


def _crc_table() -> list[int]:
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ (_CRC32C_POLY if c & 1 else 0)
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(crc: int, data: int, nbytes: int) -> int:
    """CRC32 (the instruction): fold ``nbytes`` little-endian bytes of ``data`` into the
    32-bit ``crc`` with the Castagnoli polynomial, without pre/post inversion."""
    crc &= 0xFFFFFFFF
    for _ in range(nbytes):
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ data) & 0xFF]
        data >>= 8
    return crc


def _split(v: int, code: str) -> tuple:
    """The elements of a 128-bit register (struct code b/B/h/H)."""
    return _LANES[code].unpack(v.to_bytes(16, "little"))


def implicit_length(v: int, words: bool) -> int:
    """The length of a null-terminated string in a register: the index of its first zero
    element, or the element count if there is none."""
    lanes = _split(v, "H" if words else "B")
    for i, x in enumerate(lanes):
        if x == 0:
            return i
    return len(lanes)


def explicit_length(value: int, bits: int, words: bool) -> int:
    """A length register (EAX/EDX, RAX/RDX with REX.W): the absolute value of the signed
    number, saturated to the element count."""
    value &= (1 << bits) - 1
    if value >> (bits - 1):
        value = (1 << bits) - value
    return min(value, 8 if words else 16)


def _aggregate(mode: int, a, b, la: int, lb: int, ub: int) -> int:
    """IntRes1: bit j for haystack element j (``a`` is operand 1, ``b`` operand 2)."""
    res = 0
    if mode == 0:           # equal any: b[j] is one of the valid a[i]
        for j in range(lb):
            if b[j] in a[:la]:
                res |= 1 << j
    elif mode == 1:         # ranges: a[2k] <= b[j] <= a[2k+1] for some complete pair
        for j in range(lb):
            if any(a[k] <= b[j] <= a[k + 1] for k in range(0, la - 1, 2)):
                res |= 1 << j
    elif mode == 2:         # equal each: both past the end also counts as equal
        for j in range(ub):
            if (j >= la and j >= lb) or (j < la and j < lb and a[j] == b[j]):
                res |= 1 << j
    else:                   # equal ordered: the needle a starts at b[j] (may run off b's end)
        for j in range(ub):
            if all(i >= la or (j + i < lb and a[i] == b[j + i]) for i in range(ub - j)):
                res |= 1 << j
    return res


def pcmpstr(a: int, b: int, la: int, lb: int, imm: int) -> tuple[int, int, int]:
    """Compare two strings in registers ``a`` and ``b`` (operands 1 and 2) of lengths ``la``
    and ``lb`` under control byte ``imm``.

    Returns (index, mask, flags): the ECX result of PCMPxSTRI, the XMM0 result of
    PCMPxSTRM and the arithmetic flags (AF and PF always clear).
    """
    words = bool(imm & 1)
    ub = 8 if words else 16
    code = ("h" if words else "b") if imm & 2 else ("H" if words else "B")
    ea, eb = _split(a, code), _split(b, code)
    full = (1 << ub) - 1
    res1 = _aggregate(imm >> 2 & 3, ea, eb, la, lb, ub)
    polarity = imm >> 4 & 3
    if polarity == 1:
        res2 = res1 ^ full
    elif polarity == 3:
        res2 = res1 ^ ((1 << lb) - 1)
    else:
        res2 = res1
    if res2 == 0:
        index = ub
    elif imm & 0x40:
        index = res2.bit_length() - 1
    else:
        index = (res2 & -res2).bit_length() - 1
    if imm & 0x40:
        size = 2 if words else 1
        ones = (1 << (8 * size)) - 1
        mask = sum(ones << (8 * size * i) for i in range(ub) if res2 >> i & 1)
    else:
        mask = res2
    flags = ((CF if res2 else 0) | (ZF if lb < ub else 0) | (SF if la < ub else 0) |
             (OF if res2 & 1 else 0))
    return index, mask, flags
