"""Bit and flag instructions: BT/BTS/BTR/BTC, BSF/BSR/TZCNT/LZCNT, POPCNT, BSWAP,
CMOVcc, SETcc, CBW/CWD families, SAHF/LAHF, CMC/CLC/STC/CLD/STD, XLAT, SALC and the
BCD adjustments (DAA DAS AAA AAS AAM AAD).

Instructions that write only some arithmetic flags (BT: CF; BSF: ZF; SAHF: five
of six) write them eagerly through the processor's ``setfl(mask, bits)``; the
ones that define SF/ZF/PF from a result and clear the rest (AAM, AAD) stay lazy.
"""

from .. import flags as F
from kvmpy.hw.translate.codegen import M, SIGN, emitter, legacy_only
from kvmpy.hw.translate.decoder import MAP0F
from .alu import sx

ARITH = F.CF | F.PF | F.AF | F.ZF | F.SF | F.OF
DF = 0x400


def setfl(g, mask: int, bits: str) -> None:
    """Emit an eager write of the RFLAGS bits in ``mask`` (``bits`` is an expression)."""
    g.emit("setfl(%#x, %s)" % (mask, bits))


def szp(v: str) -> str:
    """Expression for SF|ZF|PF of a byte-sized local ``v`` (for eager flag writes)."""
    return "((%s & 0x80) | (0x40 if %s == 0 else 0) | (0 if %s & 1 else 4))" % (v, v, popcount(v))


def popcount(v: str) -> str:
    """Expression for the number of set bits of ``v`` (int.bit_count is Python 3.10+)."""
    return "bin(%s).count('1')" % v


# --- BT, BTS, BTR, BTC ------------------------------------------------------------------------
BT, BTS, BTR, BTC = range(4)


def _bit_op(g, ins, op, size, off, reg_offset):
    """Test (and set/reset/complement) bit ``off`` of the r/m operand; CF = the old bit.

    With a register offset and a memory operand the offset is signed and may
    address any operand-sized unit of the bit string around the operand.  The
    displacement is added to the linear address (wrapping at 2^64, or 2^32
    outside 64-bit mode), not to the segment offset: the two differ only when
    the bit string wraps around the end of a 16-bit segment.
    """
    n = size * 8
    if reg_offset and ins.is_mem:
        ea = g.tmp("ea")
        shift = n.bit_length() - 1
        wrap = M[8] if g.mode.code == 8 else M[4]
        g.emit("%s = (%s + (%s >> %d) * %d) & %#x" % (ea, g.ea(ins), sx(off, size), shift, size, wrap))
        g.ea_var = ea
        v = g.load(ea, size)
    else:
        v = g.rm_read(size)
    b = g.tmp("b")
    g.emit("%s = %s & %d" % (b, off, n - 1))
    if op != BT:
        r = g.tmp("r")
        expr = {BTS: "%s | (1 << %s)", BTR: "%s & ~(1 << %s)", BTC: "%s ^ (1 << %s)"}[op]
        g.emit("%s = %s" % (r, expr % (v, b)))
        g.rm_write(size, r, reuse_ea=True)
    setfl(g, F.CF, "(%s >> %s) & 1" % (v, b))


@emitter(MAP0F | 0xA3, MAP0F | 0xAB, MAP0F | 0xB3, MAP0F | 0xBB)
def _bt_reg(g, ins):
    size = ins.opsize
    off = g.tmp("o")
    g.emit("%s = %s" % (off, g.reg(ins.reg, size)))
    _bit_op(g, ins, (ins.opc >> 3) & 3, size, off, reg_offset=True)


@emitter(MAP0F | 0xBA)
def _group8(g, ins):
    if ins.reg & 7 < 4:
        g.ud()
        return
    _bit_op(g, ins, ins.reg & 3, ins.opsize, str(ins.imm), reg_offset=False)


