"""MMX instructions: the integer SIMD instructions without a mandatory prefix, on MM0-MM7.

MMn is the significand of x87 physical register n: writing it sets that register's exponent
and sign to all ones, and every MMX instruction sets TOP to 0 and tags all registers valid
(EMMS empties them and, like the AMD silicon, also zeroes TOP).  Checks: CR0.EM is #UD, CR0.TS #NM, a pending x87 exception #MF; CR4.OSFXSR
is not needed.  ModRM register numbers ignore REX (there are eight MMX registers).  The lane
arithmetic is the SSE unit's (``kvmpy.hw.fpu.simd``) on 8-byte registers, and the handlers go into
``kvmpy.hw.insn.sse``'s table under the no-prefix key.

The MMX<->XMM moves and conversions (MOVQ2DQ, MOVDQ2Q, CVTPI2PS/PD, CVT(T)PS2PI, CVT(T)PD2PI)
are SSE instructions too: they need the SSE checks (CR4.OSFXSR) as well as MMX's #MF, and
they make the x87->MMX transition only when they touch an MMX register (CVTPI2PS/PD with a
memory source do not).
"""

from kvmpy.hw.translate.codegen import M, emitter
from kvmpy.hw.translate.decoder import MAP0F, MAP0F38, MAP0F3A
from . import sse

M64 = M[8]
_EXP_ONES = 0xFFFF << 64


def mmx_prologue(g):
    if not vars(g).get("mmx_ready"):
        g.emit("if cpu.cr0 & 4: raise_ud()")
        g.emit("if cpu.cr0 & 8: raise_fault(7)")
        g.emit("FP = cpu.fpu; SV = FP.sse; FP.used |= 1")     # MMX registers are x87 state
        g.mmx_ready = True
    _pending_x87(g)


def _pending_x87(g):
    """#MF before any MMX register is touched if the x87 unit has an unmasked exception pending."""
    g.emit("if FP.fsw & 0x80: raise_fault(16)")


def mm(r):
    return "(FP.st[%d] & %#x)" % (r & 7, M64)


def set_mm(g, r, val):
    g.emit("FP.st[%d] = %s | %#x" % (r & 7, val, _EXP_ONES))


def _ea(g, ins):
    ea = g.tmp("ea")
    g.emit("%s = %s" % (ea, g.ea(ins)))
    return ea


def src64(g, ins):
    return mm(ins.rm) if ins.mod == 3 else g.load(_ea(g, ins), 8)


def sse_mmx_prologue(g):
    """The checks of an SSE instruction that also obeys MMX's: SSE's (a superset of MMX's
    control-register checks), then the pending x87 exception (#MF)."""
    sse.sse_prologue(g)
    if not vars(g).get("mmx_ready"):
        g.emit("FP = cpu.fpu; FP.used |= 1")
        g.mmx_ready = True
    _pending_x87(g)


def transition(g):
    """The x87 -> MMX transition: TOP = 0 and every register tagged valid."""
    if not g.ended:
        g.emit("FP.top = 0; FP.ftw = 0xff")


def _mmx(*opcodes):
    """Register an MMX handler; it ends with the x87->MMX transition."""
    def deco(fn):
        def handler(g, ins):
            fn(g, ins)
            transition(g)
        for op in opcodes:
            sse.register((op, 0), handler, mmx_prologue)
        return fn
    return deco


def _sse_mmx(*keys):
    """Register an MMX<->XMM handler under (opcode, prefix) keys; it calls ``transition``
    itself, since some of its forms leave the x87 state alone."""
    def deco(fn):
        for k in keys:
            sse.register(k, fn, sse_mmx_prologue)
        return fn
    return deco


def _lanes(call):
    """``call`` of ``kvmpy.hw.fpu.simd`` on 8-byte registers: dest = call(a = dest, b = source)."""
    def h(g, ins):
        s = src64(g, ins)
        set_mm(g, ins.reg, "SV.%s" % (call[:-1] + ", n=8)") % {"a": mm(ins.reg), "b": s})
    return h


for _op, _call in sse.INT2.items():
    if _op not in (0x6C, 0x6D):                  # PUNPCKLQDQ/PUNPCKHQDQ are XMM only
        _mmx(MAP0F | _op)(_lanes(_call))
for _op, _call in sse.INT2_38.items():
    if _op <= 0x0B:                              # the SSSE3 part
        _mmx(MAP0F38 | _op)(_lanes(_call))
for _op in (0x1C, 0x1D, 0x1E):
    _mmx(MAP0F38 | _op)(_lanes(sse.INT1_38[_op]))


def _logic(expr):
    def h(g, ins):
        s = src64(g, ins)
        set_mm(g, ins.reg, "(%s)" % (expr % {"a": mm(ins.reg), "b": s}))
    return h


_mmx(MAP0F | 0xDB)(_logic("%(a)s & %(b)s"))
_mmx(MAP0F | 0xDF)(_logic("~%%(a)s & %%(b)s & %#x" % M64))
_mmx(MAP0F | 0xEB)(_logic("%(a)s | %(b)s"))
_mmx(MAP0F | 0xEF)(_logic("%(a)s ^ %(b)s"))


@_mmx(*[MAP0F | op for op in sse.SHIFT_BY_REG])
def _shift_reg(g, ins):
    size, kind = sse.SHIFT_BY_REG[ins.opc & 0xFF]
    s = src64(g, ins)
    set_mm(g, ins.reg, "SV.shift(%s, %s, %d, %r, 8)" % (mm(ins.reg), s, size, kind))


