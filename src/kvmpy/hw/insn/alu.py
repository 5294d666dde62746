"""Integer arithmetic and logic: ADD..CMP, TEST, INC/DEC, NOT/NEG, MUL/IMUL/DIV/IDIV."""

from .. import flags as F
from kvmpy.hw.translate.codegen import M, SIGN, emitter
from kvmpy.hw.translate.decoder import MAP0F

ADD, OR, ADC, SBB, AND, SUB, XOR, CMP = range(8)
_PYOP = {ADD: "+", OR: "|", AND: "&", SUB: "-", XOR: "^", CMP: "-"}
_KIND = {ADD: F.K_ADD, OR: F.K_LOGIC, ADC: F.K_ADC, SBB: F.K_SBB, AND: F.K_LOGIC, SUB: F.K_SUB,
         XOR: F.K_LOGIC, CMP: F.K_SUB}
_IDENTITY_WITH_ZERO = (ADD, OR, SUB, XOR, CMP)


def opsize(ins, byte_op):
    return 1 if byte_op else ins.opsize


def alu(g, op, size, a, b):
    """Emit ``a op b``; set lazy flags; return the local holding the result.

    Operands are already masked to ``size``, so adding, subtracting, or-ing or xor-ing a
    constant 0 (``cmp r, 0``, ``or r, 0``) is a plain copy: no arithmetic, no mask.
    """
    m = M[size]
    d = g.tmp("r")
    if b == "0x0" and op in _IDENTITY_WITH_ZERO:
        g.emit("%s = %s" % (d, a))
    elif op in (ADC, SBB):
        c = g.carry()
        g.emit("%s = (%s %s %s %s %s) & %#x" % (d, a, "+" if op == ADC else "-", b,
                                               "+" if op == ADC else "-", c, m))
        return d, (lambda: g.set_flags(_KIND[op], size, d, b, c, a))
    elif op in (OR, AND, XOR):
        g.emit("%s = %s %s %s" % (d, a, _PYOP[op], b))
    else:
        g.emit("%s = (%s %s %s) & %#x" % (d, a, _PYOP[op], b, m))
    return d, (lambda: g.set_flags(_KIND[op], size, d, b, None, a))


def alu_rm(g, op, size, src, dst_is_rm=True, ins=None):
    """r/m op= src (or reg op= r/m); stores before flags, as every emitter must."""
    ins = ins or g.ins
    if dst_is_rm:
        a = g.rm_read(size)
        d, setf = alu(g, op, size, a, src)
        if op != CMP:
            g.rm_write(size, d, reuse_ea=True)
    else:
        b = g.rm_read(size)
        a = g.tmp()
        g.emit("%s = %s" % (a, g.reg(ins.reg, size)))
        d, setf = alu(g, op, size, a, b)
        if op != CMP:
            g.set_reg(ins.reg, size, d)
    setf()


def _alu_classic(g, ins):
    op = (ins.opc >> 3) & 7
    form = ins.opc & 7
    size = 1 if form in (0, 2, 4) else ins.opsize
    if form in (0, 1):
        src = g.tmp()
        g.emit("%s = %s" % (src, g.reg(ins.reg, size)))
        alu_rm(g, op, size, src)
    elif form in (2, 3):
        alu_rm(g, op, size, None, dst_is_rm=False)
    else:
        a = g.tmp()
        g.emit("%s = %s" % (a, g.reg(0, size)))
        d, setf = alu(g, op, size, a, "%#x" % (ins.imm & M[size]))
        if op != CMP:
            g.set_reg(0, size, d)
        setf()


emitter(*[o | f for o in range(0, 0x40, 8) for f in range(6)])(_alu_classic)


