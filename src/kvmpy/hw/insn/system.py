"""System instructions: HLT, CPUID, MSRs, control/debug registers, descriptor
tables, SYSCALL/SYSRET, SYSENTER/SYSEXIT, CLI/STI, cache and fence hints.

Instructions that the hypervisor intercepts raise a VM exit (``intercept``)
before they execute; the rest call helpers in ``kvmpy.hw.system.sysops``.
"""

from kvmpy.hw.translate.codegen import M, emitter
from kvmpy.hw.translate.decoder import MAP0F



def _priv(g):
    """#GP(0) unless CPL 0 (checked before any intercept, as the hardware does)."""
    if g.mode.cpl:
        g.emit("raise_fault(13, 0)")
        g.ended = True
        return False
    return True


def _exit(g, kind, **fields):
    args = "".join(", %s=%s" % kv for kv in fields.items())
    g.emit("intercept(%r, insn_len=%d%s)" % (kind, g.ins.length, args))
    g.ended = True


@emitter(0xF4, ends_block=True)
def _hlt(g, ins):
    if _priv(g):
        _exit(g, "hlt")


@emitter(MAP0F | 0xA2, ends_block=True)
def _cpuid(g, ins):
    _exit(g, "cpuid")


@emitter(MAP0F | 0x30, MAP0F | 0x32, ends_block=True)
def _msr(g, ins):
    if _priv(g):
        _exit(g, "wrmsr" if ins.opc == MAP0F | 0x30 else "rdmsr")


@emitter(MAP0F | 0x31)
def _rdtsc(g, ins):
    g.emit("sys('rdtsc', False, n + %d)" % g.idx)


@emitter(MAP0F | 0x0B, MAP0F | 0xFF, MAP0F | 0xB9)
def _ud2(g, ins):
    g.ud()


@emitter(MAP0F | 0x09, MAP0F | 0x08)
def _wbinvd(g, ins):
    _priv(g)


@emitter(*[MAP0F | x for x in range(0x18, 0x20)], MAP0F | 0x0D)
def _hint_nop(g, ins):
    """NOP r/m and prefetch hints: no architectural effect (no memory access)."""


@emitter(0x9B)
def _fwait(g, ins):
    g.emit("sys('fwait')")


@emitter(0xFA, 0xFB, ends_block=True)
def _cli_sti(g, ins):
    g.emit("sys('cli_sti', %d)" % (ins.opc == 0xFB))


@emitter(MAP0F | 0x06)
def _clts(g, ins):
    if _priv(g):
        g.emit("sys('write_cr', 0, cpu.cr0 & ~8)")


@emitter(MAP0F | 0x20, MAP0F | 0x22, ends_block=True)
def _mov_cr(g, ins):
    cr = ins.reg
    if cr not in (0, 2, 3, 4, 8) or not _priv(g):
        if cr not in (0, 2, 3, 4, 8):
            g.ud()
        return
    size = 8 if g.mode.code == 8 else 4
    if ins.opc == MAP0F | 0x20:
        v = g.tmp()
        g.emit("%s = sys('read_cr', %d)" % (v, cr))
        g.set_reg(ins.rm, size, v)
    else:
        g.emit("sys('write_cr', %d, %s, %d, %d)" % (cr, g.reg(ins.rm, size), ins.length, ins.rm))


@emitter(MAP0F | 0x21, MAP0F | 0x23, ends_block=True)
def _mov_dr(g, ins):
    if not _priv(g):
        return
    size = 8 if g.mode.code == 8 else 4
    dr = ins.reg & 7
    if ins.opc == MAP0F | 0x21:
        v = g.tmp()
        g.emit("%s = sys('read_dr', %d, %d, %d)" % (v, dr, ins.rm, ins.length))
        g.set_reg(ins.rm, size, v)
    else:
        g.emit("sys('write_dr', %d, %s, %d, %d)" % (dr, g.reg(ins.rm, size), ins.rm, ins.length))


