"""The XSAVE family (XSAVE, XRSTOR, XSAVEOPT) on kvmpy's processor against the host CPU (the
silicon oracle), and the KVM API around XSAVE (CPUID leaf 0xD, XCRs, KVM_GET/SET_XSAVE).

Every snippet stores its save areas into the data page; the data page, the registers and the
exception must match the silicon byte for byte.
"""

import random

import pytest

from kvmpy import uapi
from tests.oracle.native import DATA_ADDR, unavailable_reason
from tests.support.fpu_oracle import NREGS, Snippets
from tests.support.hostinfo import cpu_flags
from tests.support.vcpu import Vcpu, host_vcpu

silicon = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")
D = DATA_ADDR

# --- XSAVE / XRSTOR / XSAVEOPT ---------------------------------------------------------------
AREA = 0x400         # a 64-byte aligned save area in the data page (0x400..0x640)
# the state the host process leaves behind is unknown: zero the x87 registers and XMM8-15
CLEAN = ["fninit"] + ["fldz"] * 8 + ["fninit"] + ["pxor xmm%d, xmm%d" % (i, i) for i in range(8, 16)]


def _forget_model_specific(off):
    """Clear what the silicon stores but kvmpy does not track: the x87 last-instruction
    pointers and opcode (bytes 6..23; MXCSR_MASK is the CPU model's and compared)."""
    return ["mov qword ptr [%#x], 0" % (D + off + 6), "mov qword ptr [%#x], 0" % (D + off + 14),
            "mov word ptr [%#x], 0" % (D + off + 22)]


def _legacy_image(r, mxcsr=0x1F80):
    img = bytearray(512)
    img[0:2] = (0x37F ^ r.choice((0, 0xC00, 0x300))).to_bytes(2, "little")
    img[2:4] = (r.randrange(8) << 11).to_bytes(2, "little")
    img[4] = r.getrandbits(8)
    img[24:28] = mxcsr.to_bytes(4, "little")
    for i in range(8):
        img[32 + 16 * i:42 + 16 * i] = r.getrandbits(80).to_bytes(10, "little")
    for i in range(16):
        img[160 + 16 * i:176 + 16 * i] = r.getrandbits(128).to_bytes(16, "little")
    return img


@silicon
@pytest.mark.skipif(not "xsave" in cpu_flags(), reason="the host CPU has no XSAVE")
def test_xsave(run_snippet):
    """XSAVE/XSAVE64/XSAVEOPT of x87 and SSE state for each RFBM: which parts of the area are
    written, XSTATE_BV (bits outside RFBM kept) and the rest of the header untouched."""
    s = Snippets()
    r = random.Random("xsave")
    for op in ("xsave", "xsave64", "xsaveopt", "xsaveopt64"):
        for rfbm in (1, 2, 3):
            garbage = bytes(r.getrandbits(8) for _ in range(576))
            garbage = garbage[:512] + bytes([0xF0 | r.getrandbits(2)]) + garbage[513:]
            body = CLEAN + ["fld1", "fldpi", "mov eax, %d" % rfbm, "xor edx, edx", "%s [%#x]" % (op, D + AREA)]
            s.add(body + _forget_model_specific(AREA), [r.getrandbits(128) for _ in range(NREGS)], extra=garbage)
    # the initial configuration after FNINIT and PXOR: XSTATE_BV 0 and XSAVEOPT leaves the x87
    # and XMM parts alone on AMD; XSTATE_BV 3 and XSAVEOPT writes them on Intel (XINUSE is set
    # by use there): the CPU model of the host's vendor says which
    init = CLEAN + ["pxor xmm%d, xmm%d" % (i, i) for i in range(8)]
    for op in ("xsave", "xsaveopt"):
        body = init + ["mov eax, 3", "xor edx, edx", "%s [%#x]" % (op, D + AREA)]
        s.add(body + _forget_model_specific(AREA), [], extra=bytes(range(256)) * 2 + bytes(64))
    s.add(["mov eax, 3", "xor edx, edx", "xsave [%#x]" % (D + AREA + 32)], [])      # misaligned: #GP
    s.check(run_snippet)


