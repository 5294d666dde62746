"""Multiboot (version 1) kernels, loaded with QEMU's conventions, as ``-kernel`` loads them.

kvm-unit-tests' x86 ``.flat`` files are 32-bit ELF files with a multiboot header, and QEMU
boots them through its multiboot path; this loader hands them the same machine:

- the header (magic 0x1BADB002, flags, checksum) is looked for in the first 8 KiB, on a
  4-byte boundary;
- the kernel is the ELF's PT_LOAD segments at their physical addresses, or, with the
  header's "a.out kludge" flag (bit 16), the file from the header's ``load_addr`` through
  ``load_end_addr`` (or the end of the file), zeroed up to ``bss_end_addr``; a 64-bit ELF
  is refused, as QEMU refuses it;
- after the kernel (page-aligned) come the module list, the command lines and the boot
  loader's name ("qemu"), then each module page-aligned.  Every ``-initrd`` entry is a
  module (QEMU's list: comma-separated, ``,,`` for a comma in a name; a space starts the
  module's own arguments, and the whole entry is its command line);
- the kernel's command line is ``"<kernel file> <-append>"``, QEMU's, so that the kernel
  sees its own name as argv[0];
- the multiboot information structure at :data:`INFO_ADDR`, with the memory sizes (as
  QEMU's option ROM computes them: conventional memory, and the RAM contiguous from
  1 MiB), boot device, command line, modules, the memory map (the e820 of
  :mod:`kvmpy.vmm.layout`, at :data:`MMAP_ADDR`) and the boot loader name.  QEMU writes
  these two before it copies the kernel and modules, so a kernel that overlaps them keeps
  its own bytes (kvm-unit-tests' ``realmode.flat`` loads at 0x8000); here likewise;
- entry in flat 32-bit protected mode, paging off, EAX = 0x2BADB002 and EBX = the
  information structure (:func:`kvmpy.vmm.cpu_setup.setup_multiboot`).

Every problem with the file is a :class:`~kvmpy.vmm.loader.LoadError` naming it.
"""

import struct

from kvmpy.vmm import layout
from kvmpy.vmm.loader import LoadError, LoadedImage, _open, _place, _read, load_elf

HEADER_MAGIC = 0x1BADB002
BOOT_MAGIC = 0x2BADB002             # EAX at entry: a multiboot loader started the kernel
SEARCH_LIMIT = 8192                 # the header lies within the file's first 8 KiB
HEADER_SIZE = 48                    # magic .. the video fields
FLAG_AOUT_KLUDGE = 1 << 16          # the header's address fields say where to load
AOUT_FIELDS = "<IIIII"              # header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr
PAGE = 0x1000

MMAP_ADDR = 0x9000                  # QEMU's: the memory map, then the information structure
INFO_ADDR = MMAP_ADDR + 0x500
INFO_SIZE = 88
MODULE_SIZE = 16                    # mod_start, mod_end, cmdline, reserved
MMAP_ENTRY = "<IQQI"                # size (of the rest: 20), base_addr, length, type
BOOTLOADER_NAME = "qemu"
BOOT_DEVICE = 0x8000FFFF            # the first BIOS disk, no partition: QEMU's
# info flags: which fields the loader filled in
INFO_MEMORY, INFO_BOOT_DEVICE, INFO_CMDLINE, INFO_MODULES = 1 << 0, 1 << 1, 1 << 2, 1 << 3
INFO_MMAP, INFO_BOOTLOADER = 1 << 6, 1 << 9
INFO_FLAGS = (INFO_MEMORY | INFO_BOOT_DEVICE | INFO_CMDLINE | INFO_MODULES | INFO_MMAP
              | INFO_BOOTLOADER)
# offsets in the information structure
INFO_FIELDS = {"flags": 0, "mem_lower": 4, "mem_upper": 8, "boot_device": 12, "cmdline": 16,
               "mods_count": 20, "mods_addr": 24, "mmap_length": 44, "mmap_addr": 48,
               "boot_loader_name": 64}


def find_header(data):
    """(offset, flags) of the first valid multiboot header in ``data``'s first 8 KiB, or
    None: the magic on a 4-byte boundary, and magic + flags + checksum == 0 (mod 2**32)."""
    end = min(len(data), SEARCH_LIMIT) - 12
    offset = data.find(struct.pack("<I", HEADER_MAGIC), 0, end + 4)
    while 0 <= offset <= end:
        if offset % 4 == 0:
            magic, flags, checksum = struct.unpack_from("<III", data, offset)
            if (magic + flags + checksum) & 0xFFFFFFFF == 0:
                return offset, flags
        offset = data.find(struct.pack("<I", HEADER_MAGIC), offset + 1, end + 4)
    return None


def is_multiboot_file(path) -> bool:
    """True if the file has a multiboot header (False if it cannot be read)."""
    try:
        with _open(path) as f:
            return find_header(f.read(SEARCH_LIMIT) or b"") is not None
    except OSError:
        return False


def _load_aout(memory, path, data, offset):
    """The a.out kludge: the header's address fields place the file's bytes."""
    if offset + 12 + struct.calcsize(AOUT_FIELDS) > len(data):
        raise LoadError(f"{path}: truncated multiboot header")
    header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from(AOUT_FIELDS, data, offset + 12)
    if header_addr < load_addr or header_addr - load_addr > offset:
        raise LoadError(f"{path}: multiboot header_addr {header_addr:#x} does not fit "
                        f"load_addr {load_addr:#x}")
    start = offset - (header_addr - load_addr)         # the file offset of load_addr
    if load_end:
        if load_end < load_addr or start + load_end - load_addr > len(data):
            raise LoadError(f"{path}: multiboot load_end_addr {load_end:#x} is outside the file")
        size = load_end - load_addr
    else:
        size = len(data) - start
    memsz = size
    if bss_end:
        if bss_end < load_addr + size:
            raise LoadError(f"{path}: multiboot bss_end_addr {bss_end:#x} is below the "
                            f"loaded image's end {load_addr + size:#x}")
        memsz = bss_end - load_addr
    _place(memory, path, load_addr, data[start:start + size], memsz)
    return entry, [(load_addr, memsz)]


