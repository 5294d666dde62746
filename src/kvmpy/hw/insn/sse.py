"""SSE, SSE2, SSE3, SSSE3, SSE4.1 and SSE4.2 (PCMPxSTRx) instructions on XMM registers (legacy encodings).

XMM registers live in ``cpu.fpu.xmm`` as 128-bit ints.  A block's first SSE instruction
checks the control registers (CR0.EM or no CR4.OSFXSR: #UD; CR0.TS: #NM) and binds the
locals ``XM`` (the register list) and ``SV`` (``kvmpy.hw.fpu.simd``, the execution unit); later
SSE instructions in the block reuse them, since nothing inside a block can change CR0/CR4
without ending it.  Bitwise operations and moves are inline; the rest call ``SV``.

Instructions are keyed by (opcode, mandatory prefix): the prefix is F3/F2 when present,
else 66, else none.  Keys without a handler are #UD; ``kvmpy.hw.insn.mmx`` adds the MMX
forms (no prefix) of the integer instructions to the same table.
"""

from kvmpy.hw.translate.codegen import M, emitter
from kvmpy.hw.translate.decoder import MAP0F, MAP0F38, MAP0F3A

M128 = (1 << 128) - 1
M64 = M[8]
_H: dict = {}
_PROLOGUE: dict = {}        # keys whose handler needs another prologue than SSE's (MMX)


def _on(*keys):
    """Register a handler for (opcode, prefix) keys."""
    def deco(fn):
        for k in keys:
            _H[k] = fn
        return fn
    return deco


def register(key, handler, prologue):
    """Add a handler with its own prologue (``kvmpy.hw.insn.mmx`` uses the unprefixed keys)."""
    _H[key] = handler
    _PROLOGUE[key] = prologue


def prefix(ins) -> int:
    return ins.rep or (0x66 if ins.opsize_prefix else 0)


def sse_prologue(g):
    """The availability checks and locals, once per block."""
    if vars(g).get("sse_ready"):
        return
    g.emit("if cpu.cr0 & 4 or not cpu.cr4 & 0x200: raise_ud()")
    g.emit("if cpu.cr0 & 8: raise_fault(7)")
    g.emit("XM = cpu.fpu.xmm; SV = cpu.fpu.sse; cpu.fpu.used |= 2")    # XINUSE (xsave.py)
    g.sse_ready = True


def _dispatch(g, ins):
    key = (ins.opc, prefix(ins))
    h = _H.get(key)
    if h is None or ins.lock:
        g.ud()
        return
    _PROLOGUE.get(key, sse_prologue)(g)
    h(g, ins)


# --- operands ------------------------------------------------------------------------------
def _ea(g, ins):
    ea = g.tmp("ea")
    g.emit("%s = %s" % (ea, g.ea(ins)))
    return ea


def load128(g, ea, aligned=True, misaligned_mode=False):
    """A 16-byte load; ``aligned``: #GP if misaligned, unless ``misaligned_mode`` and
    MXCSR.MM (AMD's misaligned SSE mode: only arithmetic operands, never the aligned moves;
    the bit can be set only where the CPU model's MXCSR_MASK has it)."""
    if aligned:
        mm = " and not cpu.fpu.mxcsr & 0x20000" if misaligned_mode else ""
        g.emit("if %s & 15%s: raise_fault(13, 0)" % (ea, mm))
    lo = g.load(ea, 8)
    hi = g.load("((%s + 8) & %#x)" % (ea, M64), 8)
    v = g.tmp("x")
    g.emit("%s = %s | %s << 64" % (v, lo, hi))
    return v


def store128(g, ea, val, aligned=True):
    if aligned:
        g.emit("if %s & 15: raise_fault(13, 0)" % ea)
    if not g.emulating:
        g.emit("probe_w(%s, 16)" % ea)
    g.store(ea, 8, "(%s & %#x)" % (val, M64))
    g.store("((%s + 8) & %#x)" % (ea, M64), 8, "(%s >> 64)" % val)


def src128(g, ins, aligned=True, move=False):
    """The xmm/m128 source operand (of an arithmetic instruction unless ``move``)."""
    if ins.mod == 3:
        return "XM[%d]" % ins.rm
    return load128(g, _ea(g, ins), aligned, misaligned_mode=not move)


def src_low(g, ins, size):
    """The xmm/m32 or xmm/m64 source of a scalar instruction (a register keeps its upper bits,
    which scalar handlers ignore)."""
    if ins.mod == 3:
        return "XM[%d]" % ins.rm
    return g.load(_ea(g, ins), size)


def set_low(g, r, size, val):
    """Write the low ``size`` bytes of XMM r, keeping the rest."""
    keep = M128 ^ M[size]
    g.emit("XM[%d] = (XM[%d] & %#x) | %s" % (r, r, keep, val))



