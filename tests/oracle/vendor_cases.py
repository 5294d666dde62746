"""Snippets whose results differ between Intel and AMD silicon, and what each one observes.

Each case runs natively (``python -m tests.oracle.record`` keeps the answers of the machine's
silicon in ``tests/data/silicon/``) and on kvmpy's processor under a CPU model
(``tests/diff/test_silicon_records.py`` checks every recorded file against its model, on any host).
An observation is a named byte range of the data page, recorded as hex.
"""

import struct

from tests.oracle import asm
from tests.oracle.native import DATA_ADDR as D

IN, OUT, AREA, CW = 0x000, 0x800, 0x400, 0xF00
TINY = struct.unpack("<Q", struct.pack("<d", 1e-300))[0]


def _x80_of_double(bits):
    """80-bit extended bits of a normal double's bit pattern."""
    s, e, m = bits >> 63, (bits >> 52) & 0x7FF, bits & ((1 << 52) - 1)
    return s << 79 | (e - 1023 + 16383) << 64 | 1 << 63 | m << 11


def _tiny_trig(op, cw):
    """FCOS/FSINCOS of 1e-300 with control word ``cw``: the results (ST0 first) and FSW."""
    lines = ["fninit", "fldcw [%#x]" % (D + CW), "fld tbyte ptr [%#x]" % (D + IN), op,
             "fnstsw [%#x]" % (D + OUT + 0x40), "fstp tbyte ptr [%#x]" % (D + OUT)]
    fields = {"st0": (OUT, 10), "fsw": (OUT + 0x40, 2)}
    if op == "fsincos":
        lines.append("fstp tbyte ptr [%#x]" % (D + OUT + 0x10))
        fields["st1"] = (OUT + 0x10, 10)
    mem = bytearray(4096)
    mem[IN:IN + 10] = _x80_of_double(TINY).to_bytes(10, "little")
    mem[CW:CW + 2] = cw.to_bytes(2, "little")
    return lines, bytes(mem), fields


# the x87 and SSE state in its initial configuration, reached by instructions (not XRSTOR)
_INIT = ["fninit"] + ["fldz"] * 8 + ["fninit"] + ["pxor xmm%d, xmm%d" % (i, i) for i in range(16)]


def _xsave(op):
    """XSAVE/XSAVEOPT (RFBM = x87 | SSE) of the initial state over a garbage-filled area."""
    lines = _INIT + ["mov eax, 3", "xor edx, edx", "%s [%#x]" % (op, D + AREA)]
    mem = bytearray(4096)
    mem[AREA:AREA + 512] = bytes(range(256)) * 2
    return lines, bytes(mem), {"fcw": (AREA, 2), "xmm0": (AREA + 160, 16), "xstate_bv": (AREA + 512, 8)}


def _fxsave_pointers():
    """FXRSTOR an image with FOP/FIP/FDP set and no exception pending (FSW.ES = 0), FXSAVE it."""
    img = bytearray(512)
    img[0:2] = (0x37F).to_bytes(2, "little")
    img[6:8] = (0x5D9).to_bytes(2, "little")
    img[8:16] = (0x1122334455667788).to_bytes(8, "little")
    img[16:24] = (0x0102030405060708).to_bytes(8, "little")
    img[24:28] = (0x1F80).to_bytes(4, "little")
    mem = bytearray(4096)
    mem[AREA:AREA + 512] = img
    lines = ["fxrstor64 [%#x]" % (D + AREA), "fxsave64 [%#x]" % (D + OUT)]
    return lines, bytes(mem), {"fop_fip_fdp": (OUT + 6, 18), "mxcsr_mask": (OUT + 28, 4)}


def _null_gs():
    """Load a null selector into GS in 64-bit mode: is the base kept?  (GS base put back.)"""
    lines = ["mov rax, 0x12345000", "wrgsbase rax", "xor eax, eax", "mov gs, ax", "rdgsbase rbx",
             "mov [%#x], rbx" % (D + OUT), "xor eax, eax", "wrgsbase rax"]
    return lines, bytes(4096), {"gs_base": (OUT, 8)}


def _ldmxcsr_mm():
    """LDMXCSR with bit 17 (MM, AMD's misaligned SSE mode) set, then STMXCSR: loaded or #GP."""
    mem = bytearray(4096)
    mem[IN:IN + 4] = (0x21F80).to_bytes(4, "little")
    lines = ["ldmxcsr [%#x]" % (D + IN), "stmxcsr [%#x]" % (D + OUT), "mov dword ptr [%#x], 0x1f80" % (D + IN),
             "ldmxcsr [%#x]" % (D + IN)]
    return lines, bytes(mem), {"mxcsr": (OUT, 4)}


def _undefined_flags(start, setup, insn):
    """OF SF ZF AF PF CF (RFLAGS & 0x8d5) and RAX after ``insn``, from RFLAGS = ``start``:
    the flags the manuals leave undefined, where AMD's silicon is consistent."""
    lines = ["push %#x" % (2 | start), "popfq", *setup, insn, "pushfq", "pop rcx",
             "and ecx, 0x8d5", "mov [%#x], ecx" % (D + OUT), "mov [%#x], rax" % (D + OUT + 8)]
    return lines, bytes(4096), {"flags": (OUT, 2), "rax": (OUT + 8, 8)}


CASES = {
    "fcos tiny, round down": _tiny_trig("fcos", 0x77F),
    "fsincos tiny, round down": _tiny_trig("fsincos", 0x77F),
    "fcos tiny, round to nearest": _tiny_trig("fcos", 0x37F),
    "xsave of the initial state": _xsave("xsave"),
    "xsaveopt of the initial state": _xsave("xsaveopt"),
    "fxsave pointers without ES": _fxsave_pointers(),
    "null selector into GS": _null_gs(),
    "ldmxcsr with MM": _ldmxcsr_mm(),
    "mul flags": _undefined_flags(0x8D5, ["mov eax, 3", "mov ebx, 5"], "mul rbx"),
    "imul flags": _undefined_flags(0x8D5, ["mov eax, 3", "mov ebx, 5"], "imul rax, rbx"),
    "shl by more than the width": _undefined_flags(0, ["mov eax, 0x81", "mov ecx, 9"], "shl al, cl"),
    "shr by 2": _undefined_flags(0, ["mov eax, 0xc0000001", "mov ecx, 2"], "shr eax, cl"),
    "rcr by 3": _undefined_flags(1, ["mov eax, 0x40000005", "mov ecx, 3"], "rcr eax, cl"),
    "shld by 5": _undefined_flags(0, ["mov eax, 0x0c000001", "mov edx, 0xf0000000", "mov ecx, 5"],
                                  "shld eax, edx, cl"),
    "shrd by 5": _undefined_flags(0, ["mov eax, 0x81", "mov edx, 0x5", "mov ecx, 5"], "shrd eax, edx, cl"),
}


def observe(result, fields) -> dict:
    """The named byte ranges of a result's data page, as hex (with its exception, if any)."""
    out = {name: bytes(result.mem[at:at + size]).hex() for name, (at, size) in fields.items()}
    out["exception"] = result.exception
    return out


def run_all(run) -> dict:
    """``{case: observations}`` with ``run(code, regs, rflags, mem)`` (native or kvmpy)."""
    codes = asm.assemble_many("\n".join(lines) for lines, _, _ in CASES.values())
    return {name: observe(run(code, {}, 0, mem), fields)
            for (name, (_, mem, fields)), code in zip(CASES.items(), codes)}
