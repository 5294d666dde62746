"""String instructions: MOVS, CMPS, STOS, LODS, SCAS, with REP/REPE/REPNE.

RSI, RDI and RCX are used at the address size (16/32/64 bits); the destination
is always ES:rDI, the source's segment (DS) may be overridden.  DF in the eager
``cpu.flags`` gives the direction.

A repeated instruction runs as a loop of at most ``REP_BUDGET`` iterations per
execution.  Each iteration reads, stores, then updates RSI/RDI/RCX, so a fault
in iteration k leaves the registers after k-1 iterations and the instruction
restarts where it stopped; when the budget runs out the block is left with RIP
still at the instruction (the partial execution counted as one instruction),
which lets the processor take interrupts and VM exits in the middle of a long
copy; ``Processor.rep_chunk_done`` lets the host interrupt it there.  Forward REP MOVS/STOS of bytes or dwords copy whole runs within a page
through slices of the TLB's page views when both pages are in the TLB.
"""

from .. import flags as F
from kvmpy.hw.translate.codegen import M, emitter

REP_BUDGET = 4096
RSI, RDI, RCX = 6, 7, 1


class _Regs:
    """Locals holding rSI/rDI/rCX at the address size, and the code to write them back."""

    def __init__(self, g, ins, used):
        self.g, self.am, self.used = g, M[ins.adsize], used
        self.names = {}
        for r in used:
            self.names[r] = g.tmp({RSI: "si", RDI: "di", RCX: "n"}[r])
            g.emit("%s = R[%d] & %#x" % (self.names[r], r, self.am))

    def __getitem__(self, r):
        return self.names[r]

    def advance(self, step):
        """Move rSI/rDI by ``step`` (an expression) and count rCX down, in the locals."""
        parts = ["%s = (%s + %s) & %#x" % (self.names[r], self.names[r], step, self.am)
                 for r in (RSI, RDI) if r in self.used]
        if RCX in self.used:
            parts.append("%s -= 1" % self.names[RCX])
        self.g.emit("; ".join(parts))

    def commit(self):
        for r in self.used:
            v = self.names[r]
            if self.am == 0xFFFF:
                self.g.emit("R[%d] = (R[%d] & 0xffffffffffff0000) | %s" % (r, r, v))
            else:
                self.g.emit("R[%d] = %s" % (r, v))


def _src(g, ins, regs, size=None):
    """DS:SI (or the override), limit-checked when ``size`` is given."""
    seg = ins.seg if ins.seg >= 0 else 3
    if size is not None:
        g.limit_check(seg, regs[RSI], size, ins.adsize)
    return g.seg_addr(seg, regs[RSI])


def _dst(g, regs, ins=None, size=None):
    """ES:DI, limit-checked when ``size`` is given."""
    if size is not None:
        g.limit_check(0, regs[RDI], size, ins.adsize)
    return g.seg_addr(0, regs[RDI])


def _element(g, ins, kind, size, regs, step):
    """One iteration: reads, store, register and flag updates.  Returns (a, b) compared."""
    a = b = None
    if kind == "movs":
        v = g.load(_src(g, ins, regs, size), size)
        g.store(_dst(g, regs, ins, size), size, v)
    elif kind == "stos":
        g.store(_dst(g, regs, ins, size), size, g.reg(0, size))
    elif kind == "lods":
        v = g.load(_src(g, ins, regs, size), size)
    elif kind == "cmps":
        a = g.load(_src(g, ins, regs, size), size)
        b = g.load(_dst(g, regs, ins, size), size)
    else:   # scas
        a = g.tmp()
        g.emit("%s = %s" % (a, g.reg(0, size)))
        b = g.load(_dst(g, regs, ins, size), size)
    regs.advance(step)
    regs.commit()
    if kind == "lods":
        g.set_reg(0, size, v)
    elif a is not None:
        d = g.tmp("r")
        g.emit("%s = (%s - %s) & %#x" % (d, a, b, M[size]))
        g.set_flags(F.K_SUB, size, d, b, None, a)
    return a, b


