"""Lazy arithmetic flags.

Most instructions that write CF/PF/AF/ZF/SF/OF have their flags overwritten by
the next such instruction before anything reads them.  So the processor only
records *what happened* -- an operation code ``cc_op`` (kind and operand size),
the result ``cc_dst``, the source operand ``cc_src`` and one auxiliary value
``cc_aux`` -- and computes the six flags on demand (``compute``).  Generated
code for a conditional jump that directly follows its CMP/TEST does not even do
that: it compares the operands itself (see ``kvmpy.hw.translate.codegen``).

``cc_op`` is ``kind << 2 | size_index`` with size_index 0..3 for 8/16/32/64 bits.
"""

CF, PF, AF, ZF, SF, OF = 1, 4, 0x10, 0x40, 0x80, 0x800

(K_EAGER, K_ADD, K_ADC, K_SUB, K_SBB, K_LOGIC, K_INC, K_DEC,
 K_SHL, K_SHR, K_SAR, K_MUL, K_NEG, K_SHIFTX) = range(14)

CC_EAGER = 0
SIZE_INDEX = {1: 0, 2: 1, 4: 2, 8: 3}
BITS = (8, 16, 32, 64)
MASKS = (0xFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
SIGNS = (0x80, 0x8000, 0x80000000, 0x8000000000000000)

# Parity of the low byte, PF set when the number of set bits is even.
PARITY = bytes(PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256))


def cc(kind: int, size: int) -> int:
    """The cc_op code for an operation ``kind`` on ``size``-byte operands."""
    return kind << 2 | SIZE_INDEX[size]


def _szp(res, sign):
    return (ZF if res == 0 else 0) | (SF if res & sign else 0) | PARITY[res & 0xFF]


def carry(op: int, dst: int, src: int, aux: int) -> int:
    """CF alone (0 or 1) for a lazily recorded operation: INC/DEC and the carry-reading
    instructions need only this, and it is much cheaper than all six flags."""
    kind = op >> 2
    if kind == K_LOGIC:
        return 0
    if kind == K_INC or kind == K_DEC:
        return aux & CF
    if kind == K_ADD:
        return 1 if dst < (dst - src) & MASKS[op & 3] else 0
    if kind == K_SUB:
        return 1 if (dst + src) & MASKS[op & 3] < src else 0
    return compute(op, dst, src, aux) & CF


def compute(op: int, dst: int, src: int, aux: int) -> int:
    """Return the six arithmetic flags for a lazily recorded operation."""
    kind, si = op >> 2, op & 3
    mask, sign = MASKS[si], SIGNS[si]
    if kind == K_LOGIC:
        return _szp(dst, sign)
    if kind == K_ADD or kind == K_ADC:
        if kind == K_ADD:
            aux = 0         # plain ADD/SUB do not record a carry-in
        a = (dst - src - aux) & mask
        f = _szp(dst, sign) | ((a ^ src ^ dst) & AF)
        if dst < a or (aux and dst == a):
            f |= CF
        if (~(a ^ src) & (a ^ dst)) & sign:
            f |= OF
        return f
    if kind == K_SUB or kind == K_SBB:
        if kind == K_SUB:
            aux = 0
        a = (dst + src + aux) & mask
        f = _szp(dst, sign) | ((a ^ src ^ dst) & AF)
        if a < src + aux:
            f |= CF
        if ((a ^ src) & (a ^ dst)) & sign:
            f |= OF
        return f
    if kind == K_INC:
        a = (dst - 1) & mask
        f = _szp(dst, sign) | ((a ^ 1 ^ dst) & AF) | (aux & CF)
        if dst == sign:
            f |= OF
        return f
    if kind == K_DEC:
        a = (dst + 1) & mask
        f = _szp(dst, sign) | ((a ^ 1 ^ dst) & AF) | (aux & CF)
        if dst == sign - 1:
            f |= OF
        return f
    if kind == K_NEG:
        f = _szp(dst, sign) | ((dst ^ src) & AF)
        if dst != 0:
            f |= CF
        if dst == sign:
            f |= OF
        return f
    if kind in (K_SHL, K_SHR, K_SAR, K_SHIFTX):
        # aux carries CF and OF, computed by the instruction itself, and AF, undefined: set
        # there by a model whose silicon sets it (shift.py), else 0.
        return _szp(dst, sign) | (aux & (CF | OF | AF))
    if kind == K_MUL:
        # src != 0 means the high half was significant; SF/ZF/PF undefined, taken from dst.
        return _szp(dst, sign) | ((CF | OF) if src else 0)
    raise AssertionError("bad cc_op %d" % op)
