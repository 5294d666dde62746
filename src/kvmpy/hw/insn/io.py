"""Port I/O: IN/OUT (always a VM exit) and INS/OUTS (an exit the hypervisor emulates).

The processor side only checks I/O permission and raises the exit; data moves
when KVM completes the exit.  The emulator side (``emulating``) runs the same
emitters with ``io_in``/``io_out`` bound to KVM's PIO buffer.
"""

from kvmpy.hw.translate.codegen import M, emitter


def _port(ins):
    return "%#x" % ins.imm if ins.opc in (0xE4, 0xE5, 0xE6, 0xE7) else "(R[2] & 0xffff)"


def _size(ins):
    return 1 if ins.opc & 1 == 0 else (2 if ins.opsize == 2 else 4)


@emitter(0xE4, 0xE5, 0xEC, 0xED, ends_block=True)
def _in(g, ins):
    size = _size(ins)
    v = g.tmp()
    g.emit("%s = io_in(%s, %d, %d)" % (v, _port(ins), size, ins.length))
    g.set_reg(0, size, v)


@emitter(0xE6, 0xE7, 0xEE, 0xEF, ends_block=True)
def _out(g, ins):
    size = _size(ins)
    g.emit("io_out(%s, %d, %d, %s)" % (_port(ins), size, ins.length, g.reg(0, size)))


@emitter(0x6C, 0x6D, 0x6E, 0x6F, ends_block=True)
def _string_io(g, ins):
    """One INS/OUTS iteration per execution step; REP repeats by re-executing."""
    size = _size(ins)
    am = M[ins.adsize]
    is_in = ins.opc < 0x6E
    rep = ins.rep != 0
    if rep:
        g.emit("if not R[1] & %#x:" % am)
        g.indent()
        g.exit_to(hex(ins.next_ip))
        g.dedent()
    idx = 7 if is_in else 6
    fl = g.tmp("fl")
    g.emit("%s = -%d if cpu.flags & 0x400 else %d" % (fl, size, size))
    if is_in:
        v = g.tmp()
        g.emit("%s = io_in((R[2] & 0xffff), %d, %d, True, %s)" % (v, size, ins.length, rep))
        g.store(g.seg_addr(0, "(R[7] & %#x)" % am), size, v)
    else:
        seg = ins.seg if ins.seg >= 0 else 3
        v = g.load(g.seg_addr(seg, "(R[6] & %#x)" % am), size)
        g.emit("io_out((R[2] & 0xffff), %d, %d, %s, True, %s)" % (size, ins.length, v, rep))
    g.set_reg(idx, ins.adsize, "(R[%d] + %s) & %#x" % (idx, fl, am))
    if rep:
        g.set_reg(1, ins.adsize, "(R[1] - 1) & %#x" % am)
        g.exit_to(hex(ins.start))
    else:
        g.exit_to(hex(ins.next_ip))
    g.ended = True