def _fast_run(g, ins, kind, size, regs, step):
    """Copy/fill a run of elements inside one page with a slice of the page views, when possible.

    Only forward, only when the TLB has both pages, and for MOVS only when the
    destination does not overlap the source ahead of it (where element-by-element
    copying would replicate data, unlike a slice copy).
    """
    dst = g.tmp("ld")
    g.emit("%s = %s" % (dst, _dst(g, regs)))
    hd = g.tmp("hd")
    g.emit("%s = TW.get(%s >> 12) if %s > 0 else None" % (hd, dst, step))
    limits = ["%s" % regs[RCX], "(4096 - (%s & 4095)) // %d" % (dst, size)]
    if kind == "movs":
        src, hs = g.tmp("ls"), g.tmp("hs")
        g.emit("%s = %s" % (src, _src(g, ins, regs)))
        g.emit("%s = TR.get(%s >> 12) if %s is not None else None" % (hs, src, hd))
        ok = "%s is not None" % hs
        limits.append("(4096 - (%s & 4095)) // %d" % (src, size))
    else:
        ok = "%s is not None" % hd
    if regs.am != M[8]:     # the offsets wrap at the address size
        limits += ["(%#x - %s) // %d" % (regs.am + 1, regs[r], size) for r in (RSI, RDI) if r in regs.used]
    if regs.am == 0xFFFF:   # and stay within their segments' limits (the element path checks the rest)
        segs = ((RSI, ins.seg if ins.seg >= 0 else 3), (RDI, 0))
        limits += ["(cpu.seg[%d].limit + 1 - %s) // %d" % (seg, regs[r], size) for r, seg in segs if r in regs.used]
    k, nb = g.tmp("k"), g.tmp("nb")
    od, os_ = g.tmp("od"), g.tmp("os")
    offsets = "%s = %s & 4095; %s = %s & 4095; " % (os_, src, od, dst) if kind == "movs" else "%s = %s & 4095; " % (od, dst)
    g.emit("if %s: %s%s = min(%s)" % (ok, offsets, k, ", ".join(limits)))
    g.emit("else: %s = 0" % k)
    g.emit("%s = %s * %d" % (nb, k, size))
    cond = "%s > 1" % k
    if kind == "movs":      # views of one host page are one object (memory.page)
        cond += " and (%s is not %s or %s <= %s or %s + %s <= %s)" % (hd, hs, od, os_, os_, nb, od)
    g.emit("if %s:" % cond)
    g.indent()
    if kind == "movs":
        g.emit("%s[%s:%s + %s] = %s[%s:%s + %s]" % (hd, od, od, nb, hs, os_, os_, nb))
    else:
        g.emit("%s[%s:%s + %s] = %s.to_bytes(%d, 'little') * %s" % (hd, od, od, nb, g.reg(0, size), size, k))
    parts = ["%s = (%s + %s) & %#x" % (regs[r], regs[r], nb, regs.am) for r in (RSI, RDI) if r in regs.used]
    parts.append("%s -= %s" % (regs[RCX], k))
    g.emit("; ".join(parts))
    regs.commit()
    g.dedent()
    g.emit("else:")
    g.indent()


def string_op(g, ins, kind, size):
    used = {"movs": (RSI, RDI), "cmps": (RSI, RDI), "stos": (RDI,), "lods": (RSI,), "scas": (RDI,)}[kind]
    step = g.tmp("st")
    g.emit("%s = %d if cpu.flags & 0x400 else %d" % (step, -size, size))
    if not ins.rep:
        _element(g, ins, kind, size, _Regs(g, ins, used), step)
        return
    regs = _Regs(g, ins, used + (RCX,))
    fast = kind in ("movs", "stos") and size in (1, 4) and not g.emulating
    budget = g.tmp("bu")
    g.emit("%s = %d" % (budget, REP_BUDGET))
    g.emit("while %s:" % regs[RCX])
    g.indent()
    if fast:
        _fast_run(g, ins, kind, size, regs, step)
    a, b = _element(g, ins, kind, size, regs, step)
    if fast:
        g.dedent()
    if a is not None:       # REPE stops on a difference, REPNE on equality
        g.emit("if %s %s %s: break" % (a, "!=" if ins.rep == 0xF3 else "==", b))
    g.emit("%s -= 1" % budget)
    g.emit("if %s and not %s:" % (regs[RCX], budget))
    g.indent()
    # Not g.exit_to's self-loop (a `continue` here would resume the REP loop); and the
    # partial execution counts as one instruction, so the processor's budget advances.
    # Between chunks the host may interrupt (a chunk is work the budget does not count).
    g.emit("cpu.rep_chunk_done()")
    target, g.loop_target = g.loop_target, None
    g.exit_to(hex(ins.start), g.idx + 1)
    g.loop_target = target
    g.dedent()
    g.dedent()
    g.flags = None          # with a zero count the flags stay the previous instruction's
    g.end()


def _emitter_for(kind, opcodes):
    @emitter(*opcodes)
    def emit(g, ins):
        string_op(g, ins, kind, 1 if ins.opc & 1 == 0 else ins.opsize)
    emit.__name__ = "_" + kind
    return emit


for _kind, _opcodes in (("movs", (0xA4, 0xA5)), ("cmps", (0xA6, 0xA7)), ("stos", (0xAA, 0xAB)),
                        ("lods", (0xAC, 0xAD)), ("scas", (0xAE, 0xAF))):
    _emitter_for(_kind, _opcodes)
