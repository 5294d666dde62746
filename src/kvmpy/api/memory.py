"""Guest memory: anonymous host memory the VMM hands to KVM (the vm-memory role).

As with KVM, guest RAM is ordinary user memory: the VMM maps it, passes its host address
to ``KVM_SET_USER_MEMORY_REGION``, and both the VMM and the (real or soft) kernel access it
in place. The mapping must outlive every VM that uses it, so close it only afterwards.
"""

import ctypes
import mmap
import sys

from kvmpy.uapi import PAGE_SIZE


_libc = ctypes.CDLL(None, use_errno=True)
PROT_NONE = 0                   # <sys/mman.h>; the mmap module has no name for it


class GuestMemoryError(ValueError):
    """An access outside the region."""


class GuestMemory:
    """One contiguous region of guest RAM at guest-physical ``base``."""

    def __init__(self, size, base=0):
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"guest memory size must be a positive multiple of {PAGE_SIZE}")
        self.base = base
        self.size = size
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        anchor = ctypes.c_char.from_buffer(self._map)
        self.host_addr = ctypes.addressof(anchor)
        del anchor  # the export would keep the mapping from closing

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Unmap the memory, first telling kvmpy's kernel (if loaded) that it goes away:
        its MMU drops what it mapped there, as KVM's mmu notifier does on munmap."""
        kernel = sys.modules.get("kvmpy.kernel.kvm_main")
        if kernel is not None and not self._map.closed:
            kernel.mmu_notifier_invalidate_range_start(self.host_addr, self.host_addr + self.size)
        self._map.close()

    def invalidate(self, gpa, length):
        """Take the pages holding [gpa, gpa+length) away and give them back (mprotect to
        no access, then read/write), as QEMU's pc-testdev "flush page" does: the kernel's
        mmu notifier makes KVM drop what it mapped there, so the guest's next access faults
        into KVM again. kvmpy's kernel, in this process, is told directly, as on unmap.
        The contents stay."""
        off = self._offset(gpa, length)
        start = off & ~(PAGE_SIZE - 1)
        end = (off + length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        kernel = sys.modules.get("kvmpy.kernel.kvm_main")
        if kernel is not None:
            kernel.mmu_notifier_invalidate_range_start(self.host_addr + start,
                                                       self.host_addr + end)
        for prot in (PROT_NONE, mmap.PROT_READ | mmap.PROT_WRITE):
            if _libc.mprotect(ctypes.c_void_p(self.host_addr + start),
                              ctypes.c_size_t(end - start), prot):
                raise OSError(ctypes.get_errno(), "mprotect of guest memory failed")

    def contains(self, gpa, length=1):
        return self.base <= gpa and gpa + length <= self.base + self.size

    def _offset(self, gpa, length):
        if length < 0 or not self.contains(gpa, length):
            raise GuestMemoryError(
                f"guest-physical {gpa:#x}+{length:#x} is outside RAM "
                f"[{self.base:#x}, {self.base + self.size:#x})")
        return gpa - self.base

    def read(self, gpa, length):
        """``length`` bytes at guest-physical ``gpa``."""
        off = self._offset(gpa, length)
        return self._map[off:off + length]

    def write(self, gpa, data):
        """Copy ``data`` to guest-physical ``gpa``."""
        off = self._offset(gpa, len(data))
        self._map[off:off + len(data)] = data

    def fill(self, gpa, length, byte=0):
        """Set ``length`` bytes at ``gpa`` to ``byte``."""
        self.write(gpa, bytes([byte]) * length)

    def read_int(self, gpa, size):
        """A little-endian unsigned integer of ``size`` bytes."""
        return int.from_bytes(self.read(gpa, size), "little")

    def write_int(self, gpa, size, value):
        """Store ``value`` as a little-endian integer of ``size`` bytes."""
        self.write(gpa, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
