"""Guest image loaders: flat binaries (boot-sector style) and ELF executables.

Each loader copies the image into guest RAM and returns a :class:`LoadedImage` saying where
execution starts. Every problem with the file surfaces as :class:`LoadError` with a message
fit for the user, never as a stray exception from the ELF parser or the file system.
"""

import contextlib
import io
import os
import stat
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

FLAT_LOAD_ADDR = 0x7C00
PAGE = 0x1000
ELF_MAGIC = b"\x7fELF"
X86_MACHINES = {"EM_386": 32, "EM_X86_64": 64}


class LoadError(Exception):
    """The image cannot be loaded; the message says why."""


@dataclass
class LoadedImage:
    """Where the image went: ``kind`` is "flat", "elf", "bzimage", "multiboot" or "pvh";
    ``bits`` is 16, 32 or 64; ``boot_params`` is the boot information the loader built: a
    bzImage's Linux zero page (RSI at entry), a multiboot kernel's information structure
    (EBX), a PVH kernel's ``hvm_start_info`` (EBX)."""

    kind: str
    entry: int
    bits: int
    segments: list  # (guest-physical address, memory size) of each loaded piece
    boot_params: int = 0


def _open(path):
    """The image file, opened non-blocking, so a FIFO with no writer cannot hang the open."""
    return open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")


def _read(path, limit):
    """The file's bytes, at most ``limit`` of them (the guest RAM): a larger file, or an
    endless one such as /dev/zero, is an error rather than a read without bound."""
    try:
        with _open(path) as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise LoadError(f"{path}: is a directory") from None
    except OSError as e:
        raise LoadError(f"{path}: {e.strerror}") from None
    if data is None:
        raise LoadError(f"{path}: no data to read (a pipe with nothing in it)")
    if not data:
        raise LoadError(f"{path}: file is empty")
    if len(data) > limit:
        raise LoadError(f"{path}: larger than the guest memory ({limit // (1 << 20)} MiB)")
    return data


def _check_fits(memory, path, gpa, size):
    if not memory.contains(gpa, size):
        raise LoadError(
            f"{path}: {size} bytes at {gpa:#x} do not fit in guest memory "
            f"({memory.size // (1 << 20)} MiB at {memory.base:#x})")


def _place(memory, path, gpa, data, memsz=None):
    """Copy ``data`` to ``gpa`` and zero up to ``memsz``, after checking it fits."""
    memsz = len(data) if memsz is None else memsz
    _check_fits(memory, path, gpa, memsz)
    memory.write(gpa, data)
    if memsz > len(data):
        memory.fill(gpa + len(data), memsz - len(data))


def place_initrd(memory, kernel_path, initrd_path, kernel_end, top=None):
    """Read the initrd file and copy it as high as it goes, page-aligned, below ``top``
    (default: the end of RAM) and above ``kernel_end``, where QEMU puts it: the kernel's
    early allocations grow up from its end.  Returns (address, size)."""
    initrd = _read(initrd_path, memory.size)
    end = memory.base + memory.size
    addr = (min(end, end if top is None else top) - len(initrd)) & ~(PAGE - 1)
    if addr < kernel_end:
        raise LoadError(f"{initrd_path}: the initrd ({len(initrd)} bytes) does not fit in guest "
                        f"memory above the kernel of {kernel_path}")
    _place(memory, initrd_path, addr, initrd)
    return addr, len(initrd)


def is_elf(path):
    """True if the file starts with the ELF magic (False if it cannot be read)."""
    try:
        with _open(path) as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def load_flat(memory, path, addr=FLAT_LOAD_ADDR):
    """Copy a flat binary to ``addr``; it starts there in 16-bit real mode."""
    data = _read(path, memory.size)
    _place(memory, path, addr, data)
    return LoadedImage("flat", addr, 16, [(addr, len(data))])


@contextlib.contextmanager
def open_elf(path, limit):
    """The ELF file at ``path`` as an ELFFile, parsed from the file itself when it is a
    regular one (a vmlinux with its debug information is larger than the guest RAM; only
    its loadable segments must fit), from at most ``limit`` bytes read otherwise.  Parser
    failures inside the block become :class:`LoadError` naming the file."""
    try:
        f = _open(path)
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except OSError as e:
        raise LoadError(f"{path}: {e.strerror}") from None
    with f:
        if stat.S_ISREG(os.fstat(f.fileno()).st_mode) and os.fstat(f.fileno()).st_size:
            stream = f
        else:
            stream = io.BytesIO(_read(path, limit))
        if stream.read(4) != ELF_MAGIC:
            raise LoadError(f"{path}: not an ELF file")
        stream.seek(0)
        try:
            yield ELFFile(stream)
        except LoadError:
            raise
        except ELFError as e:
            raise LoadError(f"{path}: malformed ELF ({e})") from None
        except Exception as e:  # pyelftools reports truncation as struct and stream errors
            raise LoadError(f"{path}: malformed ELF ({type(e).__name__}: {e})") from None


def place_elf(memory, path, elf):
    """Copy the PT_LOAD segments of an x86 executable ``elf`` to their physical addresses;
    return (bits, entry, [(address, memory size)])."""
    bits = X86_MACHINES.get(elf["e_machine"])
    if bits is None:
        raise LoadError(f"{path}: ELF for {elf['e_machine']}, not x86")
    if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
        raise LoadError(f"{path}: ELF type {elf['e_type']} is not executable")
    segments = []
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
            continue
        if seg["p_filesz"] > seg["p_memsz"]:
            raise LoadError(f"{path}: segment file size exceeds its memory size")
        _check_fits(memory, path, seg["p_paddr"], seg["p_memsz"])   # before reading it
        _place(memory, path, seg["p_paddr"], seg.data(), seg["p_memsz"])
        segments.append((seg["p_paddr"], seg["p_memsz"]))
    if not segments:
        raise LoadError(f"{path}: ELF has no loadable segments")
    return bits, elf["e_entry"], segments


def load_elf(memory, path):
    """Load the PT_LOAD segments of a 32- or 64-bit x86 ELF at their physical addresses."""
    with open_elf(path, memory.size) as elf:
        bits, entry, segments = place_elf(memory, path, elf)
    return LoadedImage("elf", entry, bits, segments)


def load(memory, path, fmt="auto", flat_addr=FLAT_LOAD_ADDR):
    """Load ``path`` as ``fmt`` ("auto", "flat" or "elf"); auto picks ELF by its magic."""
    path = os.fspath(path)
    if fmt == "auto":
        fmt = "elf" if is_elf(path) else "flat"
    if fmt == "elf":
        return load_elf(memory, path)
    if fmt == "flat":
        return load_flat(memory, path, flat_addr)
    raise LoadError(f"unknown image format {fmt!r}")
