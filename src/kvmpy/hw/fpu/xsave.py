"""XSAVE, XRSTOR and XSAVEOPT (0F AE /4 /5 /6) for the x87 and SSE state components.

The processor implements state components 0 (x87) and 1 (SSE) only -- no AVX -- so XCR0 may
hold bits 0-1 (``XCR0_SUPPORTED``) and the standard-format area is 576 bytes: the 512-byte
legacy area of FXSAVE (``kvmpy.hw.fpu.fxsave``) and the 64-byte XSAVE header, whose first
quadword is XSTATE_BV and second XCOMP_BV (always 0 here: no compacted format, no XSAVEC).

Which components an instruction touches is RFBM = XCR0 & EDX:EAX.  XINUSE, the components
that may not be in their initial configuration, follows the CPU model (``xinuse_by_use``):
on AMD it is computed from the state itself (x87: default control word, empty stack, zero
registers and pointers; SSE: all XMM registers zero); on Intel a component is in use from
the first instruction that touches it (``FPUState.used``, set once per translated block that
has x87, MMX or SSE instructions, and by FXRSTOR) until XRSTOR initialises it or a reset
(and, so as never to under-report, whenever its state is not initial).
The SDM allows both: a processor may report a component in use whenever it might not be
initial.
``standard_image``/``load_standard_image`` serve KVM_GET_XSAVE/KVM_SET_XSAVE with the same
layout.
"""

from __future__ import annotations

from kvmpy.hw.fpu import fxsave
from kvmpy.hw.events import Fault
from kvmpy.hw.x86defs import CR0_TS, CR4_OSXSAVE

X87, SSE = 1, 2
XCR0_SUPPORTED = X87 | SSE
LEGACY_SIZE = 512
HEADER_SIZE = 64
AREA_SIZE = LEGACY_SIZE + HEADER_SIZE           # CPUID.(0xD,0).EBX/ECX
ALIGN = 64
FCW_INIT, MXCSR_INIT = 0x37F, 0x1F80

# Byte ranges of the legacy area each part occupies (bytes 416..511 are never written)
_X87_RANGES = ((0, 24), (32, 160))
_MXCSR_RANGE = (24, 32)


def _xmm_range(cpu) -> tuple[int, int]:
    return 160, 160 + 16 * fxsave.xmm_count(cpu)


def xinuse(cpu) -> int:
    """The components the model reports as not in their initial configuration."""
    f = cpu.fpu
    used = f.used & XCR0_SUPPORTED if cpu.model.xinuse_by_use else 0
    if (f.fcw != FCW_INIT or f.fsw & ~0x3800 or f.top or f.ftw or f.fop or f.fip or f.fdp
            or any(f.st)):
        used |= X87
    if any(f.xmm):
        used |= SSE
    return used


def _check(cpu, addr: int) -> None:
    if not cpu.cr4 & CR4_OSXSAVE:
        raise Fault(6)
    if cpu.cr0 & CR0_TS:
        raise Fault(7)
    if addr & (ALIGN - 1):
        raise Fault(13, 0)


def _rfbm(cpu) -> int:
    return cpu.xcr0 & ((cpu.regs[0] & 0xFFFFFFFF) | (cpu.regs[2] & 0xFFFFFFFF) << 32)


def _ranges(cpu, components: int, mxcsr: bool) -> list[tuple[int, int]]:
    out = list(_X87_RANGES) if components & X87 else []
    if mxcsr:
        out.append(_MXCSR_RANGE)
    if components & SSE:
        out.append(_xmm_range(cpu))
    return out


def xsave(cpu, addr: int, wide: bool, optimised: bool) -> None:
    """XSAVE (or XSAVEOPT, which skips components in their initial configuration).

    MXCSR is stored whenever RFBM has SSE; XSTATE_BV's bits for RFBM become XINUSE and
    the rest of the header is left alone.
    """
    _check(cpu, addr)
    rfbm = _rfbm(cpu)
    used = xinuse(cpu)
    write = rfbm & used if optimised else rfbm
    legacy = fxsave.image(cpu, wide)
    ranges = _ranges(cpu, write, bool(rfbm & SSE))
    old_bv = cpu.read_slow(addr + LEGACY_SIZE, 8)
    for lo, hi in ranges + [(LEGACY_SIZE, LEGACY_SIZE + 8)]:
        cpu.probe_write(addr + lo, hi - lo)
    for lo, hi in ranges:
        cpu.write_slow(addr + lo, hi - lo, int.from_bytes(legacy[lo:hi], "little"))
    cpu.write_slow(addr + LEGACY_SIZE, 8, (old_bv & ~rfbm) | (used & rfbm))