@emitter(0x80, 0x81, 0x82, 0x83)
def _group1(g, ins):
    if ins.opc == 0x82 and g.mode.code == 8:
        g.ud()                      # 82 (an alias of 80) is invalid in 64-bit mode
        return
    size = 1 if ins.opc in (0x80, 0x82) else ins.opsize
    imm = ins.imm
    if ins.opc == 0x83:
        imm = (imm - 0x100 if imm & 0x80 else imm)
    alu_rm(g, ins.reg & 7, size, "%#x" % (imm & M[size]))


@emitter(0x84, 0x85)
def _test_rm(g, ins):
    size = 1 if ins.opc == 0x84 else ins.opsize
    a = g.rm_read(size)
    d = g.tmp("r")
    g.emit("%s = %s & %s" % (d, a, g.reg(ins.reg, size)))
    g.set_flags(F.K_LOGIC, size, d)


@emitter(0xA8, 0xA9)
def _test_acc(g, ins):
    size = 1 if ins.opc == 0xA8 else ins.opsize
    _test_imm(g, _reg_under_mask(g, 0, size), size, ins.imm)


def _reg_under_mask(g, r, size):
    """Register ``r`` read for an AND with a constant of ``size`` bytes: the constant
    already clears the bits above ``size``, so a low register part is read whole."""
    e = g.reg(r, size)
    return g.reg(r, 8) if e.startswith("(R[") else e


def _test_imm(g, a, size, imm):
    d = g.tmp("r")
    g.emit("%s = %s & %#x" % (d, a, imm & M[size]))
    g.set_flags(F.K_LOGIC, size, d)


def incdec(g, size, dec, reg=None):
    c = g.carry()
    if reg is None:
        a = g.rm_read(size)
    else:
        a = g.tmp()
        g.emit("%s = %s" % (a, g.reg(reg, size)))
    d = g.tmp("r")
    g.emit("%s = (%s %s 1) & %#x" % (d, a, "-" if dec else "+", M[size]))
    if reg is None:
        g.rm_write(size, d, reuse_ea=True)
    else:
        g.set_reg(reg, size, d)
    g.set_flags(F.K_DEC if dec else F.K_INC, size, d, "0", c)


@emitter(*range(0x40, 0x50))
def _incdec_reg(g, ins):
    incdec(g, ins.opsize, ins.opc >= 0x48, reg=ins.opc & 7)


def _unary(g, ins, size):
    r = ins.reg & 7
    if r in (0, 1):
        _test_imm(g, _reg_under_mask(g, ins.rm, size) if ins.mod == 3 else g.rm_read(size), size, ins.imm)
    elif r == 2:
        a = g.rm_read(size)
        g.rm_write(size, "(%s ^ %#x)" % (a, M[size]), reuse_ea=True)
    elif r == 3:
        a = g.rm_read(size)
        d = g.tmp("r")
        g.emit("%s = -%s & %#x" % (d, a, M[size]))
        g.rm_write(size, d, reuse_ea=True)
        g.set_flags(F.K_NEG, size, d, a)
    elif r in (4, 5):
        _mul1(g, size, signed=(r == 5))
    else:
        _div(g, size, signed=(r == 7))


@emitter(0xF6, 0xF7)
def _group3(g, ins):
    _unary(g, ins, 1 if ins.opc == 0xF6 else ins.opsize)


@emitter(0xFE)
def _group4(g, ins):
    if ins.reg & 7 > 1:
        g.ud()
        return
    incdec(g, 1, ins.reg & 7 == 1)


def sx(expr, size):
    """Expression sign-extending a masked value of ``size`` bytes to a Python int."""
    return "((%s ^ %#x) - %#x)" % (expr, SIGN[size], SIGN[size])


