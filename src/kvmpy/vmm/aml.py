"""An AML encoder for the few objects kvmpy's DSDT declares (ACPI 6.x, chapters 6.4 and 20).

The DSDT is the only table a guest *interprets*: Linux's ACPICA runs its AML and builds the
ACPI namespace from it, then hands each ``Device`` with a ``_HID`` to the driver that claims
the ID (Linux's PnP layer for the PC's legacy devices: ``8250_pnp`` for PNP0501, ``rtc_cmos``
for PNP0B00, ``i8042`` for PNP0303). So the bytes here are a small language, not a struct:
every object carries its own length (a PkgLength), names are 4-character segments, and a
device's resources (``_CRS``) are a buffer of resource descriptors (6.4.2).

Each function returns the encoded bytes of one term, so a table is built by nesting calls::

    scope("\\\\_SB_", device("COM1", name("_HID", eisa_id("PNP0501")), ...))
"""

from __future__ import annotations

NAME_OP = 0x08
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX = 0x0A, 0x0B, 0x0C
ZERO_OP, ONE_OP = 0x00, 0x01
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR = 0x5C                # "\": a path from the namespace's root

# Small resource descriptors (6.4.2): tag byte = type << 3 | length of the data that follows
IRQ_NO_FLAGS_TAG = 0x04 << 3 | 2       # an IRQ mask; edge-triggered, active high, exclusive
IO_PORT_TAG = 0x08 << 3 | 7            # decode, min, max, alignment, length
END_TAG = 0x0F << 3 | 1                # then a checksum byte (0: "treat as correct")
IO_DECODE_16 = 0x01                    # the device decodes all 16 address bits

PKG_LENGTH_MAX_1 = 0x3F                # what the one-byte form holds (6 bits)
PKG_LENGTH_MAX = 0x0FFFFFFF            # four bytes: 4 + 8 + 8 + 8 bits


def pkg_length(body_len: int) -> bytes:
    """The PkgLength of ``body_len`` following bytes: it counts its own bytes too (20.2.4).
    One byte holds up to 63; otherwise the lead byte's bits 7-6 say how many bytes follow
    and its bits 3-0 are the low nibble of the length."""
    for extra in range(4):
        total = body_len + 1 + extra
        if extra == 0 and total <= PKG_LENGTH_MAX_1:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            return bytes([extra << 6 | total & 0x0F]) + (total >> 4).to_bytes(extra, "little")
    raise ValueError(f"an AML package of {body_len} bytes is longer than PkgLength holds")


def _name_seg(seg: str) -> bytes:
    """A NameSeg: 4 characters of A-Z, 0-9, _ (a shorter name is padded with _)."""
    if not 1 <= len(seg) <= 4 or not all(c.isupper() or c.isdigit() or c == "_" for c in seg):
        raise ValueError(f"{seg!r} is not an AML name segment")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """A NameString: an optional root prefix, then one NameSeg (only one-segment names
    and the root path ``\\`` + segment are needed here)."""
    if path.startswith("\\"):
        return bytes([ROOT_CHAR]) + _name_seg(path[1:])
    return _name_seg(path)


def integer(value: int) -> bytes:
    """The shortest constant that holds ``value`` (Zero, One, Byte, Word or DWord)."""
    if value in (0, 1):
        return bytes([ZERO_OP if value == 0 else ONE_OP])
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4)):
        if 0 <= value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise ValueError(f"{value:#x} does not fit the DWord constants the DSDT uses")


def eisa_id(pnp_id: str) -> bytes:
    """ASL's EISAID("PNP0501"): three letters in 5 bits each (A = 1) and four hex digits,
    packed into a DWord whose bytes, in memory order, are the 16-bit letter code then
    the 16-bit product number, both most significant byte first."""
    if len(pnp_id) != 7 or not pnp_id[:3].isalpha() or not pnp_id[:3].isupper():
        raise ValueError(f"{pnp_id!r} is not an EISA ID (three capitals, four hex digits)")
    letters = 0
    for c in pnp_id[:3]:
        letters = letters << 5 | (ord(c) - ord("A") + 1)
    code = letters.to_bytes(2, "big") + int(pnp_id[3:], 16).to_bytes(2, "big")
    return integer(int.from_bytes(code, "little"))


def name(seg: str, value: bytes) -> bytes:
    """Name(seg, value): ``value`` is an encoded data object."""
    return bytes([NAME_OP]) + name_string(seg) + value


def buffer(data: bytes) -> bytes:
    """Buffer() {data}: a PkgLength, the size as an integer, then the bytes."""
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def package(*elements: bytes) -> bytes:
    """Package() {elements} (at most 255 elements: NumElements is a byte)."""
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(seg: str, *terms: bytes) -> bytes:
    body = name_string(seg) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def io_port(base: int, length: int) -> bytes:
    """IO(Decode16, base, base, 1, length): a fixed range of ``length`` ports."""
    return (bytes([IO_PORT_TAG, IO_DECODE_16]) + base.to_bytes(2, "little")
            + base.to_bytes(2, "little") + bytes([1, length]))


def irq_no_flags(irq: int) -> bytes:
    """IRQNoFlags() {irq}: an ISA IRQ, edge-triggered and active high."""
    return bytes([IRQ_NO_FLAGS_TAG]) + (1 << irq).to_bytes(2, "little")


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate() {descriptors}: a buffer of them closed by the end tag."""
    return buffer(b"".join(descriptors) + bytes([END_TAG, 0]))
