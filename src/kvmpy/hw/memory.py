"""Host memory access for the software processor.

Guest memory is user memory, accessed in place.  Rather than keeping one
memoryview per memslot and a (view, offset) pair per TLB entry, the processor
reads and writes through a single byte view of the whole user address space
(``HOST``), so that a software-TLB entry is just an integer delta: host address =
linear address + delta.  Only addresses that KVM's MMU derived from a memslot
ever reach it.
"""

import ctypes
import struct

HOST = memoryview((ctypes.c_char * (1 << 47)).from_address(0)).cast("B")

U16 = struct.Struct("<H").unpack_from
U32 = struct.Struct("<I").unpack_from
U64 = struct.Struct("<Q").unpack_from
P8 = struct.Struct("<B").pack_into
P16 = struct.Struct("<H").pack_into
P32 = struct.Struct("<I").pack_into
P64 = struct.Struct("<Q").pack_into
UNPACK = {2: U16, 4: U32, 8: U64}
PACK = {1: P8, 2: P16, 4: P32, 8: P64}


def read(host: int, size: int) -> int:
    return int.from_bytes(HOST[host:host + size], "little")


def write(host: int, size: int, value: int) -> None:
    HOST[host:host + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def address_of(buffer) -> int:
    """Host address of a writable buffer (mmap, bytearray, ctypes object)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