def _load_kernel(memory, path, data, offset, flags):
    if flags & FLAG_AOUT_KLUDGE:
        return _load_aout(memory, path, data, offset)
    image = load_elf(memory, path)          # names a file that is not an ELF either
    if image.bits != 32:
        raise LoadError(f"{path}: a multiboot kernel must be a 32-bit ELF "
                        f"(QEMU cannot load x86-64 multiboot images either)")
    return image.entry, image.segments


def module_list(initrd):
    """QEMU's ``-initrd`` list for a multiboot kernel: [(file, command line)].  Entries
    are separated by ``,`` (``,,`` is a comma in an entry); an entry's file name ends at
    its first space."""
    entries = initrd.replace(",,", "\0").split(",")      # no NUL can be in a command line
    return [(entry.split(" ", 1)[0], entry) for entry in
            (entry.replace("\0", ",") for entry in entries)]


def _page_up(addr):
    return (addr + PAGE - 1) & ~(PAGE - 1)


class _Strings:
    """The kernel and module command lines and the boot loader's name, packed one after
    another from ``addr``; each :meth:`add` answers the guest address of its string."""

    def __init__(self, addr):
        self.addr, self.data = addr, bytearray()

    def add(self, text):
        where = self.addr + len(self.data)
        self.data += text.encode() + b"\0"
        return where


def _uncovered(start, data, pieces):
    """[(address, bytes)]: the parts of ``data`` at ``start`` that none of ``pieces``
    ((address, size) each) covers."""
    parts = [(start, start + len(data))]
    for base, size in pieces:
        parts = [(lo, hi) for a, b in parts
                 for lo, hi in ((a, min(b, base)), (max(a, base + size), b)) if lo < hi]
    return [(lo, data[lo - start:hi - start]) for lo, hi in parts]


def memory_sizes(e820):
    """(mem_lower, mem_upper) in KiB: the RAM at 0, and the RAM contiguous from 1 MiB."""
    lower = sum(size for base, size, kind in e820 if base == 0 and kind == layout.E820_RAM)
    top, grown = layout.HIGH_RAM_START, True
    while grown:
        grown = False
        for base, size, kind in e820:
            if kind == layout.E820_RAM and base <= top < base + size:
                top, grown = base + size, True
    return lower // 1024, (top - layout.HIGH_RAM_START) // 1024


def load_multiboot(memory, path, cmdline="", initrd=None):
    """Load the multiboot kernel at ``path`` with its command line and the ``-initrd``
    modules; return the :class:`LoadedImage` (kind "multiboot", ``boot_params`` the
    information structure's address)."""
    data = _read(path, memory.size)
    found = find_header(data)
    if found is None:
        raise LoadError(f"{path}: no multiboot header in the first {SEARCH_LIMIT} bytes")
    offset, flags = found
    entry, segments = _load_kernel(memory, path, data, offset, flags)
    kernel_end = max(start + size for start, size in segments)

    modules = module_list(initrd) if initrd is not None else []
    mods_addr = _page_up(kernel_end)
    strings = _Strings(mods_addr + MODULE_SIZE * len(modules))
    kernel_cmdline = strings.add(f"{path} {cmdline}")
    loader_name = strings.add(BOOTLOADER_NAME)
    module_cmdlines = [strings.add(text) for _, text in modules]
    _place(memory, path, mods_addr, bytes(strings.addr - mods_addr) + bytes(strings.data))
    segments.append((mods_addr, strings.addr + len(strings.data) - mods_addr))
    addr = _page_up(strings.addr + len(strings.data))
    for i, ((name, _), text_addr) in enumerate(zip(modules, module_cmdlines)):
        module = _read(name, memory.size)
        _place(memory, name, addr, module)
        memory.write(mods_addr + MODULE_SIZE * i,
                     struct.pack("<IIII", addr, addr + len(module), text_addr, 0))
        segments.append((addr, len(module)))
        addr = _page_up(addr + len(module))

    e820 = layout.e820_map(memory.base + memory.size)
    mmap = b"".join(struct.pack(MMAP_ENTRY, struct.calcsize(MMAP_ENTRY) - 4, base, size, kind)
                    for base, size, kind in e820)
    info = bytearray(INFO_SIZE)
    mem_lower, mem_upper = memory_sizes(e820)
    fields = {"flags": INFO_FLAGS, "mem_lower": mem_lower, "mem_upper": mem_upper,
              "boot_device": BOOT_DEVICE, "cmdline": kernel_cmdline,
              "mods_count": len(modules), "mods_addr": mods_addr,
              "mmap_length": len(mmap), "mmap_addr": MMAP_ADDR, "boot_loader_name": loader_name}
    for name, value in fields.items():
        struct.pack_into("<I", info, INFO_FIELDS[name], value)
    for addr, data in (_uncovered(MMAP_ADDR, mmap, segments)
                       + _uncovered(INFO_ADDR, bytes(info), segments)):
        _place(memory, path, addr, data)
    return LoadedImage("multiboot", entry, 32, segments, boot_params=INFO_ADDR)
