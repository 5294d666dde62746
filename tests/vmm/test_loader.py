"""Image loaders: flat binaries and ELF executables into guest memory, and their errors."""

import pytest

from tests.support.elfgen import make_elf
from kvmpy.api import GuestMemory
from kvmpy.vmm.loader import LoadError, load

MIB = 1 << 20


@pytest.fixture
def memory():
    with GuestMemory(2 * MIB) as mem:
        yield mem


def test_flat_binary_at_boot_sector_address(memory, tmp_path):
    path = tmp_path / "boot.bin"
    path.write_bytes(b"\xfa\xf4")
    image = load(memory, path)
    assert (image.kind, image.entry, image.bits) == ("flat", 0x7C00, 16)
    assert memory.read(0x7C00, 3) == b"\xfa\xf4\x00"


def test_flat_binary_at_chosen_address(memory, tmp_path):
    path = tmp_path / "k.bin"
    path.write_bytes(b"abc")
    assert load(memory, path, "flat", flat_addr=0x1000).entry == 0x1000
    assert memory.read(0x1000, 3) == b"abc"


@pytest.mark.parametrize("bits", [32, 64])
def test_elf_segments_loaded_and_bss_zeroed(memory, tmp_path, bits):
    memory.fill(0x100000, 64, 0xEE)
    path = tmp_path / "k.elf"
    path.write_bytes(make_elf(b"\x90\x90\xf4", 0x100000, bits, memsz=32, entry=0x100001))
    image = load(memory, path)  # auto-detected by its magic
    assert (image.kind, image.entry, image.bits) == ("elf", 0x100001, bits)
    assert image.segments == [(0x100000, 32)]
    assert memory.read(0x100000, 34) == b"\x90\x90\xf4" + bytes(29) + b"\xee\xee"


def test_missing_file(memory, tmp_path):
    with pytest.raises(LoadError, match="no such file"):
        load(memory, tmp_path / "nope.bin")


def test_empty_file(memory, tmp_path):
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(LoadError, match="empty"):
        load(memory, tmp_path / "e.bin")


def test_directory(memory, tmp_path):
    with pytest.raises(LoadError, match="directory"):
        load(memory, tmp_path)


def test_flat_too_big_for_memory(memory, tmp_path):
    (tmp_path / "big.bin").write_bytes(bytes(2 * MIB))
    with pytest.raises(LoadError, match="do not fit"):
        load(memory, tmp_path / "big.bin")


def test_elf_segment_outside_memory(memory, tmp_path):
    (tmp_path / "hi.elf").write_bytes(make_elf(b"\xf4", 0x400000))
    with pytest.raises(LoadError, match="do not fit"):
        load(memory, tmp_path / "hi.elf")


def test_not_elf_when_elf_asked(memory, tmp_path):
    (tmp_path / "flat.bin").write_bytes(b"\xf4" * 10)
    with pytest.raises(LoadError, match="not an ELF"):
        load(memory, tmp_path / "flat.bin", "elf")


def test_truncated_elf(memory, tmp_path):
    (tmp_path / "t.elf").write_bytes(make_elf(b"\xf4", 0x1000)[:30])
    with pytest.raises(LoadError, match="malformed ELF"):
        load(memory, tmp_path / "t.elf")


def test_elf_for_another_machine(memory, tmp_path):
    (tmp_path / "arm.elf").write_bytes(make_elf(b"\0\0\0\0", 0x1000, machine=40))
    with pytest.raises(LoadError, match="not x86"):
        load(memory, tmp_path / "arm.elf")


def test_elf_relocatable_object_refused(memory, tmp_path):
    (tmp_path / "o.elf").write_bytes(make_elf(b"\xf4", 0x1000, e_type=1))
    with pytest.raises(LoadError, match="not executable"):
        load(memory, tmp_path / "o.elf")


def test_unknown_format(memory, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\xf4")
    with pytest.raises(LoadError, match="unknown image format"):
        load(memory, tmp_path / "x.bin", "pe")
