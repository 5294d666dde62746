"""MOVBE and CRC32: the two integer instructions sharing opcodes 0F 38 F0/F1.

Without a repeat prefix the opcodes are MOVBE (F0: load a register from memory, F1: store
it, bytes reversed; 16/32/64-bit by the operand size; register operands are #UD).  With
F2 they are SSE4.2's CRC32 (F0: an 8-bit source, F1: 16/32/64 bits by the operand size)
accumulating into the low 32 bits of the destination, written zero-extended; no flags
change and, being an integer instruction, it needs no CR4.OSFXSR.  F3 is #UD.
"""

from kvmpy.hw.translate.codegen import emitter
from kvmpy.hw.translate.decoder import MAP0F38


def _swap(val: str, size: int) -> str:
    return "int.from_bytes(%s.to_bytes(%d, 'little'), 'big')" % (val, size)


@emitter(MAP0F38 | 0xF0, MAP0F38 | 0xF1)
def _f0_f1(g, ins):
    if ins.lock or ins.rep == 0xF3:
        return g.ud()
    if ins.rep == 0xF2:
        return _crc32(g, ins)
    if ins.mod == 3:
        return g.ud()
    size = ins.opsize
    if ins.opc & 1:         # MOVBE m, r
        g.rm_write(size, _swap(g.reg(ins.reg, size), size))
    else:                   # MOVBE r, m
        v = g.rm_read(size)
        g.set_reg(ins.reg, size, _swap(v, size))


def _crc32(g, ins):
    size = 1 if ins.opc & 1 == 0 else ins.opsize
    v = g.rm_read(size)
    g.set_reg(ins.reg, 4, "cpu.fpu.sse.crc32c(R[%d], %s, %d)" % (ins.reg, v, size))
