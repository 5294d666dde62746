"""MOVBE and SSE4.2 (CRC32, PCMPxSTRx) on kvmpy's processor against the host CPU (the
silicon oracle).

Every snippet stores what it wants compared (general registers, XMM registers, flags after
each instruction) into the data page; the data page, the registers, the flags and the
exception must match the silicon byte for byte.
"""

import random

import pytest

from tests.oracle.native import DATA_ADDR, unavailable_reason
from tests.support.fpu_oracle import IN, Snippets
from tests.support.hostinfo import cpu_flags

silicon = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")
D = DATA_ADDR
M64 = (1 << 64) - 1


def save_flags(off):
    """Lines storing the arithmetic flags at data+off (r15 as scratch)."""
    return ["pushfq", "pop r15", "and r15d, 0x8d5", "mov [%#x], r15d" % (D + off)]


def save_regs(names, off):
    return ["mov [%#x], %s" % (D + off + 8 * i, r) for i, r in enumerate(names)]


# --- MOVBE ---------------------------------------------------------------------------------
@silicon
@pytest.mark.skipif(not "movbe" in cpu_flags(), reason="the host CPU has no MOVBE")
def test_movbe(run_snippet):
    s = Snippets()
    r = random.Random("movbe")
    for _ in range(4):
        regs = {n: r.getrandbits(64) for n in ("rax", "rcx", "rdx", "rsi", "rdi", "r9")}
        body = ["movbe eax, [%#x]" % (D + IN + 1), "movbe rcx, [%#x]" % (D + IN + 3),
                "movbe dx, [%#x]" % (D + IN + 5), "movbe r9w, [%#x]" % (D + IN + 6),
                "movbe [%#x], esi" % (D + 0x900), "movbe [%#x], rdi" % (D + 0x911),
                "movbe [%#x], r9w" % (D + 0x921), "movbe [%#x], dx" % (D + 0x930)]
        s.add(body, [r.getrandbits(128)], regs=regs, flags=True)
    # register operands, F3 and LOCK prefixes: #UD
    for raw in ("0x0f,0x38,0xf0,0xc1", "0x0f,0x38,0xf1,0xc8", "0xf3,0x0f,0x38,0xf0,0x00",
                "0xf0,0x0f,0x38,0xf0,0x00"):
        s.add([".byte " + raw], [], regs={"rax": D + IN})
    s.check(run_snippet)


# --- CRC32 ---------------------------------------------------------------------------------
@silicon
def test_crc32(run_snippet):
    s = Snippets()
    r = random.Random("crc32")
    for _ in range(8):
        regs = {n: r.choice((0, M64, r.getrandbits(64))) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "r8")}
        body = ["crc32 eax, bl", "crc32 eax, bh", "crc32 edx, cx", "crc32 esi, ecx", "crc32 r8, rcx",
                "crc32 rbx, cl", "crc32 ecx, byte ptr [%#x]" % (D + IN + 3),
                "crc32 ecx, word ptr [%#x]" % (D + IN + 5), "crc32 rdx, byte ptr [%#x]" % (D + IN + 7),
                "crc32 rsi, qword ptr [%#x]" % (D + IN + 9), "crc32 r8d, dword ptr [%#x]" % (D + IN + 1),
                "crc32 eax, r8b", "crc32 eax, sil"]
        s.add(body, [r.getrandbits(128)], regs=regs, flags=True)
    s.add([".byte 0xf0,0xf2,0x0f,0x38,0xf1,0xc1"], [])          # LOCK CRC32: #UD
    s.check(run_snippet)


# --- PCMPESTRI/PCMPESTRM/PCMPISTRI/PCMPISTRM ------------------------------------------------
def _string(r, words, null_at=None):
    """A string over a small alphabet (so that comparisons match), maybe with a null."""
    size = 2 if words else 1
    n = 16 // size
    alphabet = [1, 2, 3, 0x41, 0x61, (1 << (8 * size)) - 1, 1 << (8 * size - 1), 0x7F]
    lanes = [r.choice(alphabet) for _ in range(n)]
    if null_at is not None and null_at < n:
        lanes[null_at] = 0
    return sum(v << (8 * size * i) for i, v in enumerate(lanes))


LENGTHS = [0, 1, 3, 5, 8, 15, 16, 17, -1, -4, -8, -16, -100, 0x7FFFFFFF, -0x80000000]


@silicon
def test_pcmpstr_all_modes(run_snippet):
    """Every control byte (format, aggregation, polarity, index/mask selection), explicit and
    implicit lengths, register and unaligned memory operands; ECX, XMM0 and the flags after
    each instruction."""
    s = Snippets()
    r = random.Random("pcmpstr")
    for imm in range(128):
        words = imm & 1
        for k in range(3):
            xmm = [r.getrandbits(128), _string(r, words, r.randrange(18)), _string(r, words, r.randrange(18)),
                   _string(r, words, r.randrange(20)), _string(r, words, r.randrange(20)),
                   _string(r, words, r.randrange(18))]
            needle = [_string(r, words), r.getrandbits(128)]
            xmm[1] = r.choice((xmm[1], xmm[2] & ((1 << (8 * r.randrange(1, 6))) - 1), needle[0]))
            regs = {"rax": r.choice(LENGTHS) & M64, "rdx": r.choice(LENGTHS) & M64, "rcx": M64}
            wide = "rex.w " if k == 2 else ""
            body = ["%spcmpestri xmm1, xmm2, %d" % (wide, imm), *save_flags(0x980), *save_regs(["rcx"], 0x988),
                    "%spcmpestrm xmm1, [%#x], %d" % (wide, D + IN + 16 * 5 + 1, imm), *save_flags(0x990),
                    "movdqu [%#x], xmm0" % (D + 0x9A0),
                    "pcmpistri xmm3, xmm4, %d" % imm, *save_flags(0x9B0), *save_regs(["rcx"], 0x9B8),
                    "pcmpistrm xmm4, xmm3, %d" % imm, *save_flags(0x9C0)]
            s.add(body, xmm, regs=regs)
    s.check(run_snippet)
