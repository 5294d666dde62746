"""The x86 instruction decoder, shared by the processor and KVM's emulator.

``decode(fetch, mode)`` turns the bytes at an instruction pointer into an
``Insn``: prefixes, opcode (one-byte, 0F, 0F38, 0F3A maps folded into one
integer), ModRM/SIB operands, displacement and immediates.  It knows nothing of
semantics; ``kvmpy.hw.translate.codegen`` turns Insns into Python code.  Decoding happens
once per instruction per translation (the code cache keeps the result), so this
module favours clarity over speed.
"""

from __future__ import annotations

from dataclasses import dataclass

# Opcode maps folded into one number
MAP0F = 0x100
MAP0F38 = 0x200
MAP0F3A = 0x300

# Immediate kinds
I_NONE, I_B, I_W, I_Z, I_V, I_WB, I_AP, I_MOFFS, I_GRP3 = range(9)

PREFIX_SEG = {0x26: 0, 0x2E: 1, 0x36: 2, 0x3E: 3, 0x64: 4, 0x65: 5}


class DecodeError(Exception):
    """Raised for bytes that are not a valid instruction (#UD) or too long (#GP)."""

    def __init__(self, vector: int):
        super().__init__(vector)
        self.vector = vector


@dataclass(eq=False)
class Insn:
    start: int = 0          # linear address of the first byte
    length: int = 0
    opc: int = 0            # opcode, with MAP0F/MAP0F38/MAP0F3A folded in
    opsize: int = 4         # operand size in bytes (2, 4, 8)
    adsize: int = 4         # address size in bytes (2, 4, 8)
    seg: int = -1           # segment override (ES..GS) or -1
    rep: int = 0            # 0, 0xF3 (REP/REPE), 0xF2 (REPNE)
    lock: bool = False
    opsize_prefix: bool = False
    rex: int = 0            # the REX byte, 0 if none
    has_modrm: bool = False
    mod: int = 0
    reg: int = 0            # ModRM.reg extended by REX.R
    rm: int = 0             # ModRM.rm extended by REX.B (register operands)
    base: int = -1          # memory operand: base register, -1 none, -2 RIP-relative
    index: int = -1
    scale: int = 0
    disp: int = 0
    imm: int = 0
    imm2: int = 0
    raw: bytes = b""

    @property
    def is_mem(self) -> bool:
        return self.has_modrm and self.mod != 3

    @property
    def rex_w(self) -> bool:
        return bool(self.rex & 8)

    @property
    def next_ip(self) -> int:
        return self.start + self.length


def _table(spec: str) -> dict:
    """Parse 'opcode-range:flags' specs into {opcode: (has_modrm, imm_kind)}."""
    kinds = {"": I_NONE, "b": I_B, "w": I_W, "z": I_Z, "v": I_V, "wb": I_WB, "ap": I_AP, "o": I_MOFFS,
             "g3": I_GRP3}
    out = {}
    for item in spec.split():
        ops, flags = item.split(":")
        lo, _, hi = ops.partition("-")
        lo = int(lo, 16)
        hi = int(hi, 16) if hi else lo
        modrm = flags.startswith("m")
        kind = kinds[flags[1:] if modrm else flags]
        for op in range(lo, hi + 1):
            out[op] = (modrm, kind)
    return out


