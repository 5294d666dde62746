"""QEMU's firmware configuration device (fw_cfg), its I/O-port interface on x86.

Firmware and test kernels (kvm-unit-tests' ``lib/x86/fwcfg.c``) ask the VMM about the
machine through it: a 16-bit write to the selector port (0x510) picks an item and rewinds
it, then each 8-bit read of the data port (0x511) gives the item's next byte, and 0 past
its end or for an item the machine does not have.  Writes to the data port are ignored,
as in QEMU since 2.4; there is no DMA interface (the ID item says so).

The items (numbers from QEMU's docs/specs/fw_cfg.rst), little-endian unless noted:

==========================  ========  ==============================================
FW_CFG_SIGNATURE  0x00      4 bytes   "QEMU"
FW_CFG_ID         0x01      u32       feature bits: 1 = the traditional interface
FW_CFG_RAM_SIZE   0x03      u64       guest RAM in bytes
FW_CFG_NB_CPUS    0x05      u16       CPUs at boot (-smp)
FW_CFG_MAX_CPUS   0x0f      u16       most CPUs the machine can have
FW_CFG_FILE_DIR   0x19      big-endian: u32 count, then per file u32 size, u16 select,
                                      u16 reserved, 56-byte NUL-padded name
FW_CFG_FILE_FIRST 0x20..    the files, in the directory's (name) order
==========================  ========  ==============================================

``etc/e820`` is the memory map of :mod:`kvmpy.vmm.layout`: per entry u64 address, u64
length, u32 type.  Other parts of the VMM add their files with :meth:`FwCfg.add_file`.
"""

import struct

from kvmpy.vmm import layout

FW_CFG_PORT = 0x510
SELECTOR, DATA = 0, 1           # offsets in the two-port range
FW_CFG_PORTS = 2

FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NB_CPUS = 0x05
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_WRITE_CHANNEL = 0x4000   # a selector bit, not part of the item's number
FW_CFG_MAX_FILES = 0x1000 - FW_CFG_FILE_FIRST

SIGNATURE = b"QEMU"
ID_TRADITIONAL = 1 << 0         # the selector/data ports (no DMA: bit 1 clear)
FILE_NAME_SIZE = 56
FILE_ENTRY = ">IHH56s"          # size, select, reserved, name
E820_ENTRY = "<QQI"
E820_FILE = "etc/e820"


def e820_file(ram_end):
    """The ``etc/e820`` file's bytes for a guest whose RAM ends at ``ram_end``."""
    return b"".join(struct.pack(E820_ENTRY, addr, size, kind)
                    for addr, size, kind in layout.e820_map(ram_end))


class FwCfg:
    """The selector/data ports and the items of a machine with ``ram_size`` bytes of RAM
    and ``nb_cpus`` of at most ``max_cpus`` CPUs."""

    def __init__(self, ram_size, nb_cpus, max_cpus=None):
        self.items = {
            FW_CFG_SIGNATURE: SIGNATURE,
            FW_CFG_ID: struct.pack("<I", ID_TRADITIONAL),
            FW_CFG_RAM_SIZE: struct.pack("<Q", ram_size),
            FW_CFG_NB_CPUS: struct.pack("<H", nb_cpus),
            FW_CFG_MAX_CPUS: struct.pack("<H", nb_cpus if max_cpus is None else max_cpus),
        }
        self.files = {}
        self._order = []                # file names, sorted: item FW_CFG_FILE_FIRST + i
        self.selector = 0
        self.offset = 0
        self.add_file(E820_FILE, e820_file(ram_size))

    def add_file(self, name, data):
        """Add (or replace) the file ``name``; the directory stays sorted by name, as
        QEMU's is, so a new file can renumber those after it."""
        raw = name.encode()
        if not raw or len(raw) >= FILE_NAME_SIZE:
            raise ValueError(f"fw_cfg file name {name!r}: 1..{FILE_NAME_SIZE - 1} bytes")
        if name not in self.files and len(self.files) >= FW_CFG_MAX_FILES:
            raise ValueError(f"fw_cfg: more than {FW_CFG_MAX_FILES} files")
        self.files[name] = bytes(data)
        self._order = sorted(self.files)
        self.items[FW_CFG_FILE_DIR] = struct.pack(">I", len(self._order)) + b"".join(
            struct.pack(FILE_ENTRY, len(self.files[name]), FW_CFG_FILE_FIRST + i, 0,
                        name.encode()) for i, name in enumerate(self._order))

    def item(self, key):
        """The bytes of item ``key`` (empty for an item the machine does not have)."""
        index = key - FW_CFG_FILE_FIRST
        if 0 <= index < len(self._order):
            return self.files[self._order[index]]
        return self.items.get(key, b"")

    def select(self, key):
        self.selector = key & 0xFFFF & ~FW_CFG_WRITE_CHANNEL
        self.offset = 0

    def read(self, offset, size):
        if offset != DATA:
            return 0                    # the selector port reads as 0
        chunk = self.item(self.selector)[self.offset:self.offset + size]
        self.offset += size
        return int.from_bytes(chunk, "little")   # 0 past the end

    def write(self, offset, size, value):
        if offset == SELECTOR:
            self.select(value)
        # writes to the data port are ignored, as QEMU's are
