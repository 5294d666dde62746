"""Build minimal x86 ELF executables in memory, for loader and VMM tests."""

import struct

EM_386, EM_X86_64 = 3, 62
PT_LOAD = 1


def make_elf(code, paddr, bits=32, memsz=None, entry=None, machine=None, e_type=2):
    """An ELF with one PT_LOAD segment holding ``code`` at physical ``paddr``."""
    entry = paddr if entry is None else entry
    memsz = len(code) if memsz is None else memsz
    if bits == 32:
        ehsize, phsize = 52, 32
        ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
        header = ident + struct.pack("<HHIIIIIHHHHHH", e_type, machine or EM_386, 1, entry,
                                     ehsize, 0, 0, ehsize, phsize, 1, 40, 0, 0)
        phdr = struct.pack("<IIIIIIII", PT_LOAD, ehsize + phsize, paddr, paddr, len(code),
                           memsz, 5, 0x1000)
    else:
        ehsize, phsize = 64, 56
        ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
        header = ident + struct.pack("<HHIQQQIHHHHHH", e_type, machine or EM_X86_64, 1,
                                     entry, ehsize, 0, 0, ehsize, phsize, 1, 64, 0, 0)
        phdr = struct.pack("<IIQQQQQQ", PT_LOAD, 5, ehsize + phsize, paddr, paddr, len(code),
                           memsz, 0x1000)
    return header + phdr + bytes(code)
