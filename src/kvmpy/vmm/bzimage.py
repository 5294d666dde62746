"""The Linux x86 boot protocol (Documentation/arch/x86/boot.rst): a bzImage loaded as
kvmtool, QEMU and Firecracker load it, without running its real-mode setup code.

A bzImage is the real-mode setup (``setup_sects`` sectors after the boot sector, with the
*setup header* at offset 0x1f1) followed by the protected-mode kernel.  The loader:

- copies the protected-mode kernel to ``code32_start`` (1 MiB);
- builds the *zero page* (``struct boot_params``) at :data:`BOOT_PARAMS_ADDR`: the setup
  header copied from the image with the loader's fields filled in (``type_of_loader``,
  ``cmd_line_ptr``, ``ramdisk_image``/``ramdisk_size``, ``vid_mode``), and the e820 map;
- puts the command line at :data:`CMDLINE_ADDR` and the initrd as high in RAM as
  ``initrd_addr_max`` allows, page-aligned, as QEMU does;
- enters at the 64-bit entry point (load address + 0x200, protocol 2.12+ with
  ``XLF_KERNEL_64``) or at the 32-bit one (``code32_start``), with RSI/ESI pointing at the
  zero page.  The CPU state each entry needs is :mod:`kvmpy.vmm.cpu_setup`'s.

Every problem with the file is a :class:`~kvmpy.vmm.loader.LoadError` naming it.
"""

import struct

from kvmpy.vmm.layout import CMDLINE_ADDR, e820_map
from kvmpy.vmm.loader import LoadError, LoadedImage, _open, _place, _read, place_initrd

SETUP_HEADER_OFFSET = 0x1F1
BOOT_FLAG = 0xAA55
HDRS_MAGIC = b"HdrS"
SECTOR = 512
DEFAULT_SETUP_SECTS = 4          # setup_sects == 0 means 4 (boot.rst)
MIN_VERSION = 0x0206             # cmdline_size, and the 32-bit entry with boot_params
VERSION_64BIT_ENTRY = 0x020C     # xloadflags
LOADED_HIGH = 0x01               # loadflags: the protected-mode kernel goes to 1 MiB
XLF_KERNEL_64 = 0x01             # xloadflags: a 64-bit entry at load address + 0x200
ENTRY_64_OFFSET = 0x200
TYPE_OF_LOADER_UNDEFINED = 0xFF
VID_MODE_NORMAL = 0xFFFF
INITRD_ADDR_MAX_DEFAULT = 0x37FFFFFF     # before protocol 2.03

BOOT_PARAMS_ADDR = 0x7000        # the zero page (Firecracker's address)
BOOT_PARAMS_SIZE = 0x1000

# offsets in struct boot_params (arch/x86/include/uapi/asm/bootparam.h)
BP_E820_ENTRIES = 0x1E8
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES_ZEROPAGE = 128

# struct setup_header fields: name -> (offset in the image / zero page, struct format)
HEADER_FIELDS = {
    "setup_sects": (0x1F1, "B"), "boot_flag": (0x1FE, "H"), "header": (0x202, "4s"),
    "version": (0x206, "H"), "type_of_loader": (0x210, "B"), "loadflags": (0x211, "B"),
    "code32_start": (0x214, "I"), "ramdisk_image": (0x218, "I"), "ramdisk_size": (0x21C, "I"),
    "vid_mode": (0x1FA, "H"), "cmd_line_ptr": (0x228, "I"), "initrd_addr_max": (0x22C, "I"),
    "xloadflags": (0x236, "H"), "cmdline_size": (0x238, "I"), "init_size": (0x260, "I"),
}
SETUP_HEADER_END = 0x268         # the header copied into the zero page (through init_size)


def _get(data, name):
    off, fmt = HEADER_FIELDS[name]
    return struct.unpack_from("<" + fmt, data, off)[0]


def _put(buf, name, value):
    off, fmt = HEADER_FIELDS[name]
    struct.pack_into("<" + fmt, buf, off, value)


def is_bzimage(data: bytes) -> bool:
    """The image has a boot-protocol setup header (the boot flag and "HdrS")."""
    return (len(data) >= SETUP_HEADER_END and _get(data, "boot_flag") == BOOT_FLAG
            and _get(data, "header") == HDRS_MAGIC)


