"""A reader for the AML a DSDT holds, written from the ACPI spec (chapter 20) apart from the
VMM's encoder, so that a test checks the bytes against the grammar rather than against the
code that wrote them.

It knows the terms kvmpy's DSDT uses -- Scope, Device, Name, and the data objects Zero,
One, Byte/Word/DWord constants, Buffer and Package -- and raises on anything else, on a
PkgLength that runs past its parent, and on trailing bytes. :func:`namespace` gives
``{"\\\\_SB_.COM1._HID": value}``: an integer, a list (Package) or bytes (Buffer).
"""

import struct


class AmlError(Exception):
    pass


def _pkg_length(data, pos):
    """(end of the package, where its contents start) for a PkgLength at ``pos``."""
    lead = data[pos]
    follow = lead >> 6
    if follow == 0:
        length = lead & 0x3F
    else:
        length = lead & 0x0F
        for i in range(follow):
            length |= data[pos + 1 + i] << (4 + 8 * i)
    return pos + length, pos + 1 + follow


def _name(data, pos):
    prefix = ""
    if data[pos] == 0x5C:
        prefix, pos = "\\", pos + 1
    seg = data[pos:pos + 4].decode("ascii")
    if len(seg) != 4 or not all(c.isupper() or c.isdigit() or c == "_" for c in seg):
        raise AmlError(f"bad NameSeg {seg!r} at {pos}")
    return prefix + seg, pos + 4


def _data_object(data, pos):
    op = data[pos]
    if op in (0x00, 0x01):
        return op, pos + 1
    sizes = {0x0A: 1, 0x0B: 2, 0x0C: 4, 0x0E: 8}
    if op in sizes:
        n = sizes[op]
        return int.from_bytes(data[pos + 1:pos + 1 + n], "little"), pos + 1 + n
    if op in (0x11, 0x12):
        end, at = _pkg_length(data, pos + 1)
        if op == 0x11:
            size, at = _data_object(data, at)
            body = bytes(data[at:end])
            if len(body) != size:
                raise AmlError(f"Buffer of {size} bytes holds {len(body)}")
            return body, end
        count, at = data[at], at + 1
        elements = []
        while at < end:
            value, at = _data_object(data, at)
            elements.append(value)
        if len(elements) != count or at != end:
            raise AmlError(f"Package of {count} elements holds {len(elements)}")
        return elements, end
    raise AmlError(f"unknown data object opcode {op:#x} at {pos}")


def _terms(data, pos, end, scope, out):
    while pos < end:
        op = data[pos]
        if op == 0x08:                                   # Name
            seg, pos = _name(data, pos + 1)
            value, pos = _data_object(data, pos)
            out[_join(scope, seg)] = value
        elif op == 0x10 or (op == 0x5B and data[pos + 1] == 0x82):   # Scope, Device
            pos += 1 if op == 0x10 else 2
            pkg_end, pos = _pkg_length(data, pos)
            if pkg_end > end:
                raise AmlError(f"a package to {pkg_end} runs past its parent's end {end}")
            seg, pos = _name(data, pos)
            path = seg if seg.startswith("\\") else _join(scope, seg)
            if op != 0x10:
                out[path] = "Device"
            _terms(data, pos, pkg_end, path, out)
            pos = pkg_end
        else:
            raise AmlError(f"unknown term opcode {op:#x} at {pos}")
    if pos != end:
        raise AmlError(f"terms end at {pos}, not {end}")


def _join(scope, seg):
    return seg if scope == "\\" else f"{scope}.{seg}"


def namespace(table):
    """The objects a DSDT/SSDT's AML defines (the table's header and checksum checked)."""
    signature, length = struct.unpack_from("<4sI", table)
    if length != len(table) or sum(table) & 0xFF:
        raise AmlError(f"{signature!r}: length {length} of {len(table)}, or a bad checksum")
    out = {}
    _terms(table, 36, len(table), "\\", out)
    return out


def eisa_id(value):
    """The "PNP0501" text of an EISA ID DWord (the inverse of ASL's EISAID())."""
    code = value.to_bytes(4, "little")
    letters = int.from_bytes(code[:2], "big")
    text = "".join(chr(((letters >> shift) & 0x1F) + 0x40) for shift in (10, 5, 0))
    return text + code[2:].hex().upper()


def resources(buffer):
    """[("io", min, max, alignment, length) | ("irq", [irqs])] of a _CRS buffer, which must
    end with an end tag."""
    out, pos = [], 0
    while pos < len(buffer):
        tag = buffer[pos]
        if tag & 0x80:
            raise AmlError(f"large resource descriptor {tag:#x}: not expected")
        kind, n = tag >> 3, tag & 7
        body = buffer[pos + 1:pos + 1 + n]
        if kind == 0x08 and n == 7:
            _, lo, hi, align, length = struct.unpack("<BHHBB", body)
            out.append(("io", lo, hi, align, length))
        elif kind == 0x04 and n in (2, 3):
            mask = int.from_bytes(body[:2], "little")
            out.append(("irq", [i for i in range(16) if mask >> i & 1]))
        elif kind == 0x0F and n == 1:
            if pos + 2 != len(buffer):
                raise AmlError("bytes after the end tag")
            return out
        else:
            raise AmlError(f"resource descriptor type {kind:#x} length {n}: not expected")
        pos += 1 + n
    raise AmlError("no end tag")