# One-byte map.  m = has ModRM; b/w/z/v = immediate kinds.  Absent = #UD (or prefix).
_ONE = _table(
    "00-03:m 04:b 05:z 08-0b:m 0c:b 0d:z 10-13:m 14:b 15:z 18-1b:m 1c:b 1d:z "
    "20-23:m 24:b 25:z 28-2b:m 2c:b 2d:z 30-33:m 34:b 35:z 38-3b:m 3c:b 3d:z "
    "06-07: 0e: 16-17: 1e-1f: 27: 2f: 37: 3f: 40-5f: 60-61: 62:m 63:m "
    "68:z 69:mz 6a:b 6b:mb 6c-6f: 70-7f:b 80:mb 81:mz 82:mb 83:mb 84-8f:m "
    "90-9f: a0-a3:o a4-a7: a8:b a9:z aa-af: b0-b7:b b8-bf:v c0-c1:mb c2:w c3: "
    "c4-c5:m c6:mb c7:mz c8:wb c9: ca:w cb: cc: cd:b ce: cf: d0-d3:m d4-d5:b d6: d7: d8-df:m "
    "e0-e3:b e4-e7:b e8-e9:z ea:ap eb:b ec-ef: f1: f4-f5: f6-f7:mg3 f8-fd: fe-ff:m 9a:ap"
)
# 0F map.
_TWO = _table(
    "00-03:m 05-09: 0b: 0d:m 0e: 10-17:m 18-1f:m 20-23:m 28-2f:m 30-35: 37: "
    "40-4f:m 50-6f:m 70-73:mb 74-76:m 77: 78-7f:m 80-8f:z 90-9f:m a0-a2: a3:m a4:mb a5:m a8-aa: ab:m ac:mb ad-af:m "
    "b0-b7:m b8:m b9:m ba:mb bb-bf:m c0-c1:m c2:mb c3:m c4-c6:mb c7:m c8-cf: d0-ff:m"
)
_0F38 = _table("00-ff:m")
_0F3A = _table("00-ff:mb")


def decode(fetch, code_size: int, start: int = 0) -> Insn:
    """Decode one instruction.

    ``fetch(i)`` returns the byte at offset ``i`` from ``start`` (it may raise the
    processor's fault for an unmapped page).  ``code_size`` is 2, 4 or 8: the
    default operand/address size of the code segment (8 = 64-bit mode).
    """
    ins = Insn(start=start)
    long_mode = code_size == 8
    opsize = 4 if code_size == 8 else code_size
    adsize = code_size
    i = 0
    rex = 0
    while True:
        b = fetch(i)
        i += 1
        if b == 0x66:
            ins.opsize_prefix = True
            rex = 0
        elif b == 0x67:
            adsize = (4 if code_size == 8 else (2 if code_size == 4 else 4))
            rex = 0
        elif b in PREFIX_SEG:
            ins.seg = PREFIX_SEG[b]
            rex = 0
        elif b == 0xF0:
            ins.lock = True
            rex = 0
        elif b == 0xF2 or b == 0xF3:
            ins.rep = b
            rex = 0
        elif long_mode and 0x40 <= b <= 0x4F:
            rex = b      # only effective when immediately before the opcode
        else:
            break
        if i >= 15:
            raise DecodeError(13)
    if ins.opsize_prefix:
        opsize = 2 if code_size != 2 else 4
    if rex & 8:
        opsize = 8
    ins.rex = rex
    opc = b
    if b == 0x0F:
        b = fetch(i)
        i += 1
        if b == 0x38:
            opc = MAP0F38 | fetch(i)
            i += 1
            table = _0F38
        elif b == 0x3A:
            opc = MAP0F3A | fetch(i)
            i += 1
            table = _0F3A
        else:
            opc = MAP0F | b
            table = _TWO
        info = table.get(opc & 0xFF)
    else:
        info = _ONE.get(opc)
    if info is None:
        raise DecodeError(6)
    ins.opc = opc
    # Operand size quirks of 64-bit mode: near branches, push/pop default to 64 bits.
    if long_mode and opsize == 4 and _default64(opc, fetch, i):
        opsize = 8
    ins.opsize = opsize
    ins.adsize = adsize
    has_modrm, imm_kind = info
    if has_modrm:
        ins.has_modrm = True
        modrm = fetch(i)
        i += 1
        mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
        ins.mod = mod
        ins.reg = reg | (8 if rex & 4 else 0)
        if mod == 3:
            ins.rm = rm | (8 if rex & 1 else 0)
        elif adsize == 2:
            i = _modrm16(ins, fetch, i, mod, rm)
        else:
            i = _modrm32(ins, fetch, i, mod, rm, rex, long_mode)
    if imm_kind != I_NONE:
        i = _immediates(ins, fetch, i, imm_kind, opsize, adsize)
    if i > 15:
        raise DecodeError(13)
    ins.length = i
    ins.raw = bytes(fetch(k) for k in range(i))
    return ins


