"""The multiboot loader (kvmpy/vmm/multiboot.py) and fw_cfg (kvmpy/vmm/devices/fw_cfg.py)
with the repo's multiboot guest (kvmpy/guests/multiboot.S), which prints what the
information structure and fw_cfg tell it and checks that they agree.

Through ``kvmpy run -kernel -append -initrd`` on kvmpy under both vendor modules and both
MMU modes (a process loads one vendor, so each run is a process of its own) and on the
host's /dev/kvm: the same transcript each time.  The guest as an ELF (the path
kvm-unit-tests' .flat files take), the information structure's fields, and the errors.
"""

import struct

import pytest

from kvmpy.api import GuestMemory
from kvmpy.guests import image_path
from kvmpy.vmm import layout, multiboot
from kvmpy.vmm.loader import LoadError
from kvmpy.vmm.machine import Machine
from tests.support.cli import kvmpy_run, run_main
from tests.support.elfgen import EM_X86_64, make_elf

GUEST = str(image_path("multiboot"))
CMDLINE = "console=ttyS0 kvmpy=42"
MODULE = b"hello-module"
MIB = 1 << 20
LOAD = 0x100000                  # where the guest's a.out-kludge header loads it


def expected(kernel, module_path, ram_mib, cpus=1):
    """The guest's transcript for ``ram_mib`` MiB of RAM and one module."""
    mmap = "".join(f"mmap {base:08x}+{size:08x} {kind:08x}\n"
                   for base, size, kind in layout.e820_map(ram_mib * MIB))
    return (f"multiboot flags=0000024f mem_lower=0000027f mem_upper={(ram_mib - 1) * 1024:08x}\n"
            f"cmdline={kernel} {CMDLINE}\n"
            f"mods=00000001 module={MODULE.decode()} args={module_path} arg=1\n"
            f"{mmap}"
            f"fw_cfg signature=QEMU cpus={cpus:08x} ram={ram_mib * MIB:016x}\n"
            f"etc/e820 select=00000020 size={20 * len(layout.e820_map(ram_mib * MIB)):08x} "
            f"matches the mmap\n")


def _module(tmp_path):
    path = tmp_path / "module.bin"
    path.write_bytes(MODULE)
    return str(path)


def _boot(tmp_path, *options):
    """``kvmpy run OPTIONS`` of the guest with a module: (status, stdout, stderr, module)."""
    module = _module(tmp_path)
    return (*kvmpy_run(*options, "-kernel", GUEST, "-append", CMDLINE,
                       "-initrd", f"{module} arg=1"), module)


@pytest.mark.parametrize("vendor", ["vmx", "svm"])
@pytest.mark.parametrize("mmu", ["tdp", "shadow"])
def test_multiboot_boots_on_kvmpy(tmp_path, vendor, mmu):
    """No -m: -kernel gets QEMU's 128 MiB.  isa-debug-exit 0 is status 1."""
    status, out, err, module = _boot(tmp_path, "--vendor", vendor, "--mmu", mmu)
    assert (status, out) == (1, expected(GUEST, module, 128)), err


@pytest.mark.host
def test_multiboot_boots_on_the_host(tmp_path):
    status, out, err, module = _boot(tmp_path, "--accel", "host", "-m", "32M")
    assert (status, out) == (1, expected(GUEST, module, 32)), err


def _as_elf(tmp_path):
    """The guest as a 32-bit ELF whose multiboot header has no a.out kludge: the loader
    must take the segment from the ELF program header, as for kvm-unit-tests."""
    data = bytearray(image_path("multiboot").read_bytes())
    offset, flags = multiboot.find_header(data)
    flags &= ~multiboot.FLAG_AOUT_KLUDGE
    struct.pack_into("<II", data, offset + 4, flags, -(multiboot.HEADER_MAGIC + flags) & 0xFFFFFFFF)
    entry = struct.unpack_from("<I", data, offset + 28)[0]
    bss_end = struct.unpack_from("<I", data, offset + 24)[0]
    path = tmp_path / "multiboot.elf"
    path.write_bytes(make_elf(bytes(data), LOAD, memsz=bss_end - LOAD, entry=entry))
    return str(path)


