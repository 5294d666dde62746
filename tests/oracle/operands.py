"""Operand vocabulary shared by the directed cases and the fuzzer: register names per
size, memory-operand size keywords, edge values, and how a narrow value sits in a
64-bit register."""

from __future__ import annotations

from tests.oracle.native import DATA_ADDR, REG_NAMES

SIZES = (1, 2, 4, 8)
PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword"}
NOISE = 0xA5C3_96E1_5A3C_691E  # upper bits under narrow operands, to catch bad merges

_LEGACY = {"rax": "a", "rcx": "c", "rdx": "d", "rbx": "b"}
_INDEX = {"rsp": "sp", "rbp": "bp", "rsi": "si", "rdi": "di"}
HIGH8 = {"ah": "rax", "ch": "rcx", "dh": "rdx", "bh": "rbx"}


def reg(name64: str, size: int) -> str:
    """The ``size``-byte name of a 64-bit register (``reg("r9", 2) == "r9w"``)."""
    if size == 8:
        return name64
    if name64.startswith("r") and name64[1:].isdigit():
        return name64 + {4: "d", 2: "w", 1: "b"}[size]
    stem = _LEGACY.get(name64)
    if stem:
        return {4: f"e{stem}x", 2: f"{stem}x", 1: f"{stem}l"}[size]
    stem = _INDEX[name64]
    return {4: f"e{stem}", 2: stem, 1: stem + "l"}[size]


def mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def sign(size: int) -> int:
    return 1 << (8 * size - 1)


def edges(size: int) -> list[int]:
    """0, 1, the largest positive, the smallest negative, -1."""
    return [0, 1, sign(size) - 1, sign(size), mask(size)]


def pattern(size: int, salt: int = 0) -> int:
    """An irregular non-edge value of ``size`` bytes."""
    return (0x3B9A_CA07_1F2E_8D45 * (salt + 3) >> 5) & mask(size)


def in_reg(value: int, size: int) -> int:
    """A 64-bit register holding ``value`` in its low ``size`` bytes, noise above."""
    return value if size == 8 else (NOISE & ~mask(size)) | (value & mask(size))


def to_signed(value: int, size: int) -> int:
    value &= mask(size)
    return value - (1 << 8 * size) if value & sign(size) else value


def data(values: dict[int, tuple[int, int]], pages: int = 1, fill: int = 0xCC) -> bytes:
    """A data area filled with ``fill`` holding ``{offset: (value, size)}``."""
    mem = bytearray([fill]) * (0x1000 * pages)
    for off, (value, size) in values.items():
        mem[off:off + size] = (value & mask(size)).to_bytes(size, "little")
    return bytes(mem)


GPRS = REG_NAMES
MEM_BASE = DATA_ADDR + 0x800  # base register value for memory operands: room either side
