"""Host memory access: the one module that knows how user memory is reached.

Guest memory is user memory, accessed in place, one 4 KiB page at a time: ``page(host)``
is a writable byte view of the host page at ``host``, made once and kept (a view is only a
pointer and a length: it stays valid to hold even after the page is unmapped, and it is
only used after KVM's MMU checked the page).  A software-TLB entry is such a view, so
translated code reads a byte as ``view[lin & 4095]``, as cheap as an index into one view
of the whole address space -- which PyPy refuses to make (2^47 bytes from address 0).

Touching an unmapped page, or writing a read-only one, through a view kills the process
with SIGSEGV.  So before KVM's MMU maps a guest frame it asks ``populate`` whether the page
exists with the needed permission, the way get_user_pages faults a page in for KVM's
``hva_to_pfn``: ``madvise(MADV_POPULATE_READ / MADV_POPULATE_WRITE)`` (Linux 5.14) faults
the range in exactly as an access would, and fails with ENOMEM (not mapped) or EFAULT (the
access would fault) instead of raising the signal.  Kernels without it, and mappings it
does not take (VM_IO/VM_PFNMAP: EINVAL), fall back to /proc/self/maps.  ``mapped`` is the
cheap per-KVM_RUN check that a whole range is still mapped (msync: ENOMEM on a hole, in a
time that does not grow with the range's pages).
"""

import ctypes
import errno
import struct

from ..uapi.kvm import PAGE_SIZE

PAGE_MASK = ~(PAGE_SIZE - 1)
MADV_POPULATE_READ, MADV_POPULATE_WRITE = 22, 23
MS_ASYNC = 1
_MAX_VIEWS = 1 << 18            # 1 GiB of pages seen: then start the cache afresh

U16 = struct.Struct("<H").unpack_from
U32 = struct.Struct("<I").unpack_from
U64 = struct.Struct("<Q").unpack_from
P8 = struct.Struct("<B").pack_into
P16 = struct.Struct("<H").pack_into
P32 = struct.Struct("<I").pack_into
P64 = struct.Struct("<Q").pack_into
UNPACK = {2: U16, 4: U32, 8: U64}
PACK = {1: P8, 2: P16, 4: P32, 8: P64}

_libc = ctypes.CDLL(None, use_errno=True)
_madvise = _libc.madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_msync = _libc.msync
_msync.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_PageArray = ctypes.c_char * PAGE_SIZE
_views = {}


def page(host: int) -> memoryview:
    """The byte view of the host page at (page-aligned) ``host``; the same object every time."""
    v = _views.get(host)
    if v is None:
        if len(_views) >= _MAX_VIEWS:
            _views.clear()
        v = _views[host] = memoryview(_PageArray.from_address(host)).cast("B")
    return v


def read(host: int, size: int) -> int:
    """Little-endian integer at host address ``host`` (the pages must have been checked)."""
    off = host & 0xFFF
    if off + size > PAGE_SIZE:
        lo = PAGE_SIZE - off
        return read(host, lo) | (read(host + lo, size - lo) << (8 * lo))
    return int.from_bytes(page(host - off)[off:off + size], "little")


def write(host: int, size: int, value: int) -> None:
    off = host & 0xFFF
    if off + size > PAGE_SIZE:
        lo = PAGE_SIZE - off
        write(host, lo, value)
        write(host + lo, size - lo, value >> (8 * lo))
        return
    page(host - off)[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def populate(host: int, length: int, write: bool) -> int:
    """Fault [host, host+length) in for reading (or writing); 0, or the errno of the failure
    (ENOMEM: not mapped, EFAULT: the access would raise SIGSEGV)."""
    start = host & PAGE_MASK
    n = (host + length - start + PAGE_SIZE - 1) & PAGE_MASK
    while True:
        if _madvise(start, n, MADV_POPULATE_WRITE if write else MADV_POPULATE_READ) == 0:
            return 0
        err = ctypes.get_errno()
        if err == errno.EINVAL:         # an older kernel, or a mapping madvise does not take
            return 0 if _maps_allow(start, n, "rw" if write else "r") else errno.EFAULT
        if err not in (errno.EINTR, errno.EAGAIN):
            return err


def mapped(host: int, length: int) -> bool:
    """True while every page of [host, host+length) is mapped (whatever its protection)."""
    start = host & PAGE_MASK
    return _msync(start, (host + length - start + PAGE_SIZE - 1) & PAGE_MASK, MS_ASYNC) == 0


def _maps_allow(addr: int, size: int, perms: str) -> bool:
    """/proc/self/maps: is [addr, addr+size) covered by mappings with ``perms``?"""
    need, end = addr, addr + size
    with open("/proc/self/maps") as f:
        for line in f:
            rng, mode = line.split(None, 2)[:2]
            lo, hi = (int(x, 16) for x in rng.split("-"))
            if hi <= need or lo > need:
                continue
            if any(p not in mode for p in perms):
                return False
            need = hi
            if need >= end:
                return True
    return False


def address_of(buffer) -> int:
    """Host address of a writable buffer (mmap, bytearray, ctypes object)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