# --- bit scans and counts ---------------------------------------------------------------------
@emitter(MAP0F | 0xBC, MAP0F | 0xBD)
def _bit_scan(g, ins):
    """BSF/BSR (dest unchanged for a zero source, as the silicon does) or, with F3, TZCNT/LZCNT."""
    size, n = ins.opsize, ins.opsize * 8
    forward = ins.opc == MAP0F | 0xBC
    s = g.rm_read(size)
    if ins.rep == 0xF3:
        r = g.tmp("r")
        if forward:
            g.emit("%s = (%s & -%s).bit_length() - 1 if %s else %d" % (r, s, s, s, n))
        else:
            g.emit("%s = %d - %s.bit_length()" % (r, n, s))
        g.set_reg(ins.reg, size, r)
        setfl(g, F.CF | F.ZF, "(0 if %s else 1) | (0 if %s else 0x40)" % (s, r))
        return
    idx = "(%s & -%s).bit_length() - 1" % (s, s) if forward else "%s.bit_length() - 1" % s
    g.emit("if %s:" % s)
    g.indent()
    g.set_reg(ins.reg, size, "(%s)" % idx)
    g.dedent()
    setfl(g, F.ZF, "0 if %s else 0x40" % s)


@emitter(MAP0F | 0xB8)
def _popcnt(g, ins):
    if ins.rep != 0xF3:       # 0F B8 without F3 is JMPE (IA-64 only)
        g.ud()
        return
    s = g.rm_read(ins.opsize)
    g.set_reg(ins.reg, ins.opsize, popcount(s))
    setfl(g, ARITH, "0 if %s else 0x40" % s)


@emitter(*range(MAP0F | 0xC8, MAP0F | 0xD0))
def _bswap(g, ins):
    """BSWAP; with a 16-bit operand (undefined) the silicon clears the low word."""
    r = (ins.opc & 7) | (8 if ins.rex & 1 else 0)
    size = ins.opsize
    if size == 2:
        g.set_reg(r, 2, "0")
        return
    g.set_reg(r, size, "int.from_bytes(%s.to_bytes(%d, 'little'), 'big')" % (g.reg(r, size), size))


# --- conditional moves and sets ---------------------------------------------------------------
@emitter(*range(MAP0F | 0x40, MAP0F | 0x50))
def _cmov(g, ins):
    """CMOVcc reads its source even when false; a false 32-bit move still zero-extends."""
    size = ins.opsize
    v = g.rm_read(size)
    cond = g.cond(ins.opc & 0xF)
    if size == 4:
        g.set_reg(ins.reg, 4, "%s if %s else R[%d] & 0xffffffff" % (v, cond, ins.reg))
        return
    g.emit("if %s:" % cond)
    g.indent()
    g.set_reg(ins.reg, size, v)
    g.dedent()


@emitter(*range(MAP0F | 0x90, MAP0F | 0xA0))
def _setcc(g, ins):
    g.rm_write(1, "(1 if %s else 0)" % g.cond(ins.opc & 0xF))


# --- accumulator sign extensions --------------------------------------------------------------
@emitter(0x98)
def _cbw(g, ins):
    size = ins.opsize
    half = size // 2
    g.set_reg(0, size, "(%s & %#x)" % (sx("(R[0] & %#x)" % M[half], half), M[size]))


@emitter(0x99)
def _cwd(g, ins):
    size = ins.opsize
    g.set_reg(2, size, "(%#x if R[0] & %#x else 0)" % (M[size], SIGN[size]))


# --- flag instructions ------------------------------------------------------------------------
SAHF_BITS = F.SF | F.ZF | F.AF | F.PF | F.CF


@emitter(0x9E)
def _sahf(g, ins):
    setfl(g, SAHF_BITS, "(R[0] >> 8) & %#x" % SAHF_BITS)


@emitter(0x9F)
def _lahf(g, ins):
    fl = g.rflags()
    g.emit("R[0] = (R[0] & 0xffffffffffff00ff) | ((%s & %#x | 2) << 8)" % (fl, SAHF_BITS))


@emitter(0xF5)
def _cmc(g, ins):
    setfl(g, F.CF, "%s ^ 1" % g.carry())


@emitter(0xF8, 0xF9)
def _clc_stc(g, ins):
    setfl(g, F.CF, str(ins.opc & 1))


@emitter(0xFC)
def _cld(g, ins):
    g.emit("cpu.flags &= %#x" % (M[8] & ~DF))


@emitter(0xFD)
def _std(g, ins):
    g.emit("cpu.flags |= %#x" % DF)


# --- table lookup -----------------------------------------------------------------------------
@emitter(0xD7)
def _xlat(g, ins):
    off = "((R[3] + (R[0] & 0xff)) & %#x)" % M[ins.adsize]
    v = g.load(g.seg_addr(ins.seg if ins.seg >= 0 else 3, off), 1)
    g.set_reg(0, 1, v)