def _mul1(g, size, signed):
    bits = size * 8
    m = M[size]
    b = g.rm_read(size)
    a = g.tmp()
    g.emit("%s = %s" % (a, g.reg(0, size)))
    p = g.tmp("p")
    if signed:
        g.emit("%s = %s * %s" % (p, sx(a, size), sx(b, size)))
        ovf = "(%s != %s)" % (p, sx("(%s & %#x)" % (p, m), size))
    else:
        g.emit("%s = %s * %s" % (p, a, b))
        ovf = "(%s >> %d)" % (p, bits)
    lo, hi, of = g.tmp("lo"), g.tmp("hi"), g.tmp("of")
    g.emit("%s = %s & %#x; %s = (%s >> %d) & %#x; %s = 1 if %s else 0" % (lo, p, m, hi, p, bits, m, of, ovf))
    if size == 1:
        g.set_reg(0, 2, "(%s << 8 | %s)" % (hi, lo))
    else:
        g.set_reg(0, size, lo)
        g.set_reg(2, size, hi)
    mul_flags(g, size, lo, of)


def mul_flags(g, size, lo, of):
    """CF = OF = ``of`` (0/1); SF ZF AF PF as the model's silicon leaves them: unchanged
    (``mul_keeps_szap``, AMD) or from the low half ``lo``."""
    if g.model is not None and g.model.mul_keeps_szap:
        g.emit("setfl(%#x, %s * %#x)" % (F.CF | F.OF, of, F.CF | F.OF))
    else:
        g.set_flags(F.K_MUL, size, lo, of)


def _div(g, size, signed):
    bits = size * 8
    m = M[size]
    b = g.rm_read(size)
    if size == 1:
        n = g.tmp("n")
        g.emit("%s = R[0] & 0xffff" % n)
    else:
        n = g.tmp("n")
        g.emit("%s = (%s << %d) | %s" % (n, g.reg(2, size), bits, g.reg(0, size)))
    q, r = g.tmp("q"), g.tmp("rm")
    g.emit("if %s == 0: raise_fault(0)" % b)
    if signed:
        sn, sb = g.tmp("sn"), g.tmp("sb")
        nbits = bits * 2
        g.emit("%s = (%s ^ %#x) - %#x; %s = %s" % (sn, n, 1 << (nbits - 1), 1 << (nbits - 1), sb, sx(b, size)))
        g.emit("%s = abs(%s) // abs(%s)" % (q, sn, sb))
        g.emit("if (%s < 0) != (%s < 0): %s = -%s" % (sn, sb, q, q))
        g.emit("%s = %s - %s * %s" % (r, sn, q, sb))
        g.emit("if not %d <= %s <= %d: raise_fault(0)" % (-(1 << (bits - 1)), q, (1 << (bits - 1)) - 1))
        g.emit("%s &= %#x; %s &= %#x" % (q, m, r, m))
    else:
        g.emit("%s, %s = divmod(%s, %s)" % (q, r, n, b))
        g.emit("if %s > %#x: raise_fault(0)" % (q, m))
    if size == 1:
        g.set_reg(0, 2, "(%s << 8 | %s)" % (r, q))
    else:
        g.set_reg(0, size, q)
        g.set_reg(2, size, r)


def imul_trunc(g, size, a, b, dest_reg):
    m = M[size]
    p = g.tmp("p")
    g.emit("%s = %s * %s" % (p, sx(a, size), sx(b, size)))
    lo, of = g.tmp("lo"), g.tmp("of")
    g.emit("%s = %s & %#x; %s = 1 if %s != %s else 0" % (lo, p, m, of, p, sx(lo, size)))
    g.set_reg(dest_reg, size, lo)
    mul_flags(g, size, lo, of)


@emitter(MAP0F | 0xAF)
def _imul2(g, ins):
    size = ins.opsize
    b = g.rm_read(size)
    a = g.tmp()
    g.emit("%s = %s" % (a, g.reg(ins.reg, size)))
    imul_trunc(g, size, a, b, ins.reg)


@emitter(0x69, 0x6B)
def _imul3(g, ins):
    size = ins.opsize
    imm = ins.imm
    if ins.opc == 0x6B and imm & 0x80:
        imm -= 0x100
    a = g.rm_read(size)
    imul_trunc(g, size, a, "%#x" % (imm & M[size]), ins.reg)