# --- moves ------------------------------------------------------------------------------------
def _mov_load(aligned):
    def h(g, ins):
        v = src128(g, ins, aligned, move=True)
        g.emit("XM[%d] = %s" % (ins.reg, v))
    return h


def _mov_store(aligned):
    def h(g, ins):
        if ins.mod == 3:
            g.emit("XM[%d] = XM[%d]" % (ins.rm, ins.reg))
        else:
            store128(g, _ea(g, ins), "XM[%d]" % ins.reg, aligned)
    return h


_on((MAP0F | 0x10, 0), (MAP0F | 0x10, 0x66), (MAP0F | 0x6F, 0xF3))(_mov_load(False))
_on((MAP0F | 0x28, 0), (MAP0F | 0x28, 0x66), (MAP0F | 0x6F, 0x66))(_mov_load(True))
_on((MAP0F | 0x11, 0), (MAP0F | 0x11, 0x66), (MAP0F | 0x7F, 0xF3))(_mov_store(False))
_on((MAP0F | 0x29, 0), (MAP0F | 0x29, 0x66), (MAP0F | 0x7F, 0x66))(_mov_store(True))


@_on((MAP0F | 0xF0, 0xF2), (MAP0F38 | 0x2A, 0x66))
def _load_only(g, ins):
    """LDDQU (unaligned) / MOVNTDQA (aligned): memory sources only."""
    if ins.mod == 3:
        return g.ud()
    v = load128(g, _ea(g, ins), aligned=ins.opc != MAP0F | 0xF0)
    g.emit("XM[%d] = %s" % (ins.reg, v))


@_on((MAP0F | 0x2B, 0), (MAP0F | 0x2B, 0x66), (MAP0F | 0xE7, 0x66))
def _movnt(g, ins):
    if ins.mod == 3:
        return g.ud()
    store128(g, _ea(g, ins), "XM[%d]" % ins.reg)


@_on((MAP0F | 0x10, 0xF3), (MAP0F | 0x10, 0xF2))
def _movs_load(g, ins):
    size = 4 if ins.rep == 0xF3 else 8
    if ins.mod == 3:
        set_low(g, ins.reg, size, "(XM[%d] & %#x)" % (ins.rm, M[size]))
    else:
        v = g.load(_ea(g, ins), size)
        g.emit("XM[%d] = %s" % (ins.reg, v))


@_on((MAP0F | 0x11, 0xF3), (MAP0F | 0x11, 0xF2), (MAP0F | 0x13, 0), (MAP0F | 0x13, 0x66),
     (MAP0F | 0xD6, 0x66))
def _movs_store(g, ins):
    """MOVSS/MOVSD/MOVLPS/MOVLPD/MOVQ stores of the low lane."""
    size = 4 if ins.rep == 0xF3 else 8
    if ins.mod != 3:
        g.store(_ea(g, ins), size, "(XM[%d] & %#x)" % (ins.reg, M[size]))
    elif ins.opc == MAP0F | 0xD6:
        g.emit("XM[%d] = XM[%d] & %#x" % (ins.rm, ins.reg, M64))
    elif ins.opc == MAP0F | 0x11:
        set_low(g, ins.rm, size, "(XM[%d] & %#x)" % (ins.reg, M[size]))
    else:
        g.ud()


@_on((MAP0F | 0x12, 0), (MAP0F | 0x12, 0x66), (MAP0F | 0x16, 0), (MAP0F | 0x16, 0x66))
def _movlh_load(g, ins):
    """MOVLPS/MOVLPD/MOVHPS/MOVHPD loads; MOVHLPS/MOVLHPS register forms."""
    high = ins.opc == MAP0F | 0x16
    r = ins.reg
    if ins.mod == 3:
        if ins.opsize_prefix:
            return g.ud()
        if high:        # MOVLHPS
            g.emit("XM[%d] = (XM[%d] & %#x) | (XM[%d] & %#x) << 64" % (r, r, M64, ins.rm, M64))
        else:           # MOVHLPS
            set_low(g, r, 8, "(XM[%d] >> 64)" % ins.rm)
        return
    v = g.load(_ea(g, ins), 8)
    if high:
        g.emit("XM[%d] = (XM[%d] & %#x) | %s << 64" % (r, r, M64, v))
    else:
        set_low(g, r, 8, v)


@_on((MAP0F | 0x17, 0), (MAP0F | 0x17, 0x66))
def _movh_store(g, ins):
    if ins.mod == 3:
        return g.ud()
    g.store(_ea(g, ins), 8, "(XM[%d] >> 64)" % ins.reg)


