"""Exchanges and compare-exchanges: XCHG, XADD, CMPXCHG, CMPXCHG8B/16B, NOP and PAUSE.

A vCPU executes its block without interruption by other vCPUs' Python code only
between bytecodes, so these are atomic in the sense that matters here: every
read happens before every write, and the memory store comes before the
register writes, so a fault leaves nothing half done.

Register-destination details follow the silicon: CMPXCHG writes its destination
register only on success and the accumulator only on failure (each zero-extended
when 32 bits wide); with a memory destination the old value is written back
even on failure, as a locked read-modify-write does.
"""

from .. import flags as F
from kvmpy.hw.translate.codegen import M, emitter
from kvmpy.hw.msr_index import MSR_TSC_AUX
from kvmpy.hw.translate.decoder import MAP0F
from .bits import setfl


@emitter(0x86, 0x87)
def _xchg_rm(g, ins):
    size = 1 if ins.opc == 0x86 else ins.opsize
    a = g.rm_read(size)
    b = g.tmp()
    g.emit("%s = %s" % (b, g.reg(ins.reg, size)))
    g.rm_write(size, b, reuse_ea=True)
    g.set_reg(ins.reg, size, a)


@emitter(*range(0x90, 0x98))
def _xchg_acc(g, ins):
    """XCHG rAX, reg; 90 without REX.B is NOP (no zero-extension), F3 90 is PAUSE, which
    ends its block (a spin loop's) and may be a VM exit (``Processor.pause``)."""
    r = (ins.opc & 7) | (8 if ins.rex & 1 else 0)
    if r == 0:
        if ins.rep == 0xF3:
            g.emit("pause(%d)" % ins.length)
            g.end()
        return
    size = ins.opsize
    a, b = g.tmp(), g.tmp()
    g.emit("%s = %s; %s = %s" % (a, g.reg(0, size), b, g.reg(r, size)))
    g.set_reg(0, size, b)
    g.set_reg(r, size, a)


@emitter(MAP0F | 0xC0, MAP0F | 0xC1)
def _xadd(g, ins):
    """XADD: the source register gets the old destination, then the destination the sum."""
    size = 1 if ins.opc == MAP0F | 0xC0 else ins.opsize
    a = g.rm_read(size)
    s = g.tmp("s")
    g.emit("%s = %s" % (s, g.reg(ins.reg, size)))
    r = g.tmp("r")
    g.emit("%s = (%s + %s) & %#x" % (r, a, s, M[size]))
    if ins.mod == 3:
        g.set_reg(ins.reg, size, a)
        g.rm_write(size, r)
    else:
        g.rm_write(size, r, reuse_ea=True)
        g.set_reg(ins.reg, size, a)
    g.set_flags(F.K_ADD, size, r, s, None, a)


@emitter(MAP0F | 0xB0, MAP0F | 0xB1)
def _cmpxchg(g, ins):
    size = 1 if ins.opc == MAP0F | 0xB0 else ins.opsize
    d = g.rm_read(size)
    acc, s = g.tmp("ac"), g.tmp("s")
    g.emit("%s = %s; %s = %s" % (acc, g.reg(0, size), s, g.reg(ins.reg, size)))
    if ins.mod == 3:
        g.emit("if %s == %s:" % (acc, d))
        g.indent()
        g.rm_write(size, s)
        g.dedent()
    else:
        g.rm_write(size, "(%s if %s == %s else %s)" % (s, acc, d, d), reuse_ea=True)
    g.emit("if %s != %s:" % (acc, d))
    g.indent()
    g.set_reg(0, size, d)
    g.dedent()
    r = g.tmp("r")
    g.emit("%s = (%s - %s) & %#x" % (r, acc, d, M[size]))
    g.set_flags(F.K_SUB, size, r, d, None, acc)


def _rdpid(g, ins):
    """RDPID: the register gets IA32_TSC_AUX (zero-extended to 64 bits in 64-bit mode, where
    the operand is always 64-bit); unlike RDTSCP, any privilege level and no TSC read."""
    g.emit("if not cpu.rdtscp_enabled: raise_ud()")
    g.set_reg(ins.rm, 8 if g.mode.code == 8 else 4, "(cpu.msrs.get(%#x, 0) & 0xffffffff)" % MSR_TSC_AUX)


@emitter(MAP0F | 0xC7)
def _group9(g, ins):
    """0F C7 /1: CMPXCHG8B, or CMPXCHG16B with REX.W (#GP(0) unless 16-byte aligned);
    F3 0F C7 /7 with a register operand: RDPID."""
    if ins.reg & 7 == 7 and not ins.is_mem and ins.rep == 0xF3:
        _rdpid(g, ins)
        return
    if ins.reg & 7 != 1 or not ins.is_mem:
        g.ud()
        return
    half = 8 if ins.rex_w else 4
    bits, m = half * 8, M[half]
    ea = g.tmp("ea")
    g.emit("%s = %s" % (ea, g.ea(ins)))
    if half == 8:
        g.emit("if %s & 15: raise_fault(13, 0)" % ea)
        lo = g.load(ea, 8)
        hi = g.load("((%s + 8) & %#x)" % (ea, M[8]), 8)
        old = g.tmp("o")
        g.emit("%s = %s << 64 | %s" % (old, hi, lo))
    else:
        old = g.load(ea, 8)
    cmp, new, eq = g.tmp("c"), g.tmp("n"), g.tmp("eq")
    g.emit("%s = (R[2] & %#x) << %d | (R[0] & %#x); %s = (R[1] & %#x) << %d | (R[3] & %#x)"
           % (cmp, m, bits, m, new, m, bits, m))
    g.emit("%s = %s == %s" % (eq, cmp, old))
    val = "(%s if %s else %s)" % (new, eq, old)
    if half == 8:
        g.store(ea, 8, "(%s & %#x)" % (val, M[8]))
        g.store("((%s + 8) & %#x)" % (ea, M[8]), 8, "(%s >> 64)" % val)
    else:
        g.store(ea, 8, val)
    g.emit("if not %s:" % eq)
    g.indent()
    g.set_reg(0, half, "(%s & %#x)" % (old, m))
    g.set_reg(2, half, "(%s >> %d)" % (old, bits))
    g.dedent()
    setfl(g, F.ZF, "0x40 if %s else 0" % eq)