def check_header(header: bytes) -> int:
    """XSTATE_BV of a standard-format header; #GP if it names components XCR0 cannot hold
    or if XCOMP_BV or the quadword after it is not zero."""
    bv = int.from_bytes(header[0:8], "little")
    if bv & ~XCR0_SUPPORTED or any(header[8:24]):
        raise Fault(13, 0)
    return bv


def init_components(cpu, components: int, nxmm: int) -> None:
    """Put components into their initial configuration (XRSTOR's init optimisation); only
    the first ``nxmm`` XMM registers (outside 64-bit mode XMM8-15 are left alone)."""
    f = cpu.fpu
    if components & X87:
        f.fcw, f.fsw, f.top, f.ftw, f.fop, f.fip, f.fdp = FCW_INIT, 0, 0, 0, 0, 0, 0
        f.st[:] = [0] * 8
    if components & SSE:
        f.xmm[:nxmm] = [0] * nxmm


def restore_components(cpu, legacy: bytes, bv: int, rfbm: int, wide: bool,
                       nxmm: int | None = None, mxcsr_from_memory: bool = True) -> None:
    """Load each component of RFBM from ``legacy`` if its XSTATE_BV bit is set, else put it
    in its initial configuration; MXCSR comes from memory whenever RFBM has SSE (and
    ``mxcsr_from_memory``).  All checks happen before any state changes.  ``nxmm``: XMM
    registers to load (default: the mode's)."""
    mxcsr = fxsave.check_mxcsr_image(cpu, legacy) if rfbm & SSE and mxcsr_from_memory else None
    init_components(cpu, rfbm & ~bv, fxsave.xmm_count(cpu) if nxmm is None else nxmm)
    cpu.fpu.used = (cpu.fpu.used & ~rfbm) | (bv & rfbm)
    if rfbm & bv & X87:
        fxsave.restore_x87(cpu, legacy, wide)
    if rfbm & bv & SSE:
        fxsave.restore_xmm(cpu, legacy, nxmm)
    if mxcsr is not None:
        cpu.fpu.mxcsr = mxcsr


def xrstor(cpu, addr: int, wide: bool) -> None:
    _check(cpu, addr)
    rfbm = _rfbm(cpu)
    header = cpu.read_slow(addr + LEGACY_SIZE, HEADER_SIZE).to_bytes(HEADER_SIZE, "little")
    bv = check_header(header)
    legacy = cpu.read_slow(addr, LEGACY_SIZE).to_bytes(LEGACY_SIZE, "little")
    restore_components(cpu, legacy, bv, rfbm, wide)


def xsave_op(cpu, op: int, addr: int, wide: bool) -> None:
    """0F AE /4 (XSAVE), /5 (XRSTOR), /6 (XSAVEOPT) with a memory operand."""
    if op == 5:
        xrstor(cpu, addr, wide)
    else:
        xsave(cpu, addr, wide, optimised=op == 6)


def standard_image(cpu) -> bytes:
    """The state as a standard-format XSAVE area of all supported components (64-bit
    pointers), with XSTATE_BV = XINUSE: what KVM_GET_XSAVE returns (padded by the caller)."""
    header = xinuse(cpu).to_bytes(8, "little") + bytes(HEADER_SIZE - 8)
    legacy = fxsave.image(cpu, True, len(cpu.fpu.xmm))
    return legacy + bytes(LEGACY_SIZE - len(legacy)) + header


def load_standard_image(cpu, area: bytes) -> None:
    """KVM_SET_XSAVE: load every supported component from a standard-format area (Fault
    for a bad header or MXCSR, before any change).  The area's MXCSR counts only when
    XSTATE_BV has x87 or SSE, as Linux's copy_uabi_to_xstate reads it (MXCSR is part of
    the x87 component's bytes, and SSE needs it); otherwise MXCSR is left as it is."""
    bv = check_header(area[LEGACY_SIZE:AREA_SIZE])
    restore_components(cpu, area[:LEGACY_SIZE], bv, XCR0_SUPPORTED, True, len(cpu.fpu.xmm),
                       mxcsr_from_memory=bool(bv & (X87 | SSE)))
