"""Data movement: MOV, MOVZX/MOVSX, LEA, PUSH/POP, segment register moves, LEAVE/ENTER."""

from kvmpy.hw.translate.codegen import M, emitter, legacy_only
from kvmpy.hw.translate.decoder import MAP0F
from .alu import sx


@emitter(0x88, 0x89)
def _mov_rm_r(g, ins):
    size = 1 if ins.opc == 0x88 else ins.opsize
    v = g.tmp()
    g.emit("%s = %s" % (v, g.reg(ins.reg, size)))
    g.rm_write(size, v)


@emitter(0x8A, 0x8B)
def _mov_r_rm(g, ins):
    size = 1 if ins.opc == 0x8A else ins.opsize
    g.set_reg(ins.reg, size, g.rm_read(size))


@emitter(0xC6, 0xC7)
def _mov_rm_imm(g, ins):
    if ins.reg & 7:
        g.ud()
        return
    size = 1 if ins.opc == 0xC6 else ins.opsize
    g.rm_write(size, "%#x" % (ins.imm & M[size]))


@emitter(*range(0xB0, 0xC0))
def _mov_r_imm(g, ins):
    size = 1 if ins.opc < 0xB8 else ins.opsize
    r = (ins.opc & 7) | (8 if ins.rex & 1 else 0)
    g.set_reg(r, size, "%#x" % (ins.imm & M[size]))


@emitter(0xA0, 0xA1, 0xA2, 0xA3)
def _mov_moffs(g, ins):
    size = 1 if ins.opc in (0xA0, 0xA2) else ins.opsize
    g.limit_check(ins.seg, "%#x" % ins.imm, size, ins.adsize)
    a = g.seg_addr(ins.seg if ins.seg >= 0 else 3, "%#x" % ins.imm)
    if ins.opc <= 0xA1:
        g.set_reg(0, size, g.load(a, size))
    else:
        v = g.tmp()
        g.emit("%s = %s" % (v, g.reg(0, size)))
        g.store(a, size, v)


@emitter(0x8D)
def _lea(g, ins):
    if not ins.is_mem:
        g.ud()
        return
    off = g.ea_offset(ins)
    g.set_reg(ins.reg, ins.opsize, "(%s) & %#x" % (off, M[ins.opsize]))


@emitter(MAP0F | 0xB6, MAP0F | 0xB7, MAP0F | 0xBE, MAP0F | 0xBF)
def _movx(g, ins):
    src = 1 if ins.opc & 1 == 0 else 2
    v = g.rm_read(src)
    if ins.opc & 8:
        g.set_reg(ins.reg, ins.opsize, "%s & %#x" % (sx(v, src), M[ins.opsize]))
    else:
        g.set_reg(ins.reg, ins.opsize, v)


@emitter(0x63)
def _movsxd(g, ins):
    if g.mode.code != 8:
        g.emit("raise_ud()")        # ARPL is not implemented (no compiler emits it)
        g.ended = True
        return
    if ins.opsize == 8:
        v = g.rm_read(4)
        g.set_reg(ins.reg, 8, "%s & 0xffffffffffffffff" % sx(v, 4))
    else:
        g.set_reg(ins.reg, ins.opsize, g.rm_read(ins.opsize))


# --- stack ------------------------------------------------------------------------------

@emitter(*range(0x50, 0x58))
def _push_r(g, ins):
    r = (ins.opc & 7) | (8 if ins.rex & 1 else 0)
    v = g.tmp()
    g.emit("%s = %s" % (v, g.reg(r, ins.opsize)))
    g.push([v], ins.opsize)


@emitter(*range(0x58, 0x60))
def _pop_r(g, ins):
    r = (ins.opc & 7) | (8 if ins.rex & 1 else 0)
    (v,), newsp = g.pop(ins.opsize)
    g.set_sp(newsp)
    g.set_reg(r, ins.opsize, v)      # POP RSP loads the popped value last


@emitter(0x68, 0x6A)
def _push_imm(g, ins):
    imm = ins.imm
    if ins.opc == 0x6A and imm & 0x80:
        imm -= 0x100
    g.push(["%#x" % (imm & M[ins.opsize])], ins.opsize)


@emitter(0x8F)
def _pop_rm(g, ins):
    (v,), newsp = g.pop(ins.opsize)
    if ins.mod == 3:
        g.set_sp(newsp)
        g.set_reg(ins.rm, ins.opsize, v)
        return
    # The address is computed with RSP already incremented (SDM: POP m).
    nsp = g.tmp("nsp")
    g.emit("%s = %s" % (nsp, newsp))
    ea = g.ea(ins)
    if ins.base == 4:
        ea = ea.replace("R[4]", nsp)
    g.store(ea, ins.opsize, v)
    g.set_sp(nsp)