@emitter(MAP0F | 0x01, ends_block=True)
def _group7(g, ins):
    r = ins.reg & 7
    if ins.mod == 3:
        rm = ins.rm & 7
        key = (r, rm)
        if key == (0, 1):
            _exit(g, "vmcall")
        elif key == (3, 1):
            _exit(g, "vmcall")          # VMMCALL (AMD)
        elif key == (2, 0):
            g.emit("sys('xgetbv')")
        elif key == (2, 1):
            g.emit("if not cpu.cr4 & 0x40000: raise_ud()")     # CR4.OSXSAVE, checked before the exit
            if _priv(g):
                _exit(g, "xsetbv")
        elif key in ((1, 0), (1, 1)):
            if _priv(g):
                g.emit("sys('monitor_mwait', %d)" % rm)
        elif key == (7, 0):
            if g.mode.code != 8:
                g.ud()
            elif _priv(g):
                g.emit("sys('swapgs')")
        elif key == (7, 1):
            g.emit("if not cpu.rdtscp_enabled: raise_ud()")
            g.emit("sys('rdtsc', True, n + %d)" % g.idx)
        elif r == 4:
            g.set_reg(ins.rm, ins.opsize, "(cpu.cr0 & %#x)" % M[ins.opsize])
        elif r == 6:
            if _priv(g):
                g.emit("sys('lmsw', %s, %d)" % (g.reg(ins.rm, 2), ins.length))
        else:
            g.ud()
        return
    ea = g.tmp("ea")
    g.emit("%s = %s" % (ea, g.ea(ins)))
    if r in (0, 1):                     # SGDT / SIDT
        base, limit = ("cpu.gdt_base", "cpu.gdt_limit") if r == 0 else ("cpu.idt_base", "cpu.idt_limit")
        bsize = 8 if g.mode.code == 8 else 4
        g.emit("probe_w(%s, %d)" % (ea, 2 + bsize))
        g.store(ea, 2, limit)
        g.store("%s + 2" % ea, bsize, "%s & %#x" % (base, M[bsize]))
    elif r in (2, 3):                   # LGDT / LIDT
        if not _priv(g):
            return
        limit = g.load(ea, 2)
        base = g.load("%s + 2" % ea, 8 if g.mode.code == 8 else 4)
        if g.mode.code != 8 and ins.opsize == 2:
            base = "(%s & 0xffffff)" % base
        g.emit("sys('load_dtable', %d, %s, %s, %s)" % (r == 3, base, limit, g.mode.code == 8))
    elif r == 4:
        g.store(ea, 2, "(cpu.cr0 & 0xffff)")
    elif r == 6:
        if _priv(g):
            v = g.load(ea, 2)
            g.emit("sys('lmsw', %s, %d)" % (v, ins.length))
    elif r == 7:
        if _priv(g):
            g.emit("sys('invlpg', %s, %d)" % (ea, ins.length))
    else:
        g.ud()


@emitter(MAP0F | 0x00, ends_block=True)
def _group6(g, ins):
    r = ins.reg & 7
    if not g.mode.pe or g.mode.vm86:
        g.ud()
        return
    if r in (0, 1):                     # SLDT / STR
        src = "cpu.ldtr.selector" if r == 0 else "cpu.tr.selector"
        g.rm_write(ins.opsize if ins.mod == 3 else 2, src)
    elif r in (2, 3):                   # LLDT / LTR
        if _priv(g):
            v = g.rm_read(2)
            g.emit("sys('%s', %s)" % ("lldt" if r == 2 else "ltr", v))
    elif r in (4, 5):                   # VERR / VERW
        v = g.rm_read(2)
        g.emit("sys('verify', %s, %d)" % (v, r == 5))
    else:
        g.ud()


@emitter(MAP0F | 0x05, MAP0F | 0x07, MAP0F | 0x34, MAP0F | 0x35, ends_block=True)
def _fast_syscalls(g, ins):
    name = {0x05: "syscall", 0x07: "sysret", 0x34: "sysenter", 0x35: "sysexit"}[ins.opc & 0xFF]
    g.emit("sys(%r, %#x, %d)" % (name, ins.next_ip, ins.opsize))
    g.emit("return n + %d" % (g.idx + 1))
    g.ended = True


@emitter(MAP0F | 0xAE)
def _group15(g, ins):
    r = ins.reg & 7
    if ins.mod == 3:
        if r in (5, 6, 7):              # LFENCE / MFENCE / SFENCE
            return
        if ins.rep == 0xF3 and g.mode.code == 8 and r <= 3:     # RD/WR FS/GS BASE
            g.emit("sys('fsgsbase', %d, %d, %d)" % (r, ins.rm, ins.opsize))
            return
        g.ud()
        return
    ea = g.tmp("ea")
    g.emit("%s = %s" % (ea, g.ea(ins)))
    if r == 7:                           # CLFLUSH: checks the address like a read
        g.load(ea, 1)
    else:
        g.emit("sys('fpu_state', %d, %s, %d)" % (r, ea, ins.rex_w))