@_on((MAP0F | 0x12, 0xF3), (MAP0F | 0x16, 0xF3), (MAP0F | 0x12, 0xF2))
def _movdup(g, ins):
    """MOVSLDUP / MOVSHDUP / MOVDDUP."""
    if ins.rep == 0xF2:
        v = g.tmp()
        g.emit("%s = %s & %#x" % (v, src_low(g, ins, 8), M64))
        g.emit("XM[%d] = %s | %s << 64" % (ins.reg, v, v))
        return
    order = "[0, 0, 2, 2]" if ins.opc == MAP0F | 0x12 else "[1, 1, 3, 3]"
    g.emit("XM[%d] = SV.shuffle_lanes(%s, %s, 4)" % (ins.reg, src128(g, ins), order))


@_on((MAP0F | 0x6E, 0x66))
def _movd_to_xmm(g, ins):
    v = g.rm_read(8 if ins.rex_w else 4)
    g.emit("XM[%d] = %s" % (ins.reg, v))


@_on((MAP0F | 0x7E, 0x66))
def _movd_from_xmm(g, ins):
    size = 8 if ins.rex_w else 4
    g.rm_write(size, "(XM[%d] & %#x)" % (ins.reg, M[size]))


@_on((MAP0F | 0x7E, 0xF3))
def _movq_load(g, ins):
    g.emit("XM[%d] = %s & %#x" % (ins.reg, src_low(g, ins, 8), M64))


@_on((MAP0F | 0x50, 0), (MAP0F | 0x50, 0x66), (MAP0F | 0xD7, 0x66))
def _movmsk(g, ins):
    if ins.mod != 3:
        return g.ud()
    size = {0x50: 4 if not ins.opsize_prefix else 8, 0xD7: 1}[ins.opc & 0xFF]
    v = g.tmp()
    g.emit("%s = SV.movmsk(XM[%d], %d)" % (v, ins.rm, size))
    g.set_reg(ins.reg, 8, v)


