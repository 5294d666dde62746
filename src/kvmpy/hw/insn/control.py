"""Control transfer: JMP/Jcc/CALL/RET/LOOP, far transfers, INT/IRET."""

from kvmpy.hw.translate.codegen import M, emitter
from kvmpy.hw.translate.decoder import MAP0F
from .alu import incdec


def _target(g, ins, rel):
    if rel & (1 << 63):
        rel -= 1 << 64
    return "%#x" % ((ins.next_ip + rel) & M[ins.opsize])


def _rel(ins, bits):
    v = ins.imm & ((1 << bits) - 1)
    return v - (1 << bits) if v & (1 << (bits - 1)) else v


@emitter(0xEB, 0xE9, ends_block=True)
def _jmp(g, ins):
    bits = 8 if ins.opc == 0xEB else (16 if ins.opsize == 2 else 32)
    g.exit_to(_target(g, ins, _rel(ins, bits)))
    g.ended = True


def _jcc(g, ins, bits):
    cond = g.cond(ins.opc & 0xF)
    g.emit("if %s:" % cond)
    g.indent()
    g.exit_to(_target(g, ins, _rel(ins, bits)))
    g.dedent()
    g.exit_to(hex(ins.next_ip))
    g.ended = True


emitter(*range(0x70, 0x80), ends_block=True)(lambda g, ins: _jcc(g, ins, 8))
emitter(*range(MAP0F | 0x80, MAP0F | 0x90), ends_block=True)(
    lambda g, ins: _jcc(g, ins, 16 if ins.opsize == 2 else 32))


@emitter(0xE8, ends_block=True)
def _call(g, ins):
    bits = 16 if ins.opsize == 2 else 32
    g.push(["%#x" % (ins.next_ip & M[ins.opsize])], ins.opsize)
    g.exit_to(_target(g, ins, _rel(ins, bits)))
    g.ended = True


@emitter(0xC3, 0xC2, ends_block=True)
def _ret(g, ins):
    (v,), newsp = g.pop(ins.opsize)
    if ins.opc == 0xC2 and ins.imm:
        newsp = "((%s) + %d) & %#x" % (newsp, ins.imm, M[g.mode.stack])
    g.set_sp(newsp)
    g.exit_to(v)
    g.ended = True


@emitter(0xFF)
def _group5(g, ins):
    """INC/DEC/PUSH r/m continue the block; CALL/JMP (near and far) end it."""
    r = ins.reg & 7
    if r in (0, 1):
        incdec(g, ins.opsize, r == 1)
    elif r == 2:
        v = g.rm_read(ins.opsize)
        g.push(["%#x" % (ins.next_ip & M[ins.opsize])], ins.opsize)
        g.exit_to(v)
        g.ended = True
    elif r == 4:
        v = g.rm_read(ins.opsize)
        g.exit_to(v)
        g.ended = True
    elif r in (3, 5):
        if not ins.is_mem:
            g.ud()
            return
        s = 4 if ins.opsize == 8 and g.mode.code == 8 and not ins.rex_w else ins.opsize
        g.modrm_limit_check(ins, s + 2)
        g.ea_var = g.tmp("ea")
        g.emit("%s = %s" % (g.ea_var, g.ea(ins)))
        off = g.load(g.ea_var, s)
        sel = g.load("%s + %d" % (g.ea_var, s), 2)
        if r == 3:
            g.emit("far_call(%s, %s, %d, %#x)" % (sel, off, s, ins.next_ip))
        else:
            g.emit("far_jump(%s, %s, %d, %#x)" % (sel, off, s, ins.next_ip))
        g.emit("return n + %d" % (g.idx + 1))
        g.ended = True
    elif r == 6:
        v = g.rm_read(ins.opsize)
        g.push([v], ins.opsize)
    else:
        g.ud()


@emitter(0xEA, 0x9A, ends_block=True)
def _far_direct(g, ins):
    if g.mode.code == 8:
        g.emit("raise_ud()")
    elif ins.opc == 0xEA:
        g.emit("far_jump(%#x, %#x, %d, %#x)" % (ins.imm2, ins.imm, ins.opsize, ins.next_ip))
    else:
        g.emit("far_call(%#x, %#x, %d, %#x)" % (ins.imm2, ins.imm, ins.opsize, ins.next_ip))
    g.emit("return n + %d" % (g.idx + 1))
    g.ended = True


@emitter(0xCA, 0xCB, ends_block=True)
def _far_ret(g, ins):
    g.emit("far_ret(%d, %d)" % (ins.opsize, ins.imm if ins.opc == 0xCA else 0))
    g.emit("return n + %d" % (g.idx + 1))
    g.ended = True


@emitter(0xCF, ends_block=True)
def _iret(g, ins):
    g.emit("iret(%d, %#x)" % (ins.opsize, ins.next_ip))
    g.emit("return n + %d" % (g.idx + 1))
    g.ended = True


@emitter(0xCC, 0xCD, 0xCE, 0xF1, ends_block=True)
def _int(g, ins):
    if ins.opc == 0xCE:
        if g.mode.code == 8:
            g.ud()
            return
        fl = g.rflags()
        g.emit("if %s & 0x800:" % fl)
        g.indent()
    vector = {0xCC: 3, 0xCD: ins.imm, 0xCE: 4, 0xF1: 1}[ins.opc]
    kind = {0xCC: "swexc", 0xCD: "swint", 0xCE: "swexc", 0xF1: "privsw"}[ins.opc]
    g.emit("software_interrupt(%d, %#x, %r)" % (vector, ins.next_ip, kind))
    g.emit("return n + %d" % (g.idx + 1))
    if ins.opc == 0xCE:
        g.dedent()
        g.exit_to(hex(ins.next_ip))
    g.ended = True


@emitter(0xE0, 0xE1, 0xE2, 0xE3, ends_block=True)
def _loop(g, ins):
    am = M[ins.adsize]
    c = g.tmp("c")
    if ins.opc == 0xE3:
        g.emit("%s = R[1] & %#x" % (c, am))
        cond = "%s == 0" % c
    else:
        g.emit("%s = (R[1] - 1) & %#x" % (c, am))
        g.set_reg(1, ins.adsize, c)
        cond = "%s != 0" % c
        if ins.opc != 0xE2:
            fl = g.rflags()
            cond += " and %s(%s & 0x40)" % ("" if ins.opc == 0xE1 else "not ", fl)
    g.emit("if %s:" % cond)
    g.indent()
    g.exit_to(_target(g, ins, _rel(ins, 8)))
    g.dedent()
    g.exit_to(hex(ins.next_ip))
    g.ended = True