def test_multiboot_elf_through_the_machine(tmp_path):
    kernel, module = _as_elf(tmp_path), _module(tmp_path)
    out = bytearray()
    with Machine(kernel, memory_mib=16, cmdline=CMDLINE, initrd=f"{module} arg=1",
                 serial_sink=out.extend) as machine:
        assert machine.image.kind == "multiboot"
        result = machine.run(timeout=60)
    assert (result.reason, result.status) == ("debug-exit", 1), out.decode()
    assert out.decode() == expected(kernel, module, 16)


def _info(memory, field):
    return memory.read_int(multiboot.INFO_ADDR + multiboot.INFO_FIELDS[field], 4)


def _string(memory, addr):
    data = memory.read(addr, 256)
    return data[:data.index(b"\0")].decode()


def test_information_structure(tmp_path):
    """Two modules (QEMU's comma list, ",," for a comma in a name), page-aligned after the
    kernel and its BSS, with their command lines; the memory sizes and the mmap."""
    first, second = tmp_path / "a,b.img", tmp_path / "c.img"
    first.write_bytes(b"A" * 5000)
    second.write_bytes(b"second")
    with GuestMemory(8 * MIB) as memory:
        image = multiboot.load_multiboot(memory, GUEST, "x=1",
                                         f"{str(first).replace(',', ',,')} one two,{second}")
        assert (image.kind, image.bits, image.boot_params) == ("multiboot", 32, 0x9500)
        assert image.entry == LOAD + 0x24
        assert _info(memory, "flags") == 0x24F
        assert (_info(memory, "mem_lower"), _info(memory, "mem_upper")) == (639, 7 * 1024)
        assert _info(memory, "boot_device") == 0x8000FFFF
        assert _string(memory, _info(memory, "cmdline")) == f"{GUEST} x=1"
        assert _string(memory, _info(memory, "boot_loader_name")) == "qemu"
        assert _info(memory, "mods_count") == 2
        mods = [struct.unpack("<IIII", memory.read(_info(memory, "mods_addr") + 16 * i, 16))
                for i in range(2)]
        kernel_end = max(start + size for start, size in image.segments[:1])
        assert _info(memory, "mods_addr") == (kernel_end + 0xFFF) & ~0xFFF
        (s1, e1, c1, _), (s2, e2, c2, _) = mods
        assert s1 % 0x1000 == 0 and s2 == (e1 + 0xFFF) & ~0xFFF and s1 > kernel_end
        assert memory.read(s1, e1 - s1) == b"A" * 5000 and memory.read(s2, e2 - s2) == b"second"
        assert (_string(memory, c1), _string(memory, c2)) == (f"{first} one two", str(second))
        mmap_addr, length = _info(memory, "mmap_addr"), _info(memory, "mmap_length")
        entries = [struct.unpack_from("<IQQI", memory.read(mmap_addr + 24 * i, 24))
                   for i in range(length // 24)]
        assert entries == [(20, *e) for e in layout.e820_map(8 * MIB)]
        assert entries[-1] == (20, 0x100000, 7 * MIB, layout.E820_RAM)


def test_no_module_and_empty_cmdline():
    with GuestMemory(4 * MIB) as memory:
        multiboot.load_multiboot(memory, GUEST)
        assert (_info(memory, "mods_count"), _info(memory, "flags") & 8) == (0, 8)
        assert _string(memory, _info(memory, "cmdline")) == f"{GUEST} "    # QEMU's too


def _header(flags, *fields, offset=0, checksum=None):
    checksum = -(multiboot.HEADER_MAGIC + flags) & 0xFFFFFFFF if checksum is None else checksum
    return bytes(offset) + struct.pack("<III", multiboot.HEADER_MAGIC, flags, checksum) + \
        struct.pack(f"<{len(fields)}I", *fields)


def test_find_header():
    assert multiboot.find_header(_header(0, offset=8)) == (8, 0)
    assert multiboot.find_header(_header(0, offset=6)) is None               # not 4-aligned
    assert multiboot.find_header(_header(0, checksum=1)) is None
    assert multiboot.find_header(_header(0, offset=8192)) is None            # past 8 KiB
    assert multiboot.find_header(_header(0, offset=8180)) == (8180, 0)
    assert multiboot.find_header(_header(0, checksum=1) + _header(3)) == (12, 3)


@pytest.mark.parametrize("data,message", [
    (make_elf(_header(0), 0x200000, bits=64, machine=EM_X86_64), "must be a 32-bit ELF"),
    (_header(0), "not an ELF file"),
    (_header(1 << 16, 0x1000, 0x2000, 0, 0, 0x2000), "header_addr 0x1000 does not fit"),
    (_header(1 << 16, 0x200000, 0x200000, 0x300000, 0, 0x200000), "load_end_addr 0x300000"),
    (_header(1 << 16, 0x200000, 0x200000, 0, 0x100000, 0x200000), "bss_end_addr 0x100000"),
    (_header(1 << 16, 0x200000, 0x200000, 0, 0x2000000, 0x200000), "do not fit in guest memory"),
    (b"\x90" * 64, "no multiboot header"),
])
def test_bad_kernels_name_the_file(tmp_path, data, message):
    path = tmp_path / "k"
    path.write_bytes(data)
    with GuestMemory(16 * MIB) as memory, pytest.raises(LoadError) as e:
        multiboot.load_multiboot(memory, str(path))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_a_kernel_over_the_information_keeps_its_bytes(tmp_path):
    """QEMU's option ROM writes the information before the kernel: a kernel loaded over it
    (kvm-unit-tests' realmode.flat: 0x8000..0xd730) keeps its bytes; what it leaves free
    still gets the information."""
    body = bytes(range(256)) * 0x10
    path = tmp_path / "low"
    path.write_bytes(_header(1 << 16, 0x8000, 0x8000, 0, 0x9100, 0x8000) + body)
    with GuestMemory(16 * MIB) as memory:
        image = multiboot.load_multiboot(memory, str(path))
        assert memory.read(0x8000 + 32, len(body)) == body              # up to 0x9020
        assert memory.read(0x9020, 0xE0) == bytes(0xE0)                 # its BSS to 0x9100
        assert _info(memory, "mem_lower") == 639 and image.boot_params == 0x9500
        assert _info(memory, "mods_addr") == 0xA000


def test_missing_module_names_it(tmp_path):
    with GuestMemory(16 * MIB) as memory, pytest.raises(LoadError) as e:
        multiboot.load_multiboot(memory, GUEST, "", f"{tmp_path}/absent arg")
    assert str(e.value) == f"{tmp_path}/absent: no such file"


def test_auto_detection(tmp_path):
    assert multiboot.is_multiboot_file(GUEST)
    assert not multiboot.is_multiboot_file(str(image_path("demo")))
    assert not multiboot.is_multiboot_file(str(tmp_path / "absent"))
    with Machine(GUEST, memory_mib=16, serial_sink=lambda data: None) as machine:
        assert machine.image.kind == "multiboot"


def test_cli_missing_kernel(capsys, tmp_path):
    status, out, err = run_main(capsys, "run", "-kernel", f"{tmp_path}/absent.flat")
    assert status == 2 and out == ""
    assert err == f"kvmpy: error: could not load kernel '{tmp_path}/absent.flat': no such file\n"


def test_cli_neither_bzimage_nor_multiboot(capsys, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x90" * 100)
    for option in ("-append", "-initrd"):
        status, out, err = run_main(capsys, "run", "-kernel", str(junk), option, "x")
        assert status == 2 and out == "" and err.count("\n") == 1
        assert err.startswith(f"kvmpy: error: {option}: {junk} is neither a Linux bzImage "
                              f"nor a PVH or multiboot kernel")
    status, out, err = run_main(capsys, "run", "-kernel", str(junk), "--format", "multiboot")
    assert (status, out) == (2, "")
    assert err == (f"kvmpy: error: could not load kernel '{junk}': no multiboot header in the "
                   f"first 8192 bytes\n")


def test_cli_missing_module(capsys, tmp_path):
    status, _, err = run_main(capsys, "run", "-kernel", GUEST, "-initrd", f"{tmp_path}/env")
    assert status == 2 and err.count("\n") == 1 and f"{tmp_path}/env: no such file" in err
