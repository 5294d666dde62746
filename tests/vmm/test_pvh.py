"""The PVH loader (kvmpy/vmm/pvh.py) with the repo's PVH guest (kvmpy/guests/pvh.S), an ELF
with the Xen PHYS32_ENTRY note that prints what ``struct hvm_start_info`` tells it.

Through ``kvmpy run -kernel -append -initrd`` on kvmpy under both vendor modules and both
MMU modes (one process each: a process loads one vendor) and on the host's /dev/kvm: the
same line each time.  Then the start info in memory, the entry state, and the errors that
name the file.
"""

import struct

import pytest

from kvmpy.api import GuestMemory
from kvmpy.guests import image_path
from kvmpy.vmm import layout, pvh
from kvmpy.vmm.loader import LoadError
from kvmpy.vmm.machine import Machine
from tests.support.cli import RUN_BACKENDS, kvmpy_run, run_main

GUEST = str(image_path("pvh"))
CMDLINE = "console=ttyS0 kvmpy=42"
INITRD = b"hello-initrd"
MIB = 1 << 20
# 128 MiB (-kernel's default): the last e820 entry is the RAM from 1 MiB, type 1
EXPECTED = (f"pvh magic=336ec578 version=1 flags=0 cmdline={CMDLINE} modules=1 "
            f"module0={INITRD.decode()} memmap=4 last=7f00000:1 rsdp=RSD PTR  cr4=0\n")
ENTRY_NOTE = struct.pack("<III", 4, 8, pvh.XEN_ELFNOTE_PHYS32_ENTRY)


@pytest.fixture
def initrd(tmp_path):
    (tmp_path / "initrd.img").write_bytes(INITRD)
    return str(tmp_path / "initrd.img")


@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_pvh_boots(initrd, backend):
    status, out, err = kvmpy_run(*backend, "-kernel", GUEST, "-append", CMDLINE, "-initrd", initrd)
    assert (status, out) == (1, EXPECTED), err        # isa-debug-exit 0: status (0 << 1) | 1


def test_as_a_plain_elf_it_starts_at_e_entry():
    """--format elf ignores the note: the guest's ELF entry says it was the wrong one."""
    status, out, _ = kvmpy_run("--format", "elf", "-kernel", GUEST)
    assert (status, out) == (3, "wrong entry\n")


def test_start_info(initrd):
    with GuestMemory(16 * MIB) as memory:
        image = pvh.load_pvh(memory, GUEST, CMDLINE, initrd)
        assert (image.kind, image.bits) == ("pvh", 32)
        data = image_path("pvh").read_bytes()
        assert image.entry == struct.unpack_from("<Q", data, data.index(ENTRY_NOTE) + 16)[0]
        assert image.segments == [(0x100000, len(data))]          # at p_paddr, not p_vaddr
        (magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries,
         reserved) = pvh.START_INFO.unpack(memory.read(image.boot_params, pvh.START_INFO.size))
        assert (magic, version, flags, nr_modules, reserved) == (0x336EC578, 1, 0, 1, 0)
        assert memory.read(cmdline, len(CMDLINE) + 1) == CMDLINE.encode() + b"\0"
        assert rsdp == layout.ACPI_RSDP            # the guest run finds "RSD PTR " there
        paddr, size, mod_cmdline, _ = struct.unpack("<QQQQ", memory.read(modlist, 32))
        assert (paddr, size, mod_cmdline) == ((16 * MIB - len(INITRD)) & ~0xFFF, len(INITRD), 0)
        assert memory.read(paddr, size) == INITRD
        table = [struct.unpack("<QQII", memory.read(memmap + 24 * i, 24)) for i in range(entries)]
        assert table == [(a, s, t, 0) for a, s, t in layout.e820_map(16 * MIB)]


def test_no_initrd_no_modules():
    with GuestMemory(16 * MIB) as memory:
        image = pvh.load_pvh(memory, GUEST)
        fields = pvh.START_INFO.unpack(memory.read(image.boot_params, pvh.START_INFO.size))
        assert fields[3:5] == (0, 0) and memory.read(fields[5], 1) == b"\0"