def is_bzimage_file(path) -> bool:
    """True if the file starts like a bzImage (False if it cannot be read)."""
    try:
        with _open(path) as f:
            return is_bzimage(f.read(SETUP_HEADER_END) or b"")
    except OSError:
        return False


def _checked_header(path, data, entry_bits):
    if not is_bzimage(data):
        raise LoadError(f"{path}: not a Linux bzImage (no boot protocol header)")
    version = _get(data, "version")
    if version < MIN_VERSION:
        raise LoadError(f"{path}: boot protocol {version >> 8}.{version & 0xFF:02d} is too old "
                        f"(2.06 or later is needed)")
    if not _get(data, "loadflags") & LOADED_HIGH:
        raise LoadError(f"{path}: a zImage (loaded low) is not supported, only bzImage")
    if entry_bits == 64 and (version < VERSION_64BIT_ENTRY or not _get(data, "xloadflags") & XLF_KERNEL_64):
        raise LoadError(f"{path}: the kernel has no 64-bit entry point (XLF_KERNEL_64)")
    setup_sects = _get(data, "setup_sects") or DEFAULT_SETUP_SECTS
    kernel_offset = (setup_sects + 1) * SECTOR
    if kernel_offset >= len(data):
        raise LoadError(f"{path}: truncated: no protected-mode kernel after {setup_sects} setup sectors")
    return version, kernel_offset


def load_bzimage(memory, path, cmdline="", initrd=None, entry_bits=64):
    """Load the bzImage at ``path`` with ``cmdline`` and the ``initrd`` file (or None);
    return the :class:`LoadedImage` (kind "bzimage", with ``boot_params`` set)."""
    data = _read(path, memory.size)
    version, kernel_offset = _checked_header(path, data, entry_bits)
    load_addr = _get(data, "code32_start")
    kernel = data[kernel_offset:]
    kernel_end = load_addr + max(len(kernel), _get(data, "init_size"))
    if not memory.contains(load_addr, kernel_end - load_addr):
        raise LoadError(f"{path}: the kernel needs guest memory up to {kernel_end:#x} "
                        f"({memory.size >> 20} MiB given)")
    _place(memory, path, load_addr, kernel)

    raw = cmdline.encode() + b"\0"
    if len(raw) - 1 > _get(data, "cmdline_size"):
        raise LoadError(f"{path}: the command line is {len(raw) - 1} bytes; the kernel takes at "
                        f"most {_get(data, 'cmdline_size')}")
    _place(memory, path, CMDLINE_ADDR, raw)

    zero_page = bytearray(BOOT_PARAMS_SIZE)
    zero_page[SETUP_HEADER_OFFSET:SETUP_HEADER_END] = data[SETUP_HEADER_OFFSET:SETUP_HEADER_END]
    _put(zero_page, "type_of_loader", TYPE_OF_LOADER_UNDEFINED)
    _put(zero_page, "vid_mode", VID_MODE_NORMAL)
    _put(zero_page, "cmd_line_ptr", CMDLINE_ADDR)
    if initrd is not None:
        addr_max = _get(data, "initrd_addr_max") if version >= 0x0203 else INITRD_ADDR_MAX_DEFAULT
        addr, size = place_initrd(memory, path, initrd, kernel_end, addr_max + 1)
        _put(zero_page, "ramdisk_image", addr)
        _put(zero_page, "ramdisk_size", size)
    e820 = e820_map(memory.base + memory.size)[:E820_MAX_ENTRIES_ZEROPAGE]
    zero_page[BP_E820_ENTRIES] = len(e820)
    for i, (addr, size, kind) in enumerate(e820):
        struct.pack_into("<QQI", zero_page, BP_E820_TABLE + 20 * i, addr, size, kind)
    _place(memory, path, BOOT_PARAMS_ADDR, bytes(zero_page))

    entry = load_addr + ENTRY_64_OFFSET if entry_bits == 64 else load_addr
    return LoadedImage("bzimage", entry, entry_bits, [(load_addr, kernel_end - load_addr)],
                       boot_params=BOOT_PARAMS_ADDR)
