"""The FXSAVE/FXRSTOR memory image and MXCSR loads and stores (group 15 memory forms).

Layout (SDM vol. 1, table 10-2): FCW, FSW (with TOP), abridged FTW, FOP, FIP, FDP (64-bit
pointers with REX.W, else 32-bit offset + selector), MXCSR, MXCSR_MASK, ST0..ST7 as ST(i)
relative to TOP in 16-byte slots, XMM0..15 (8 outside 64-bit mode).  Bytes 416..511 are
neither written nor read, as on the hardware.  The x87 last-instruction pointers are not
tracked by kvmpy's processor: they are saved as the state holds them (zero after reset, or
what FXRSTOR loaded), and by a CPU model with ``fpu_pointers_need_es`` (AMD) as zeros while
no x87 exception is pending.  MXCSR_MASK is the model's (``kvmpy.hw.models``).
"""

from __future__ import annotations

from kvmpy.hw.events import Fault
from kvmpy.hw.x86defs import CR0_EM, CR0_TS, CR4_OSFXSR

XSTATE_BYTES = 416
FSW_ES = 0x80


def check_fpu(cpu) -> None:
    """#NM for x87/FXSAVE instructions when CR0.EM or CR0.TS is set."""
    if cpu.cr0 & (CR0_EM | CR0_TS):
        raise Fault(7)


def check_sse(cpu) -> None:
    if cpu.cr0 & CR0_EM or not cpu.cr4 & CR4_OSFXSR:
        raise Fault(6)
    if cpu.cr0 & CR0_TS:
        raise Fault(7)


def load_mxcsr(cpu, value: int) -> None:
    if value & ~cpu.model.mxcsr_mask:
        raise Fault(13, 0)
    cpu.fpu.mxcsr = value


def image(cpu, wide: bool, nxmm: int | None = None) -> bytes:
    """The 416 bytes FXSAVE writes (``nxmm`` XMM registers, by default those of the mode)."""
    f = cpu.fpu
    out = bytearray(XSTATE_BYTES)
    out[0:2] = f.fcw.to_bytes(2, "little")
    out[2:4] = ((f.fsw & ~0x3800) | (f.top << 11)).to_bytes(2, "little")
    out[4] = f.ftw & 0xFF
    if f.fsw & FSW_ES or not cpu.model.fpu_pointers_need_es:
        out[6:8] = (f.fop & 0x7FF).to_bytes(2, "little")
        ptr = 8 if wide else 4
        out[8:8 + ptr] = (f.fip & ((1 << (8 * ptr)) - 1)).to_bytes(ptr, "little")
        out[16:16 + ptr] = (f.fdp & ((1 << (8 * ptr)) - 1)).to_bytes(ptr, "little")
    out[24:28] = f.mxcsr.to_bytes(4, "little")
    out[28:32] = cpu.model.mxcsr_mask.to_bytes(4, "little")
    for i in range(8):
        out[32 + 16 * i:42 + 16 * i] = f.st[(f.top + i) & 7].to_bytes(10, "little")
    for i in range(xmm_count(cpu) if nxmm is None else nxmm):
        out[160 + 16 * i:176 + 16 * i] = f.xmm[i].to_bytes(16, "little")
    return bytes(out)


def xmm_count(cpu) -> int:
    """XMM8-15 exist only in 64-bit mode."""
    return 16 if cpu.mode.code == 8 else 8


def check_mxcsr_image(cpu, data: bytes) -> int:
    """The MXCSR of an FXSAVE/XSAVE legacy area (#GP if it sets reserved bits)."""
    mxcsr = int.from_bytes(data[24:28], "little")
    if mxcsr & ~cpu.model.mxcsr_mask:
        raise Fault(13, 0)
    return mxcsr


def restore_x87(cpu, data: bytes, wide: bool) -> None:
    """Load the x87 part of a legacy area (bytes 0..23 and the ST registers)."""
    f = cpu.fpu
    f.fcw = int.from_bytes(data[0:2], "little")
    fsw = int.from_bytes(data[2:4], "little")
    f.top = (fsw >> 11) & 7
    f.fsw = fsw & ~0x3800
    f.ftw = data[4]
    f.fop = int.from_bytes(data[6:8], "little") & 0x7FF
    ptr = 8 if wide else 4
    f.fip = int.from_bytes(data[8:8 + ptr], "little")
    f.fdp = int.from_bytes(data[16:16 + ptr], "little")
    for i in range(8):
        f.st[(f.top + i) & 7] = int.from_bytes(data[32 + 16 * i:42 + 16 * i], "little")


def restore_xmm(cpu, data: bytes, nxmm: int | None = None) -> None:
    """Load the XMM registers of a legacy area (in place: translated code holds the list)."""
    for i in range(xmm_count(cpu) if nxmm is None else nxmm):
        cpu.fpu.xmm[i] = int.from_bytes(data[160 + 16 * i:176 + 16 * i], "little")


def restore(cpu, data: bytes, wide: bool) -> None:
    """Load an FXSAVE image (#GP if it sets reserved MXCSR bits, before any change)."""
    mxcsr = check_mxcsr_image(cpu, data)
    cpu.fpu.used |= 3                   # x87 and SSE state written (XINUSE, xsave.py)
    restore_x87(cpu, data, wide)
    cpu.fpu.mxcsr = mxcsr
    restore_xmm(cpu, data)


def fpu_state(cpu, op: int, addr: int, rex_w: int) -> None:
    """0F AE /0../3 with a memory operand: FXSAVE, FXRSTOR, LDMXCSR, STMXCSR."""
    if op in (0, 1):
        check_fpu(cpu)
        if addr & 15:
            raise Fault(13, 0)
        wide = bool(rex_w) and cpu.mode.code == 8
        if op == 0:
            cpu.probe_write(addr, XSTATE_BYTES)
            cpu.write_slow(addr, XSTATE_BYTES, int.from_bytes(image(cpu, wide), "little"))
        else:
            restore(cpu, cpu.read_slow(addr, XSTATE_BYTES).to_bytes(XSTATE_BYTES, "little"), wide)
    elif op in (2, 3):
        check_sse(cpu)
        if op == 2:
            load_mxcsr(cpu, cpu.read_slow(addr, 4))
        else:
            cpu.write_slow(addr, 4, cpu.fpu.mxcsr)
    else:
        raise Fault(6)