@silicon
@pytest.mark.skipif(not "xsave" in cpu_flags(), reason="the host CPU has no XSAVE")
def test_xrstor(run_snippet):
    """XRSTOR for each RFBM and XSTATE_BV (components with a clear bit are initialised, MXCSR
    loaded whenever RFBM has SSE), the state read back with FXSAVE; bad headers and MXCSR: #GP."""
    s = Snippets()
    r = random.Random("xrstor")
    for w in ("xrstor", "xrstor64"):
        for rfbm in (1, 2, 3):
            for bv in (0, 1, 2, 3):
                img = _legacy_image(r, 0x1F80 | r.choice((0, 0x2000, 0x6000)))
                area = bytes(img) + bv.to_bytes(8, "little") + bytes(56)
                body = CLEAN + ["fld1", "mov eax, %d" % rfbm, "xor edx, edx", "%s [%#x]" % (w, D + AREA),
                        "fxsave64 [%#x]" % (D + 0xA00)] + _forget_model_specific(0xA00)
                s.add(body, [r.getrandbits(128) for _ in range(NREGS)], extra=area)
    good = bytes(_legacy_image(r)) + (3).to_bytes(8, "little") + bytes(56)
    for bad in (good[:520] + b"\x01" + good[521:],            # XCOMP_BV not zero
                good[:528] + b"\x01" + good[529:],            # reserved header bytes
                good[:519] + b"\x40" + good[520:],            # XSTATE_BV bit 62
                good[:25] + b"\x00\x00\x01\x00" + good[29:]):  # MXCSR reserved bit
        s.add(["mov eax, 3", "xor edx, edx", "xrstor [%#x]" % (D + AREA)], [r.getrandbits(128)], extra=bad)
    s.add(["mov eax, 3", "xor edx, edx", "xrstor [%#x]" % (D + AREA + 16)], [], extra=good)   # #GP
    s.check(run_snippet)


# --- the KVM API around XSAVE ----------------------------------------------------------------
def _soft_vcpu(soft_kvm):
    from kvmpy import syscalls as S
    return Vcpu(S.open, S.ioctl, S.close)


def test_supported_cpuid_and_caps(soft_kvm):
    v = _soft_vcpu(soft_kvm)
    try:
        from kvmpy import syscalls as S
        assert S.ioctl(v.kvm, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_XSAVE) == 1
        assert S.ioctl(v.kvm, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_XCRS) == 1
        sup = uapi.with_entries(uapi.kvm_cpuid2, 64)(nent=64)
        S.ioctl(v.kvm, uapi.KVM_GET_SUPPORTED_CPUID, sup)
        leaves = {(e.function, e.index): (e.eax, e.ebx, e.ecx, e.edx) for e in sup.entries[:sup.nent]}
        ecx = leaves[(1, 0)][2]
        assert ecx >> 20 & 1 and ecx >> 22 & 1 and ecx >> 26 & 1     # sse4_2, movbe, xsave
        assert not ecx >> 27 & 1 and not ecx >> 28 & 1                # no OSXSAVE (runtime), no AVX
        assert leaves[(0xD, 0)] == (3, 576, 576, 0)
        assert leaves[(0xD, 1)][0] == 1                                # XSAVEOPT only
        S.ioctl(v.fd, uapi.KVM_SET_CPUID2, sup)
        # XCR0: x87 always, AVX never (the processor has none); XCRS and CPUID's OSXSAVE
        xcrs = v.get(uapi.KVM_GET_XCRS, uapi.kvm_xcrs)
        assert (xcrs.nr_xcrs, xcrs.xcrs[0].value) == (1, 1)
        for bad in (0, 2, 7, 5):
            xcrs.xcrs[0].value = bad
            with pytest.raises(OSError):
                S.ioctl(v.fd, uapi.KVM_SET_XCRS, xcrs)
        xcrs.xcrs[0].value = 3
        S.ioctl(v.fd, uapi.KVM_SET_XCRS, xcrs)
        assert v.get(uapi.KVM_GET_XCRS, uapi.kvm_xcrs).xcrs[0].value == 3
        from kvmpy.kernel import fs
        from kvmpy.kernel.x86 import cpuid
        vc = fs.fdget(v.fd).private_data
        assert not cpuid.kvm_cpuid(vc, 1, 0)[2] >> 27 & 1
        vc.arch.cpu.cr4 |= 1 << 18
        assert cpuid.kvm_cpuid(vc, 1, 0)[2] >> 27 & 1
    finally:
        v.close()