@_mmx(MAP0F | 0x71, MAP0F | 0x72, MAP0F | 0x73)
def _shift_imm(g, ins):
    size = {0x71: 2, 0x72: 4, 0x73: 8}[ins.opc & 0xFF]
    kind = {2: "r", 4: "a", 6: "l"}.get(ins.reg & 7)
    if ins.mod != 3 or kind is None or (kind == "a" and size == 8):
        return g.ud()
    set_mm(g, ins.rm, "SV.shift(%s, %d, %d, %r, 8)" % (mm(ins.rm), ins.imm, size, kind))


@_mmx(MAP0F | 0x6E)
def _movd_to_mm(g, ins):
    set_mm(g, ins.reg, g.rm_read(8 if ins.rex_w else 4))


@_mmx(MAP0F | 0x7E)
def _movd_from_mm(g, ins):
    size = 8 if ins.rex_w else 4
    g.rm_write(size, "(FP.st[%d] & %#x)" % (ins.reg & 7, M[size]))


@_mmx(MAP0F | 0x6F)
def _movq_load(g, ins):
    set_mm(g, ins.reg, src64(g, ins))


@_mmx(MAP0F | 0x7F, MAP0F | 0xE7)
def _movq_store(g, ins):
    if ins.mod == 3:
        if ins.opc == MAP0F | 0xE7:         # MOVNTQ takes memory only
            return g.ud()
        set_mm(g, ins.rm, mm(ins.reg))
    else:
        g.store(_ea(g, ins), 8, mm(ins.reg))


@_mmx(MAP0F | 0x70)
def _pshufw(g, ins):
    s = src64(g, ins)
    order = [(ins.imm >> (2 * i)) & 3 for i in range(4)]
    set_mm(g, ins.reg, "SV.shuffle_lanes(%s, %r, 2, 8)" % (s, order))


@_mmx(MAP0F | 0xC4)
def _pinsrw(g, ins):
    v = g.tmp()
    if ins.mod == 3:
        g.emit("%s = R[%d] & 0xffff" % (v, ins.rm))
    else:
        g.emit("%s = %s" % (v, g.load(_ea(g, ins), 2)))
    sh = 16 * (ins.imm & 3)
    set_mm(g, ins.reg, "(%s & %#x | %s << %d)" % (mm(ins.reg), M64 ^ (0xFFFF << sh), v, sh))


@_mmx(MAP0F | 0xC5)
def _pextrw(g, ins):
    if ins.mod != 3:
        return g.ud()
    g.set_reg(ins.reg, 8, "((FP.st[%d] >> %d) & 0xffff)" % (ins.rm & 7, 16 * (ins.imm & 3)))


@_mmx(MAP0F | 0xD7)
def _pmovmskb(g, ins):
    if ins.mod != 3:
        return g.ud()
    g.set_reg(ins.reg, 8, "SV.movmsk(%s, 1, 8)" % mm(ins.rm))


@_mmx(MAP0F | 0xF7)
def _maskmovq(g, ins):
    if ins.mod != 3:
        return g.ud()
    sse.maskmov(g, ins, mm(ins.reg), mm(ins.rm), 8)


@_mmx(MAP0F3A | 0x0F)
def _palignr(g, ins):
    s = src64(g, ins)
    set_mm(g, ins.reg, "SV.palignr(%s, %s, %d, 8)" % (mm(ins.reg), s, ins.imm))


# --- MMX <-> XMM ----------------------------------------------------------------------------
@_sse_mmx((MAP0F | 0xD6, 0xF3), (MAP0F | 0xD6, 0xF2))
def _movq_mm_xmm(g, ins):
    """MOVQ2DQ xmm, mm (zero-extends) and MOVDQ2Q mm, xmm: register forms only."""
    if ins.mod != 3:
        return g.ud()
    if ins.rep == 0xF3:
        g.emit("XM[%d] = %s" % (ins.reg, mm(ins.rm)))
    else:
        set_mm(g, ins.reg, "(XM[%d] & %#x)" % (ins.rm, M64))
    transition(g)


@_sse_mmx((MAP0F | 0x2A, 0), (MAP0F | 0x2A, 0x66))
def _cvtpi2f(g, ins):
    """CVTPI2PS (low half of the XMM register; MXCSR rounding) and CVTPI2PD (exact) from
    two dwords in mm/m64 (no alignment)."""
    size = 8 if ins.opsize_prefix else 4
    v = g.tmp()
    g.emit("%s = SV.join(SV.cvt_i2f(cpu, SV.split(%s, 'i', 8), %d), %d)" % (v, src64(g, ins), size, size))
    if size == 4:
        sse.set_low(g, ins.reg, 8, v)
    else:
        g.emit("XM[%d] = %s" % (ins.reg, v))
    if ins.mod == 3:
        transition(g)


@_sse_mmx(*[(MAP0F | op, p) for op in (0x2C, 0x2D) for p in (0, 0x66)])
def _cvtf2pi(g, ins):
    """CVT(T)PS2PI from xmm/m64 and CVT(T)PD2PI from xmm/m128 (aligned) to two dwords in an MMX
    register; out of range and NaN give the integer indefinite 0x80000000."""
    if ins.opsize_prefix:
        size, s = 8, sse.src128(g, ins)
    else:
        size, s = 4, "(%s & %#x)" % (sse.src_low(g, ins, 8), M64)
    set_mm(g, ins.reg, "SV.join(SV.cvt_f2i(cpu, %s, %d, 32, 2, %s), 4)" % (s, size, ins.opc & 1 == 0))
    transition(g)


@emitter(MAP0F | 0x77)
def _emms(g, ins):
    if ins.rep or ins.opsize_prefix:
        return g.ud()
    mmx_prologue(g)
    g.emit("FP.ftw = 0; FP.top = 0")         # TOP = 0 too, as the silicon (AMD EPYC) does