def _default64(opc, fetch, i) -> bool:
    if opc in (0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x5B, 0x5C, 0x5D, 0x5E,
               0x5F, 0x68, 0x6A, 0x8F, 0x9C, 0x9D, 0xC2, 0xC3, 0xC8, 0xC9, 0xE8, 0xE9, 0xEB, 0xE0, 0xE1, 0xE2,
               0xE3, MAP0F | 0xA0, MAP0F | 0xA1, MAP0F | 0xA8, MAP0F | 0xA9):
        return True
    if 0x70 <= opc <= 0x7F or MAP0F | 0x80 <= opc <= MAP0F | 0x8F:
        return True
    if opc == 0xFF:
        reg = (fetch(i) >> 3) & 7
        return reg in (2, 4, 6)     # call/jmp near indirect, push
    return False


def _sx(v: int, bits: int) -> int:
    sign = 1 << (bits - 1)
    return (v & (sign - 1)) - (v & sign)


def _read(fetch, i, n) -> int:
    v = 0
    for k in range(n):
        v |= fetch(i + k) << (8 * k)
    return v


_MODRM16 = ((3, 6), (3, 7), (5, 6), (5, 7), (6, -1), (7, -1), (5, -1), (3, -1))   # (base, index)


def _modrm16(ins, fetch, i, mod, rm):
    base, index = _MODRM16[rm]
    if mod == 0 and rm == 6:
        base = -1
        ins.disp = _read(fetch, i, 2)
        i += 2
    elif mod == 1:
        ins.disp = _sx(fetch(i), 8) & 0xFFFF
        i += 1
    elif mod == 2:
        ins.disp = _read(fetch, i, 2)
        i += 2
    ins.base, ins.index, ins.scale = base, index, 0
    return i


def _modrm32(ins, fetch, i, mod, rm, rex, long_mode):
    base = rm | (8 if rex & 1 else 0)
    index = -1
    scale = 0
    if rm == 4:
        sib = fetch(i)
        i += 1
        scale = sib >> 6
        idx = ((sib >> 3) & 7) | (8 if rex & 2 else 0)
        index = -1 if idx == 4 else idx
        b = sib & 7
        base = b | (8 if rex & 1 else 0)
        if b == 5 and mod == 0:
            base = -1
            ins.disp = _sx(_read(fetch, i, 4), 32)
            i += 4
    elif rm == 5 and mod == 0:
        base = -2 if long_mode else -1
        ins.disp = _sx(_read(fetch, i, 4), 32)
        i += 4
    if mod == 1:
        ins.disp = _sx(fetch(i), 8)
        i += 1
    elif mod == 2:
        ins.disp = _sx(_read(fetch, i, 4), 32)
        i += 4
    ins.base, ins.index, ins.scale = base, index, scale
    return i


def _immediates(ins, fetch, i, kind, opsize, adsize):
    if kind == I_GRP3:
        if ins.reg & 7 > 1:         # only TEST (/0, /1) of group 3 has an immediate
            return i
        kind = I_B if ins.opc == 0xF6 else I_Z
    if kind == I_B:
        ins.imm = fetch(i)
        return i + 1
    if kind == I_W:
        ins.imm = _read(fetch, i, 2)
        return i + 2
    if kind == I_Z:
        n = 2 if opsize == 2 else 4
        v = _read(fetch, i, n)
        ins.imm = _sx(v, 32) & 0xFFFFFFFFFFFFFFFF if (n == 4 and opsize == 8) else v
        return i + n
    if kind == I_V:
        ins.imm = _read(fetch, i, opsize)
        return i + opsize
    if kind == I_WB:
        ins.imm = _read(fetch, i, 2)
        ins.imm2 = fetch(i + 2)
        return i + 3
    if kind == I_AP:
        n = 2 if opsize == 2 else 4
        ins.imm = _read(fetch, i, n)
        ins.imm2 = _read(fetch, i + n, 2)
        return i + n + 2
    if kind == I_MOFFS:
        ins.imm = _read(fetch, i, adsize)
        return i + adsize
    raise AssertionError(kind)