@_on((MAP0F | 0xC4, 0x66), (MAP0F3A | 0x20, 0x66), (MAP0F3A | 0x22, 0x66))
def _pinsr(g, ins):
    size = {0xC4: 2, 0x20: 1, 0x22: 8 if ins.rex_w else 4}[ins.opc & 0xFF]
    if ins.mod == 3:
        v = g.tmp()
        g.emit("%s = R[%d] & %#x" % (v, ins.rm, M[size]))
    else:
        v = g.rm_read(size)
    sh = 8 * size * (ins.imm % (16 // size))
    g.emit("XM[%d] = (XM[%d] & %#x) | %s << %d" % (ins.reg, ins.reg, M128 ^ (M[size] << sh), v, sh))


@_on((MAP0F | 0xC5, 0x66), (MAP0F3A | 0x14, 0x66), (MAP0F3A | 0x15, 0x66), (MAP0F3A | 0x16, 0x66),
     (MAP0F3A | 0x17, 0x66))
def _pextr(g, ins):
    op = ins.opc & 0xFF
    size = {0xC5: 2, 0x14: 1, 0x15: 2, 0x16: 8 if ins.rex_w else 4, 0x17: 4}[op]
    src, dst = (ins.rm, ins.reg) if op == 0xC5 else (ins.reg, None)
    if op == 0xC5 and ins.mod != 3:
        return g.ud()
    sh = 8 * size * (ins.imm % (16 // size))
    val = "((XM[%d] >> %d) & %#x)" % (src, sh, M[size])
    if dst is not None:     # register destinations are zero-extended
        g.set_reg(dst, 8, val)
    elif ins.mod == 3:
        g.set_reg(ins.rm, 8, val)
    else:
        g.rm_write(size, val)


@_on((MAP0F3A | 0x21, 0x66))
def _insertps(g, ins):
    if ins.mod == 3:
        lane = "((XM[%d] >> %d) & 0xffffffff)" % (ins.rm, 32 * (ins.imm >> 6))
    else:
        lane = g.load(_ea(g, ins), 4)
    g.emit("XM[%d] = SV.insertps(XM[%d], %s, %d)" % (ins.reg, ins.reg, lane, ins.imm))


# --- bitwise ----------------------------------------------------------------------------------
def _logic(expr):
    def h(g, ins):
        s = src128(g, ins)
        g.emit("XM[%d] = %s" % (ins.reg, expr % {"a": "XM[%d]" % ins.reg, "b": s}))
    return h


for _p in (0, 0x66):
    _on((MAP0F | 0x54, _p))(_logic("%(a)s & %(b)s"))
    _on((MAP0F | 0x55, _p))(_logic("~%%(a)s & %%(b)s & %#x" % M128))
    _on((MAP0F | 0x56, _p))(_logic("%(a)s | %(b)s"))
    _on((MAP0F | 0x57, _p))(_logic("%(a)s ^ %(b)s"))
_on((MAP0F | 0xDB, 0x66))(_logic("%(a)s & %(b)s"))
_on((MAP0F | 0xDF, 0x66))(_logic("~%%(a)s & %%(b)s & %#x" % M128))
_on((MAP0F | 0xEB, 0x66))(_logic("%(a)s | %(b)s"))
_on((MAP0F | 0xEF, 0x66))(_logic("%(a)s ^ %(b)s"))


@_on((MAP0F38 | 0x17, 0x66))
def _ptest(g, ins):
    s = src128(g, ins)
    a = "XM[%d]" % ins.reg
    g.emit("setfl(0x8d5, (0x40 if not %s & %s else 0) | (1 if not ~%s & %s & %#x else 0))" % (a, s, a, s, M128))


# --- integer lanes ----------------------------------------------------------------------------
def _int2(call):
    """dest = SV.<call with a = dest, b = source>."""
    def h(g, ins):
        s = src128(g, ins)
        g.emit("XM[%d] = SV.%s" % (ins.reg, call % {"a": "XM[%d]" % ins.reg, "b": s}))
    return h


def _int1(call):
    """dest = SV.<call of the source only>."""
    def h(g, ins):
        s = src128(g, ins)
        g.emit("XM[%d] = SV.%s" % (ins.reg, call % {"b": s}))
    return h


INT2 = {
    0xD4: "add(%(a)s, %(b)s, 'q')", 0xFC: "add(%(a)s, %(b)s, 'b')", 0xFD: "add(%(a)s, %(b)s, 'h')",
    0xFE: "add(%(a)s, %(b)s, 'i')", 0xF8: "sub(%(a)s, %(b)s, 'b')", 0xF9: "sub(%(a)s, %(b)s, 'h')",
    0xFA: "sub(%(a)s, %(b)s, 'i')", 0xFB: "sub(%(a)s, %(b)s, 'q')",
    0xEC: "adds(%(a)s, %(b)s, 'b')", 0xED: "adds(%(a)s, %(b)s, 'h')", 0xDC: "adds(%(a)s, %(b)s, 'B')",
    0xDD: "adds(%(a)s, %(b)s, 'H')", 0xE8: "subs(%(a)s, %(b)s, 'b')", 0xE9: "subs(%(a)s, %(b)s, 'h')",
    0xD8: "subs(%(a)s, %(b)s, 'B')", 0xD9: "subs(%(a)s, %(b)s, 'H')",
    0xDA: "minimum(%(a)s, %(b)s, 'B')", 0xDE: "maximum(%(a)s, %(b)s, 'B')",
    0xEA: "minimum(%(a)s, %(b)s, 'h')", 0xEE: "maximum(%(a)s, %(b)s, 'h')",
    0x74: "cmpeq(%(a)s, %(b)s, 'b')", 0x75: "cmpeq(%(a)s, %(b)s, 'h')", 0x76: "cmpeq(%(a)s, %(b)s, 'i')",
    0x64: "cmpgt(%(a)s, %(b)s, 'b')", 0x65: "cmpgt(%(a)s, %(b)s, 'h')", 0x66: "cmpgt(%(a)s, %(b)s, 'i')",
    0xE0: "avg(%(a)s, %(b)s, 'B')", 0xE3: "avg(%(a)s, %(b)s, 'H')", 0xD5: "mullo(%(a)s, %(b)s, 'h')",
    0xE5: "mulhi(%(a)s, %(b)s, 'h')", 0xE4: "mulhi(%(a)s, %(b)s, 'H')", 0xF4: "mul_even(%(a)s, %(b)s, 'I')",
    0xF5: "maddwd(%(a)s, %(b)s)", 0xF6: "sadbw(%(a)s, %(b)s)",
    0x63: "pack(%(a)s, %(b)s, 'h', 'b')", 0x6B: "pack(%(a)s, %(b)s, 'i', 'h')",
    0x67: "pack(%(a)s, %(b)s, 'h', 'B')",
    0x60: "unpack_lo(%(a)s, %(b)s, 1)", 0x61: "unpack_lo(%(a)s, %(b)s, 2)", 0x62: "unpack_lo(%(a)s, %(b)s, 4)",
    0x6C: "unpack_lo(%(a)s, %(b)s, 8)", 0x68: "unpack_hi(%(a)s, %(b)s, 1)", 0x69: "unpack_hi(%(a)s, %(b)s, 2)",
    0x6A: "unpack_hi(%(a)s, %(b)s, 4)", 0x6D: "unpack_hi(%(a)s, %(b)s, 8)",
}
INT2_38 = {
    0x00: "pshufb(%(a)s, %(b)s)", 0x01: "hadd(%(a)s, %(b)s, 'h')", 0x02: "hadd(%(a)s, %(b)s, 'i')",
    0x03: "hadd(%(a)s, %(b)s, 'h', saturate=True)", 0x05: "hadd(%(a)s, %(b)s, 'h', subtract=True)",
    0x06: "hadd(%(a)s, %(b)s, 'i', subtract=True)",
    0x07: "hadd(%(a)s, %(b)s, 'h', subtract=True, saturate=True)", 0x04: "maddubsw(%(a)s, %(b)s)",
    0x08: "sign(%(a)s, %(b)s, 'b')", 0x09: "sign(%(a)s, %(b)s, 'h')", 0x0A: "sign(%(a)s, %(b)s, 'i')",
    0x0B: "mulhrs(%(a)s, %(b)s, 'h')", 0x28: "mul_even(%(a)s, %(b)s, 'i')", 0x29: "cmpeq(%(a)s, %(b)s, 'q')",
    0x2B: "pack(%(a)s, %(b)s, 'i', 'H')", 0x37: "cmpgt(%(a)s, %(b)s, 'q')",
    0x38: "minimum(%(a)s, %(b)s, 'b')", 0x39: "minimum(%(a)s, %(b)s, 'i')", 0x3A: "minimum(%(a)s, %(b)s, 'H')",
    0x3B: "minimum(%(a)s, %(b)s, 'I')", 0x3C: "maximum(%(a)s, %(b)s, 'b')", 0x3D: "maximum(%(a)s, %(b)s, 'i')",
    0x3E: "maximum(%(a)s, %(b)s, 'H')", 0x3F: "maximum(%(a)s, %(b)s, 'I')", 0x40: "mullo(%(a)s, %(b)s, 'i')",
    0x10: "blendv(%(a)s, %(b)s, XM[0], 1)", 0x14: "blendv(%(a)s, %(b)s, XM[0], 4)",
    0x15: "blendv(%(a)s, %(b)s, XM[0], 8)",
}
INT1_38 = {0x1C: "absolute(%(b)s, 'b')", 0x1D: "absolute(%(b)s, 'h')", 0x1E: "absolute(%(b)s, 'i')",
            0x41: "minpos(%(b)s)"}
for _i, (_c, _s) in enumerate((("b", 2), ("b", 4), ("b", 8), ("h", 4), ("h", 8), ("i", 8))):
    INT1_38[0x20 + _i] = "extend(%%(b)s, %r, %d)" % (_c, _s)
    INT1_38[0x30 + _i] = "extend(%%(b)s, %r, %d)" % (_c.upper(), _s)
for _op, _call in INT2.items():
    _on((MAP0F | _op, 0x66))(_int2(_call))
for _op, _call in INT2_38.items():
    _on((MAP0F38 | _op, 0x66))(_int2(_call))
for _op, _call in INT1_38.items():
    _on((MAP0F38 | _op, 0x66))(_int1(_call))


@_on((MAP0F38 | 0x20, 0x66), (MAP0F38 | 0x21, 0x66), (MAP0F38 | 0x22, 0x66), (MAP0F38 | 0x23, 0x66),
     (MAP0F38 | 0x24, 0x66), (MAP0F38 | 0x25, 0x66), (MAP0F38 | 0x30, 0x66), (MAP0F38 | 0x31, 0x66),
     (MAP0F38 | 0x32, 0x66), (MAP0F38 | 0x33, 0x66), (MAP0F38 | 0x34, 0x66), (MAP0F38 | 0x35, 0x66))
def _pmovx(g, ins):
    """PMOVSX/PMOVZX read only the lanes they widen (m16/m32/m64, no alignment check)."""
    i = ins.opc & 0xF
    src_bytes = (8, 4, 2, 8, 4, 8)[i]
    s = "XM[%d]" % ins.rm if ins.mod == 3 else g.load(_ea(g, ins), src_bytes)
    g.emit("XM[%d] = SV.%s" % (ins.reg, INT1_38[ins.opc & 0xFF] % {"b": s}))


@_on((MAP0F | 0x70, 0x66), (MAP0F | 0x70, 0xF3), (MAP0F | 0x70, 0xF2))
def _pshuf(g, ins):
    s = src128(g, ins)
    call = {0x66: "pshufd(%s, %d)", 0xF3: "pshufw(%s, %d, True)", 0xF2: "pshufw(%s, %d, False)"}[prefix(ins)]
    g.emit("XM[%d] = SV.%s" % (ins.reg, call % (s, ins.imm)))


@_on((MAP0F3A | 0x0F, 0x66))
def _palignr(g, ins):
    s = src128(g, ins)
    g.emit("XM[%d] = SV.palignr(XM[%d], %s, %d)" % (ins.reg, ins.reg, s, ins.imm))


@_on((MAP0F3A | 0x0C, 0x66), (MAP0F3A | 0x0D, 0x66), (MAP0F3A | 0x0E, 0x66))
def _blend_imm(g, ins):
    size = {0x0C: 4, 0x0D: 8, 0x0E: 2}[ins.opc & 0xFF]
    s = src128(g, ins)
    g.emit("XM[%d] = SV.blend(XM[%d], %s, %d, %d)" % (ins.reg, ins.reg, s, ins.imm, size))


# Shifts: by an XMM/m128 count, and the immediate groups 71-73
SHIFT_BY_REG = {0xD1: (2, "r"), 0xD2: (4, "r"), 0xD3: (8, "r"), 0xE1: (2, "a"), 0xE2: (4, "a"),
              0xF1: (2, "l"), 0xF2: (4, "l"), 0xF3: (8, "l")}


@_on(*[(MAP0F | op, 0x66) for op in SHIFT_BY_REG])
def _shift_xmm(g, ins):
    size, kind = SHIFT_BY_REG[ins.opc & 0xFF]
    s = src128(g, ins)
    g.emit("XM[%d] = SV.shift(XM[%d], %s & %#x, %d, %r)" % (ins.reg, ins.reg, s, M64, size, kind))


@_on((MAP0F | 0x71, 0x66), (MAP0F | 0x72, 0x66), (MAP0F | 0x73, 0x66))
def _shift_imm(g, ins):
    size = {0x71: 2, 0x72: 4, 0x73: 8}[ins.opc & 0xFF]
    op = ins.reg & 7
    r, n = ins.rm, ins.imm
    if ins.mod != 3:
        return g.ud()
    if size == 8 and op in (3, 7):     # PSRLDQ / PSLLDQ: whole-register byte shifts
        if n > 15:
            g.emit("XM[%d] = 0" % r)
        elif op == 3:
            g.emit("XM[%d] >>= %d" % (r, 8 * n))
        else:
            g.emit("XM[%d] = (XM[%d] << %d) & %#x" % (r, r, 8 * n, M128))
        return
    kind = {2: "r", 4: "a", 6: "l"}.get(op)
    if kind is None or (kind == "a" and size == 8):
        return g.ud()
    g.emit("XM[%d] = SV.shift(XM[%d], %d, %d, %r)" % (r, r, n, size, kind))


# --- floating point -------------------------------------------------------------------------
_SHAPE = {0: (4, 4), 0x66: (8, 2), 0xF3: (4, 1), 0xF2: (8, 1)}      # prefix -> (lane size, lanes)
_FP_OPS = {0x51: "sqrt", 0x58: "add", 0x59: "mul", 0x5C: "sub", 0x5D: "min", 0x5E: "div", 0x5F: "max"}


def fp_source(g, ins, size, count):
    """xmm/m128 for packed forms (aligned), xmm/m32 or m64 for scalar forms."""
    return src128(g, ins) if count > 1 else src_low(g, ins, size)


@_on(*[(MAP0F | op, p) for op in _FP_OPS for p in _SHAPE])
def _fp_arith(g, ins):
    size, count = _SHAPE[prefix(ins)]
    s = fp_source(g, ins, size, count)
    g.emit("XM[%d] = SV.arith(cpu, %r, XM[%d], %s, %d, %d)"
           % (ins.reg, _FP_OPS[ins.opc & 0xFF], ins.reg, s, size, count))


@_on(*[(MAP0F | 0xC2, p) for p in _SHAPE])
def _fp_cmp(g, ins):
    size, count = _SHAPE[prefix(ins)]
    s = fp_source(g, ins, size, count)
    v = g.tmp()
    g.emit("%s = SV.cmp(cpu, XM[%d], %s, %d, %d, %d)" % (v, ins.reg, s, size, count, ins.imm & 7))
    if count == 1:
        set_low(g, ins.reg, size, "(%s & %#x)" % (v, M[size]))
    else:
        g.emit("XM[%d] = %s" % (ins.reg, v))


@_on((MAP0F | 0x2E, 0), (MAP0F | 0x2E, 0x66), (MAP0F | 0x2F, 0), (MAP0F | 0x2F, 0x66))
def _comi(g, ins):
    size = 8 if ins.opsize_prefix else 4
    s = src_low(g, ins, size)
    v = g.tmp()
    g.emit("%s = SV.comi(cpu, XM[%d], %s, %d, %d)" % (v, ins.reg, s, size, ins.opc & 1))
    g.emit("setfl(0x8d5, %s)" % v)


@_on((MAP0F | 0x7C, 0x66), (MAP0F | 0x7C, 0xF2), (MAP0F | 0x7D, 0x66), (MAP0F | 0x7D, 0xF2))
def _hadd_fp(g, ins):
    size = 8 if ins.opsize_prefix else 4
    s = src128(g, ins)
    op = "add" if ins.opc & 1 == 0 else "sub"
    g.emit("XM[%d] = SV.horizontal(cpu, %r, XM[%d], %s, %d)" % (ins.reg, op, ins.reg, s, size))


@_on((MAP0F | 0xD0, 0x66), (MAP0F | 0xD0, 0xF2))
def _addsub(g, ins):
    size = 8 if ins.opsize_prefix else 4
    s = src128(g, ins)
    g.emit("XM[%d] = SV.addsub(cpu, XM[%d], %s, %d)" % (ins.reg, ins.reg, s, size))


@_on((MAP0F | 0x52, 0), (MAP0F | 0x52, 0xF3), (MAP0F | 0x53, 0), (MAP0F | 0x53, 0xF3))
def _rcp_rsqrt(g, ins):
    count = 1 if ins.rep else 4
    s = fp_source(g, ins, 4, count)
    v = g.tmp()
    g.emit("%s = SV.join(SV.approx(%s, %d, %s), 4)" % (v, s, count, ins.opc == MAP0F | 0x52))
    if count == 1:
        set_low(g, ins.reg, 4, v)
    else:
        g.emit("XM[%d] = %s" % (ins.reg, v))


@_on((MAP0F3A | 0x42, 0x66))
def _mpsadbw(g, ins):
    s = src128(g, ins)
    g.emit("XM[%d] = SV.mpsadbw(XM[%d], %s, %d)" % (ins.reg, ins.reg, s, ins.imm))


@_on((MAP0F | 0xF7, 0x66))
def _maskmovdqu(g, ins):
    """MASKMOVDQU: store the bytes of xmm1 whose mask byte in xmm2 has its top bit, to DS:rDI."""
    if ins.mod != 3:
        return g.ud()
    maskmov(g, ins, "XM[%d]" % ins.reg, "XM[%d]" % ins.rm, 16)


def maskmov(g, ins, data, mask, n):
    """Byte-masked store of ``n`` bytes to DS:rDI (segment overridable), as MASKMOVQ/MASKMOVDQU."""
    seg = ins.seg if ins.seg >= 0 else 3
    di = "R[7]" if ins.adsize == 8 else "(R[7] & %#x)" % M[ins.adsize]
    ea = g.tmp("ea")
    g.emit("%s = %s" % (ea, g.seg_addr(seg, di)))
    d, m = g.tmp("x"), g.tmp("x")
    g.emit("%s = %s; %s = %s" % (d, data, m, mask))
    for i in range(n):
        g.emit("if %s >> %d & 1:" % (m, 8 * i + 7))
        g.indent()
        g.store("((%s + %d) & %#x)" % (ea, i, M64), 1, "(%s >> %d & 0xff)" % (d, 8 * i))
        g.dedent()


@_on((MAP0F3A | 0x40, 0x66), (MAP0F3A | 0x41, 0x66))
def _dp(g, ins):
    size = 4 if ins.opc & 0xFF == 0x40 else 8
    s = src128(g, ins)
    g.emit("XM[%d] = SV.dot(cpu, XM[%d], %s, %d, %d)" % (ins.reg, ins.reg, s, size, ins.imm))


@_on((MAP0F3A | 0x08, 0x66), (MAP0F3A | 0x09, 0x66), (MAP0F3A | 0x0A, 0x66), (MAP0F3A | 0x0B, 0x66))
def _round(g, ins):
    op = ins.opc & 0xFF
    size = 4 if op in (0x08, 0x0A) else 8
    count = 1 if op >= 0x0A else 16 // size
    s = fp_source(g, ins, size, count)
    v = g.tmp()
    g.emit("%s = SV.join(SV.round_lanes(cpu, %s, %d, %d, %d), %d)" % (v, s, size, count, ins.imm, size))
    if count == 1:
        set_low(g, ins.reg, size, v)
    else:
        g.emit("XM[%d] = %s" % (ins.reg, v))


def _unpck(high):
    def h(g, ins):
        s = src128(g, ins)
        g.emit("XM[%d] = SV.unpack_%s(XM[%d], %s, %d)"
               % (ins.reg, "hi" if high else "lo", ins.reg, s, 8 if ins.opsize_prefix else 4))
    return h


_on((MAP0F | 0x14, 0), (MAP0F | 0x14, 0x66))(_unpck(False))
_on((MAP0F | 0x15, 0), (MAP0F | 0x15, 0x66))(_unpck(True))


@_on((MAP0F | 0xC6, 0), (MAP0F | 0xC6, 0x66))
def _shufp(g, ins):
    s = src128(g, ins)
    fn = "shufpd" if ins.opsize_prefix else "shufps"
    g.emit("XM[%d] = SV.%s(XM[%d], %s, %d)" % (ins.reg, fn, ins.reg, s, ins.imm))


# Conversions
@_on((MAP0F | 0x5A, 0), (MAP0F | 0x5A, 0x66), (MAP0F | 0x5A, 0xF3), (MAP0F | 0x5A, 0xF2))
def _cvt_fp(g, ins):
    p = prefix(ins)
    src_size, count = _SHAPE[p]
    dst_size = 12 - src_size
    if p == 0:                 # CVTPS2PD reads two singles: xmm/m64
        s = src_low(g, ins, 8)
        count = 2
    else:
        s = fp_source(g, ins, src_size, count)
    v = g.tmp()
    g.emit("%s = SV.join(SV.cvt_f2f(cpu, %s & %#x, %d, %d, %d), %d)"
           % (v, s, M128 if count > 1 else M[src_size], src_size, dst_size, count, dst_size))
    if count == 1:
        set_low(g, ins.reg, dst_size, v)
    else:
        g.emit("XM[%d] = %s" % (ins.reg, v))


@_on((MAP0F | 0x2A, 0xF3), (MAP0F | 0x2A, 0xF2))
def _cvtsi2f(g, ins):
    size = 4 if ins.rep == 0xF3 else 8
    isize = 8 if ins.rex_w else 4
    v = g.rm_read(isize)
    r = g.tmp()
    g.emit("%s = SV.cvt_i2f(cpu, [(%s ^ %#x) - %#x], %d)[0]" % (r, v, 1 << (8 * isize - 1), 1 << (8 * isize - 1),
                                                                 size))
    set_low(g, ins.reg, size, r)


@_on((MAP0F | 0x2C, 0xF3), (MAP0F | 0x2C, 0xF2), (MAP0F | 0x2D, 0xF3), (MAP0F | 0x2D, 0xF2))
def _cvtf2si(g, ins):
    size = 4 if ins.rep == 0xF3 else 8
    isize = 8 if ins.rex_w else 4
    s = src_low(g, ins, size)
    r = g.tmp()
    g.emit("%s = SV.cvt_f2i(cpu, %s & %#x, %d, %d, 1, %s)[0]"
           % (r, s, M[size], size, 8 * isize, ins.opc & 1 == 0))
    g.set_reg(ins.reg, isize, r)


@_on((MAP0F | 0x5B, 0), (MAP0F | 0x5B, 0x66), (MAP0F | 0x5B, 0xF3))
def _cvt_ps_dq(g, ins):
    s = src128(g, ins)
    if prefix(ins) == 0:        # CVTDQ2PS
        g.emit("XM[%d] = SV.join(SV.cvt_i2f(cpu, SV.split(%s, 'i'), 4), 4)" % (ins.reg, s))
    else:
        g.emit("XM[%d] = SV.join(SV.cvt_f2i(cpu, %s, 4, 32, 4, %s), 4)" % (ins.reg, s, ins.rep == 0xF3))


@_on((MAP0F | 0xE6, 0x66), (MAP0F | 0xE6, 0xF2), (MAP0F | 0xE6, 0xF3))
def _cvt_pd_dq(g, ins):
    if ins.rep == 0xF3:         # CVTDQ2PD reads two dwords: xmm/m64
        s = src_low(g, ins, 8)
        g.emit("XM[%d] = SV.join(SV.cvt_i2f(cpu, SV.split(%s & %#x, 'i', 8), 8), 8)" % (ins.reg, s, M64))
        return
    s = src128(g, ins)
    g.emit("XM[%d] = SV.join(SV.cvt_f2i(cpu, %s, 8, 32, 2, %s), 4)" % (ins.reg, s, ins.opsize_prefix))


@_on((MAP0F3A | 0x60, 0x66), (MAP0F3A | 0x61, 0x66), (MAP0F3A | 0x62, 0x66), (MAP0F3A | 0x63, 0x66))
def _pcmpstr(g, ins):
    """PCMPESTRM/PCMPESTRI/PCMPISTRM/PCMPISTRI (SSE4.2; m128 needs no alignment): explicit
    lengths from EAX/EDX (RAX/RDX with REX.W) or implicit ones (the first null element)."""
    op = ins.opc & 0xFF
    words = ins.imm & 1
    s = src128(g, ins, aligned=False)
    la, lb = g.tmp(), g.tmp()
    if op < 0x62:
        bits = 64 if ins.rex_w else 32
        g.emit("%s = SV.explicit_length(R[0], %d, %d); %s = SV.explicit_length(R[2], %d, %d)"
               % (la, bits, words, lb, bits, words))
    else:
        g.emit("%s = SV.implicit_length(XM[%d], %d); %s = SV.implicit_length(%s, %d)"
               % (la, ins.reg, words, lb, s, words))
    idx, mask, fl = g.tmp(), g.tmp(), g.tmp("fl")
    g.emit("%s, %s, %s = SV.pcmpstr(XM[%d], %s, %s, %s, %d)" % (idx, mask, fl, ins.reg, s, la, lb, ins.imm))
    if op & 1:
        g.set_reg(1, 4, idx)
    else:
        g.emit("XM[0] = %s" % mask)
    g.emit("setfl(0x8d5, %s)" % fl)


@emitter(MAP0F | 0xC3)
def _movnti(g, ins):
    """MOVNTI: a plain store of a 32/64-bit register (an integer instruction: no SSE checks)."""
    if ins.mod == 3 or ins.opsize == 2 or ins.rep:
        return g.ud()
    g.rm_write(ins.opsize, g.reg(ins.reg, ins.opsize))


emitter(*sorted({k[0] for k in _H}))(_dispatch)