@emitter(0xD6)
@legacy_only
def _salc(g, ins):
    """SALC (undocumented, on Intel and AMD alike): AL = 0xFF if CF else 0; flags unchanged."""
    g.set_reg(0, 1, "(0xff if %s else 0)" % g.carry())


# --- BCD adjustments (legacy and compatibility modes only) -------------------------------------
def _decimal_adjust(g, ins, sub):
    """DAA/DAS, as the SDM's pseudo-code: adjust AL after a packed-BCD add or subtract."""
    fl = g.rflags()
    a, r, cf, af = g.tmp("a"), g.tmp("r"), g.tmp("cf"), g.tmp("af")
    op = "-" if sub else "+"
    g.emit("%s = R[0] & 0xff; %s = %s; %s = 0; %s = 0" % (a, r, a, cf, af))
    g.emit("if (%s & 15) > 9 or %s & 0x10:" % (a, fl))
    g.indent()
    g.emit("%s = %s %s 6; %s = (%s & 1) | (1 if not 0 <= %s <= 0xff else 0); %s = 0x10; %s &= 0xff"
           % (r, a, op, cf, fl, r, af, r))
    g.dedent()
    g.emit("if %s > 0x99 or %s & 1:" % (a, fl))
    g.indent()
    g.emit("%s = (%s %s 0x60) & 0xff; %s = 1" % (r, r, op, cf))
    g.dedent()
    if not sub:
        g.emit("else: %s = 0" % cf)
    g.set_reg(0, 1, r)
    setfl(g, ARITH, "%s | %s | %s" % (szp(r), cf, af))


def _ascii_adjust(g, ins, sub):
    """AAA/AAS: adjust AX after an unpacked-BCD add or subtract."""
    fl = g.rflags()
    ax, adj = g.tmp("ax"), g.tmp("j")
    g.emit("%s = R[0] & 0xffff" % ax)
    g.emit("%s = 1 if (%s & 15) > 9 or %s & 0x10 else 0" % (adj, ax, fl))
    if sub:
        g.emit("if %s: %s = ((%s - 6) & 0xff) | (((%s >> 8) - (1 if (%s & 0xff) < 6 else 0) - 1) & 0xff) << 8"
               % (adj, ax, ax, ax, ax))
    else:
        g.emit("if %s: %s = (%s + 0x106) & 0xffff" % (adj, ax, ax))
    g.emit("%s &= 0xff0f" % ax)
    g.set_reg(0, 2, ax)
    setfl(g, ARITH, "%s | (0x11 if %s else 0)" % (szp("(%s & 0xff)" % ax), adj))


@emitter(0x27)
@legacy_only
def _daa(g, ins):
    _decimal_adjust(g, ins, sub=False)


@emitter(0x2F)
@legacy_only
def _das(g, ins):
    _decimal_adjust(g, ins, sub=True)


@emitter(0x37)
@legacy_only
def _aaa(g, ins):
    _ascii_adjust(g, ins, sub=False)


@emitter(0x3F)
@legacy_only
def _aas(g, ins):
    _ascii_adjust(g, ins, sub=True)


@emitter(0xD4)
@legacy_only
def _aam(g, ins):
    """AAM imm8: AH = AL / imm8, AL = AL mod imm8; #DE when imm8 is 0."""
    if ins.imm == 0:
        g.emit("raise_fault(0)")
        g.ended = True
        return
    a = g.tmp("a")
    g.emit("%s = R[0] & 0xff" % a)
    g.set_reg(0, 2, "((%s // %d) << 8 | %s %% %d)" % (a, ins.imm, a, ins.imm))
    g.set_flags(F.K_LOGIC, 1, "(%s %% %d)" % (a, ins.imm))


@emitter(0xD5)
@legacy_only
def _aad(g, ins):
    """AAD imm8: AL = (AL + AH * imm8) & 0xFF, AH = 0."""
    r = g.tmp("r")
    g.emit("%s = ((R[0] & 0xff) + ((R[0] >> 8) & 0xff) * %d) & 0xff" % (r, ins.imm))
    g.set_reg(0, 2, r)
    g.set_flags(F.K_LOGIC, 1, r)
