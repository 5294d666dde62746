"""Which arithmetic flags an instruction leaves undefined (Intel SDM vol. 2, "Flags Affected").

Silicon gives undefined flags some value (and Intel and AMD differ), kvmpy another; a
comparison must ignore them.  ``undefined_flags`` answers for one execution, since for
shifts and rotates it depends on the (masked) count.
"""

from __future__ import annotations

from tests.oracle.native import AF, CF, OF, PF, SF, ZF

ARITH = CF | PF | AF | ZF | SF | OF

_FIXED = {
    **dict.fromkeys(("and", "or", "xor", "test"), AF),
    **dict.fromkeys(("mul", "imul"), SF | ZF | AF | PF),
    **dict.fromkeys(("div", "idiv"), ARITH),
    **dict.fromkeys(("bt", "bts", "btr", "btc"), OF | SF | AF | PF),
    **dict.fromkeys(("bsf", "bsr"), CF | OF | SF | AF | PF),
    **dict.fromkeys(("lzcnt", "tzcnt"), OF | SF | AF | PF),
}
_SHIFTS = ("shl", "sal", "shr", "sar")
_ROTATES = ("rol", "ror", "rcl", "rcr")
_DOUBLE = ("shld", "shrd")


def masked_count(count: int, size: int) -> int:
    """The count a shift or rotate of a ``size``-byte operand really uses."""
    return count & (0x3F if size == 8 else 0x1F)


def undefined_flags(mnemonic: str, size: int = 8, count: int | None = None) -> int:
    """Return the mask of flags left undefined by ``mnemonic`` on ``size``-byte operands;
    shifts and rotates need their ``count``.  Raises ValueError for a SHLD/SHRD whose count
    exceeds the operand size, where the destination itself is undefined."""
    m = mnemonic.lower()
    if m in _FIXED:
        return _FIXED[m]
    if m in _SHIFTS + _ROTATES + _DOUBLE:
        if count is None:
            raise ValueError(f"{m} needs its count")
        c = masked_count(count, size)
        if c == 0:
            return 0  # flags unaffected
        multi = OF if c != 1 else 0
        if m in _ROTATES:
            return multi  # only CF and OF are written, OF only for 1-bit rotates
        if m in _DOUBLE and c > size * 8:
            raise ValueError(f"{m} with count {c} > {size * 8} bits leaves the result undefined")
        if m in ("shl", "sal", "shr") and c >= size * 8:
            return multi | AF | CF
        return multi | AF
    return 0