@emitter(0x60)
@legacy_only
def _pusha(g, ins):
    s = ins.opsize
    vals = []
    for r in range(8):
        v = g.tmp()
        g.emit("%s = %s" % (v, g.reg(r, s)))
        vals.append(v)
    g.push(vals, s)


@emitter(0x61)
@legacy_only
def _popa(g, ins):
    s = ins.opsize
    vals, newsp = g.pop(s, 8)
    g.set_sp(newsp)
    for r, v in zip((7, 6, 5, 4, 3, 2, 1, 0), vals):
        if r != 4:
            g.set_reg(r, s, v)


@emitter(0xC9)
def _leave(g, ins):
    s = ins.opsize
    st = g.mode.stack
    bp = g.tmp("bp")
    g.emit("%s = R[5] & %#x" % (bp, M[st]))
    v = g.load(g.seg_addr(2, bp), s)
    g.set_sp("(%s + %d) & %#x" % (bp, s, M[st]))
    g.set_reg(5, s, v)


@emitter(0xC8)
def _enter(g, ins):
    g.emit("enter(%d, %d, %d)" % (ins.imm, ins.imm2 & 31, ins.opsize))


# --- flags register ----------------------------------------------------------------------

@emitter(0x9C)
def _pushf(g, ins):
    fl = g.tmp("fl")
    g.emit("%s = pushf_value(%d)" % (fl, ins.opsize))
    g.push([fl], ins.opsize)


@emitter(0x9D, ends_block=True)
def _popf(g, ins):
    (v,), newsp = g.pop(ins.opsize)
    g.emit("popf_value(%s, %d)" % (v, ins.opsize))
    g.set_sp(newsp)


# --- segment registers -------------------------------------------------------------------

@emitter(0x8C)
def _mov_rm_sreg(g, ins):
    sreg = ins.reg & 7
    if sreg > 5:
        g.ud()
        return
    size = ins.opsize if ins.mod == 3 else 2
    g.rm_write(size, "cpu.seg[%d].selector" % sreg)


@emitter(0x8E, ends_block=True)
def _mov_sreg_rm(g, ins):
    sreg = ins.reg & 7
    if sreg == 1 or sreg > 5:
        g.ud()
        return
    v = g.rm_read(2)
    g.emit("load_seg(%d, %s)" % (sreg, v))
    if sreg == 2:
        g.emit("cpu.interrupt_shadow = 2")


_PUSH_SEG = {0x06: 0, 0x0E: 1, 0x16: 2, 0x1E: 3, MAP0F | 0xA0: 4, MAP0F | 0xA8: 5}
_POP_SEG = {0x07: 0, 0x17: 2, 0x1F: 3, MAP0F | 0xA1: 4, MAP0F | 0xA9: 5}


@emitter(*_PUSH_SEG)
def _push_seg(g, ins):
    if g.mode.code == 8 and ins.opc < 0x100:
        g.ud()
        return
    g.push(["cpu.seg[%d].selector" % _PUSH_SEG[ins.opc]], ins.opsize)


@emitter(*_POP_SEG, ends_block=True)
def _pop_seg(g, ins):
    if g.mode.code == 8 and ins.opc < 0x100:
        g.ud()
        return
    sreg = _POP_SEG[ins.opc]
    (v,), newsp = g.pop(ins.opsize)
    g.emit("load_seg(%d, %s & 0xffff)" % (sreg, v))
    g.set_sp(newsp)
    if sreg == 2:
        g.emit("cpu.interrupt_shadow = 2")


_LOAD_FAR = {0xC4: 0, 0xC5: 3, MAP0F | 0xB2: 2, MAP0F | 0xB4: 4, MAP0F | 0xB5: 5}


@emitter(*_LOAD_FAR, ends_block=True)
def _load_far(g, ins):
    if not ins.is_mem or (g.mode.code == 8 and ins.opc < 0x100):
        g.ud()
        return
    s = ins.opsize
    g.modrm_limit_check(ins, s + 2)
    g.ea_var = g.tmp("ea")
    g.emit("%s = %s" % (g.ea_var, g.ea(ins)))
    off = g.load(g.ea_var, s)
    sel = g.load("%s + %d" % (g.ea_var, s), 2)
    g.emit("load_seg(%d, %s)" % (_LOAD_FAR[ins.opc], sel))
    g.set_reg(ins.reg, s, off)
