"""Xen's x86/HVM direct boot ABI ("PVH"): an uncompressed vmlinux entered as QEMU's
``-kernel`` and Firecracker enter it, without firmware or a decompressor.

An ELF kernel announces the ABI with the note ``XEN_ELFNOTE_PHYS32_ENTRY`` (name "Xen",
type 18) in a PT_NOTE segment: its descriptor is the physical address of the 32-bit entry
point (4 or 8 bytes, as the ELF class writes an address).  The loader:

- copies the PT_LOAD segments to their physical addresses (:func:`loader.place_elf`);
- puts the command line at :data:`~kvmpy.vmm.layout.CMDLINE_ADDR`, and ``-initrd`` as
  high in RAM as it fits, page-aligned: module 0 of the module list, the one a PVH Linux
  takes as its initramfs;
- builds ``struct hvm_start_info`` (version 1) at :data:`START_INFO_ADDR`, followed by the
  module list (``hvm_modlist_entry``) and the memory map (``hvm_memmap_table_entry``,
  whose types are e820's: :mod:`kvmpy.vmm.layout`), with ``rsdp_paddr`` the machine's
  ACPI RSDP: a PVH guest has no BIOS area to scan, it is told where the tables are;
- enters at the note's address in flat 32-bit protected mode with paging off and EBX =
  the start info (:func:`kvmpy.vmm.cpu_setup.setup_pvh`).

Every problem with the file is a :class:`~kvmpy.vmm.loader.LoadError` naming it.
"""

import struct

from kvmpy.vmm import layout
from kvmpy.vmm.loader import LoadError, LoadedImage, _place, open_elf, place_elf, place_initrd

XEN_NOTE_NAME = b"Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18
START_MAGIC = 0x336EC578
START_VERSION = 1                   # the memory map fields are there from version 1
NOTE_HEADER = struct.Struct("<III")  # namesz, descsz, type

START_INFO_ADDR = 0x6000
START_INFO = struct.Struct("<IIIIQQQQII")   # magic .. memmap_entries, reserved
MODLIST_ADDR = START_INFO_ADDR + 0x40
MODLIST_ENTRY = struct.Struct("<QQQQ")      # paddr, size, cmdline_paddr, reserved
MEMMAP_ADDR = START_INFO_ADDR + 0x100
MEMMAP_ENTRY = struct.Struct("<QQII")       # addr, size, type, reserved
BOOT_INFO_END = START_INFO_ADDR + 0x1000


def _align4(n):
    return (n + 3) & ~3


def notes(data):
    """[(name, type, descriptor)] of the ELF notes in a PT_NOTE segment's bytes; None when
    they do not parse (a size that runs past the segment)."""
    found, offset = [], 0
    while offset + NOTE_HEADER.size <= len(data):
        namesz, descsz, type_ = NOTE_HEADER.unpack_from(data, offset)
        name_at = offset + NOTE_HEADER.size
        desc_at = name_at + _align4(namesz)
        if desc_at + descsz > len(data):
            return None
        found.append((data[name_at:name_at + namesz].rstrip(b"\0"), type_,
                      data[desc_at:desc_at + descsz]))
        offset = desc_at + _align4(descsz)
    return found


def phys32_entry(path, elf):
    """The address the kernel's XEN_ELFNOTE_PHYS32_ENTRY gives, or None without the note."""
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_NOTE":
            continue
        found = notes(seg.data())
        if found is None:
            raise LoadError(f"{path}: malformed ELF note segment at offset {seg['p_offset']:#x}")
        for name, type_, desc in found:
            if name != XEN_NOTE_NAME or type_ != XEN_ELFNOTE_PHYS32_ENTRY:
                continue
            if len(desc) not in (4, 8):
                raise LoadError(f"{path}: the Xen PHYS32_ENTRY note has {len(desc)} bytes "
                                f"(an address of 4 or 8 bytes expected)")
            entry = int.from_bytes(desc, "little")
            if entry >> 32:
                raise LoadError(f"{path}: the PVH entry point {entry:#x} is above 4 GiB "
                                f"(it is entered with paging off)")
            return entry
    return None


def is_pvh_file(path) -> bool:
    """True if the file is an ELF with the PVH entry note (False if it cannot be read)."""
    try:
        with open_elf(path, 1 << 20) as elf:
            return phys32_entry(path, elf) is not None
    except LoadError:
        return False


def _check_clear(path, segments, start, end, what):
    for base, size in segments:
        if base < end and start < base + size:
            raise LoadError(f"{path}: the segment at {base:#x} ({size:#x} bytes) overlaps "
                            f"the {what} at {start:#x}")


def load_pvh(memory, path, cmdline="", initrd=None):
    """Load the PVH kernel at ``path`` with ``cmdline`` and the ``initrd`` file (or None);
    return the :class:`LoadedImage` (kind "pvh", ``boot_params`` the start info)."""
    with open_elf(path, memory.size) as elf:
        entry = phys32_entry(path, elf)
        if entry is None:
            raise LoadError(f"{path}: no PVH entry point (the ELF has no Xen "
                            f"XEN_ELFNOTE_PHYS32_ENTRY note)")
        _, _, segments = place_elf(memory, path, elf)
    raw = cmdline.encode() + b"\0"
    _check_clear(path, segments, START_INFO_ADDR, BOOT_INFO_END, "boot information")
    _check_clear(path, segments, layout.CMDLINE_ADDR, layout.CMDLINE_ADDR + len(raw),
                 "command line")
    _place(memory, path, layout.CMDLINE_ADDR, raw)

    modules = b""
    if initrd is not None:
        kernel_end = max(base + size for base, size in segments)
        addr, size = place_initrd(memory, path, initrd, kernel_end)
        modules = MODLIST_ENTRY.pack(addr, size, 0, 0)
    e820 = layout.e820_map(memory.base + memory.size)
    memmap = b"".join(MEMMAP_ENTRY.pack(base, size, kind, 0) for base, size, kind in e820)
    if MEMMAP_ADDR + len(memmap) > BOOT_INFO_END:
        raise LoadError(f"{path}: the memory map has too many entries ({len(e820)})")
    info = START_INFO.pack(START_MAGIC, START_VERSION, 0, len(modules) // MODLIST_ENTRY.size,
                           MODLIST_ADDR if modules else 0, layout.CMDLINE_ADDR,
                           layout.ACPI_RSDP, MEMMAP_ADDR, len(e820), 0)
    for addr, data in ((START_INFO_ADDR, info), (MODLIST_ADDR, modules), (MEMMAP_ADDR, memmap)):
        _place(memory, path, addr, data)
    return LoadedImage("pvh", entry, 32, segments, boot_params=START_INFO_ADDR)