def test_get_set_xsave(soft_kvm):
    """KVM_GET_XSAVE: standard format, agreeing with KVM_GET_FPU; KVM_SET_XSAVE round trip,
    init of components whose XSTATE_BV bit is clear, EINVAL for a bad header."""
    from kvmpy import syscalls as S
    v = _soft_vcpu(soft_kvm)
    try:
        fresh = bytes(v.get(uapi.KVM_GET_XSAVE, uapi.kvm_xsave))
        assert fresh[0:2] == b"\x7f\x03" and fresh[24:28] == (0x1F80).to_bytes(4, "little")
        assert fresh[512:520] == bytes(8) and not any(fresh[576:])
        r = random.Random("kvm_xsave")
        area = bytes(_legacy_image(r)) + (3).to_bytes(8, "little") + bytes(56)
        x = uapi.kvm_xsave.from_buffer_copy(area + bytes(4096 - 576))
        S.ioctl(v.fd, uapi.KVM_SET_XSAVE, x)
        back = bytes(v.get(uapi.KVM_GET_XSAVE, uapi.kvm_xsave))
        assert back[:28] == area[:28] and back[32:416] == area[32:416] and back[512:520] == area[512:520]
        fpu = v.get(uapi.KVM_GET_FPU, uapi.kvm_fpu)
        assert bytes(fpu.xmm[15]) == area[400:416] and fpu.fcw == int.from_bytes(area[0:2], "little")
        x = uapi.kvm_xsave.from_buffer_copy(area[:512] + (1).to_bytes(8, "little") + bytes(4096 - 520))
        S.ioctl(v.fd, uapi.KVM_SET_XSAVE, x)                          # SSE bit clear: XMM zeroed
        assert not any(bytes(v.get(uapi.KVM_GET_FPU, uapi.kvm_fpu).xmm[3]))
        for bad in (area[:512] + (4).to_bytes(8, "little"), area[:520] + b"\x01"):
            with pytest.raises(OSError):
                S.ioctl(v.fd, uapi.KVM_SET_XSAVE, uapi.kvm_xsave.from_buffer_copy(bad + bytes(4096 - len(bad))))
    finally:
        v.close()


@pytest.mark.host
def test_fresh_xsave_matches_host(soft_kvm):
    """A fresh vCPU's KVM_GET_XSAVE and XCR0 equal the host KVM's (MXCSR_MASK and the
    software-reserved bytes 464..511 are the host kernel's own)."""
    host, soft = host_vcpu(), _soft_vcpu(soft_kvm)
    try:
        h, s = (bytes(c.get(uapi.KVM_GET_XSAVE, uapi.kvm_xsave)) for c in (host, soft))
        assert h[:28] == s[:28] and h[32:464] == s[32:464] and h[512:] == s[512:]
        hx, sx = (c.get(uapi.KVM_GET_XCRS, uapi.kvm_xcrs) for c in (host, soft))
        assert (hx.nr_xcrs, hx.xcrs[0].value) == (sx.nr_xcrs, sx.xcrs[0].value)
    finally:
        host.close()
        soft.close()


def test_xgetbv_and_xsave_need_osxsave():
    """Without CR4.OSXSAVE, XGETBV and XSAVE are #UD; with it XGETBV reads XCR0."""
    from kvmpy.testing import snippet
    from kvmpy.hw.x86defs import CR4_OSXSAVE
    from tests.oracle import asm
    code = asm.assemble("xor ecx, ecx; xgetbv")
    assert snippet.run_snippet(code, {}, 0).regs["rax"] == 3
    real_or = snippet.CR4_OSXSAVE
    try:
        snippet.CR4_OSXSAVE = 0           # run the snippet with CR4.OSXSAVE clear
        assert snippet.run_snippet(code, {}, 0).exception == 6
        assert snippet.run_snippet(asm.assemble("xsave [%#x]" % D), {}, 0).exception == 6
    finally:
        snippet.CR4_OSXSAVE = real_or
    assert CR4_OSXSAVE == 1 << 18