def test_entry_state():
    """The ABI's state: protected mode, paging off, CR4 0, flat CS/DS, a 32-bit TSS in TR."""
    with Machine(GUEST, memory_mib=16, cmdline="x", serial_sink=lambda data: None) as machine:
        sregs, regs = machine.vcpu.get_sregs(), machine.vcpu.get_regs()
        assert machine.image.kind == "pvh"
        assert (sregs.cr0 & 0x8000001F, sregs.cr4, sregs.efer) == (0x11, 0, 0)
        for seg, type_ in ((sregs.cs, 0xB), (sregs.ds, 0x3), (sregs.es, 0x3), (sregs.ss, 0x3)):
            assert (seg.base, seg.limit, seg.db, seg.s, seg.type & 0xB) == (0, 0xFFFFFFFF, 1, 1, type_)
        assert (sregs.tr.base, sregs.tr.limit, sregs.tr.type, sregs.tr.present) == (0, 0x67, 0xB, 1)
        assert (regs.rip, regs.rbx, regs.rflags & 0x20300) == (machine.image.entry,
                                                               pvh.START_INFO_ADDR, 0)


def test_large_file_loads_only_its_segments(tmp_path):
    """A vmlinux is mostly debug information: the file may be larger than the RAM."""
    path = tmp_path / "vmlinux"
    path.write_bytes(image_path("pvh").read_bytes() + bytes(24 * MIB))
    with GuestMemory(16 * MIB) as memory:
        assert pvh.load_pvh(memory, str(path)).kind == "pvh"


def _edited(tmp_path, edit):
    data = bytearray(image_path("pvh").read_bytes())
    edit(data, data.index(ENTRY_NOTE))
    path = tmp_path / "vmlinux"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("edit,message", [
    (lambda d, n: struct.pack_into("<I", d, n + 8, 17), "no PVH entry point (the ELF has no Xen "
                                                        "XEN_ELFNOTE_PHYS32_ENTRY note)"),
    (lambda d, n: d.__setitem__(slice(n + 12, n + 15), b"Gnu"), "no PVH entry point"),
    (lambda d, n: struct.pack_into("<I", d, n + 4, 2), "the Xen PHYS32_ENTRY note has 2 bytes"),
    (lambda d, n: struct.pack_into("<I", d, n + 4, 64), "malformed ELF note segment"),
    (lambda d, n: struct.pack_into("<Q", d, n + 16, 1 << 32), "above 4 GiB"),
    (lambda d, n: struct.pack_into("<Q", d, 64 + 24, 0x6000), "overlaps the boot information"),
    (lambda d, n: struct.pack_into("<H", d, 18, 40), "not x86"),
])
def test_bad_kernels_name_the_file(tmp_path, edit, message):
    path = _edited(tmp_path, edit)
    with GuestMemory(16 * MIB) as memory, pytest.raises(LoadError) as e:
        pvh.load_pvh(memory, path, CMDLINE)
    assert str(e.value).startswith(path + ": ") and message in str(e.value)


def test_pvh_asked_of_an_elf_without_the_note(capsys, tmp_path):
    path = _edited(tmp_path, lambda d, n: struct.pack_into("<I", d, n + 8, 17))
    status, _, err = run_main(capsys, "run", "--format", "pvh", path)
    assert status == 2 and f"{path}: no PVH entry point" in err
    status, _, err = run_main(capsys, "run", "--format", "pvh", str(image_path("bzimage")))
    assert status == 2 and "not an ELF file" in err


def test_without_the_note_auto_is_a_plain_elf(capsys, tmp_path):
    """No note: not PVH, so -append is refused as for any image without a boot protocol."""
    path = _edited(tmp_path, lambda d, n: struct.pack_into("<I", d, n + 8, 17))
    assert not pvh.is_pvh_file(path) and pvh.is_pvh_file(GUEST)
    status, _, err = run_main(capsys, "run", path, "-append", "x")
    assert status == 2 and "neither a Linux bzImage nor a PVH or multiboot kernel" in err
