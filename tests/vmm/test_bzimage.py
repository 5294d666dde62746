"""The Linux boot protocol loader (kvmpy/vmm/bzimage.py) with the repo's bzImage-format guest
(kvmpy/guests/bzimage.S), which prints what the zero page tells it.

Through ``kvmpy run -kernel -append -initrd`` on kvmpy under both vendor modules and both
MMU modes (a process loads one vendor, so each run is a process of its own) and on the
host's /dev/kvm: the same line each time.  Then the zero page's fields, the 32-bit entry,
and the errors that name the file.
"""

import struct

import pytest

from kvmpy.api import GuestMemory, Kvm
from kvmpy.guests import image_path
from kvmpy.vmm import bzimage, layout
from kvmpy.vmm.cpu_setup import setup_linux_boot
from kvmpy.vmm.loader import LoadError
from tests.support.cli import kvmpy_run, run_main

GUEST = str(image_path("bzimage"))
CMDLINE = "console=ttyS0 kvmpy=42"
INITRD = b"hello-initrd"
EXPECTED = f"linux64 cmdline={CMDLINE} initrd={INITRD.decode()} e820=4\n"
MIB = 1 << 20


@pytest.fixture
def initrd(tmp_path):
    path = tmp_path / "initrd.img"
    path.write_bytes(INITRD)
    return str(path)


@pytest.mark.parametrize("vendor", ["vmx", "svm"])
@pytest.mark.parametrize("mmu", ["tdp", "shadow"])
def test_bzimage_boots_on_kvmpy(initrd, vendor, mmu):
    status, out, err = kvmpy_run("--vendor", vendor, "--mmu", mmu, "-kernel", GUEST, "-append", CMDLINE,
                                 "-initrd", initrd)
    assert (status, out) == (1, EXPECTED), err        # isa-debug-exit 0: status (0 << 1) | 1


@pytest.mark.host
def test_bzimage_boots_on_the_host(initrd):
    status, out, err = kvmpy_run("--accel", "host", "-kernel", GUEST, "-append", CMDLINE, "-initrd", initrd)
    assert (status, out) == (1, EXPECTED), err


def test_zero_page(initrd):
    with GuestMemory(16 * MIB) as memory:
        image = bzimage.load_bzimage(memory, GUEST, CMDLINE, initrd)
        zp = memory.read(image.boot_params, bzimage.BOOT_PARAMS_SIZE)
        assert (image.kind, image.bits, image.entry) == ("bzimage", 64, 0x100000 + bzimage.ENTRY_64_OFFSET)
        assert zp[0x210] == bzimage.TYPE_OF_LOADER_UNDEFINED
        assert zp[0x202:0x206] == b"HdrS"                           # the header, copied
        cmd_line_ptr, = struct.unpack_from("<I", zp, 0x228)
        assert memory.read(cmd_line_ptr, len(CMDLINE) + 1) == CMDLINE.encode() + b"\0"
        ramdisk_image, ramdisk_size = struct.unpack_from("<II", zp, 0x218)
        assert (ramdisk_image, ramdisk_size) == ((16 * MIB - len(INITRD)) & ~0xFFF, len(INITRD))
        assert memory.read(ramdisk_image, ramdisk_size) == INITRD
        e820 = [struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) for i in range(zp[0x1E8])]
        assert e820 == layout.e820_map(16 * MIB)
        assert e820[-1] == (0x100000, 15 * MIB, layout.E820_RAM)


def test_32_bit_entry(soft_kvm):
    """The 32-bit protocol: flat protected mode at code32_start, CS 0x10, DS 0x18, ESI."""
    with GuestMemory(16 * MIB) as memory:
        image = bzimage.load_bzimage(memory, GUEST, "entry=32", entry_bits=32)
        kvm = Kvm("soft")
        vm = kvm.create_vm()
        vm.set_user_memory_region(0, 0, memory.size, memory.host_addr)
        vcpu = vm.create_vcpu(0)
        vcpu.set_cpuid2(kvm.get_supported_cpuid())
        setup_linux_boot(vcpu, memory, image)
        sregs = vcpu.get_sregs()
        assert (sregs.cs.selector, sregs.ds.selector, sregs.cs.l, sregs.cr0 & 0x80000001) == (0x10, 0x18, 0, 1)
        out = bytearray()
        while True:
            exit_ = vcpu.run()
            if exit_.port == 0xF4:
                break
            out += exit_.data
        assert out.decode() == "linux32 cmdline=entry=32\n"


def _image(tmp_path, edit):
    data = bytearray(image_path("bzimage").read_bytes())
    edit(data)
    path = tmp_path / "k"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.__setitem__(slice(0x202, 0x206), b"XXXX"), "not a Linux bzImage"),
    (lambda d: struct.pack_into("<H", d, 0x206, 0x0204), "boot protocol 2.04 is too old"),
    (lambda d: d.__setitem__(0x211, 0), "a zImage (loaded low) is not supported"),
    (lambda d: struct.pack_into("<H", d, 0x236, 0), "no 64-bit entry point"),
    (lambda d: struct.pack_into("<I", d, 0x238, 4), "the command line is 22 bytes; the kernel takes at most 4"),
    (lambda d: struct.pack_into("<I", d, 0x260, 64 * MIB), "the kernel needs guest memory up to 0x4100000"),
    (lambda d: d.__delitem__(slice(0x400, None)), "truncated"),
])
def test_bad_images_name_the_file(tmp_path, edit, message):
    path = _image(tmp_path, edit)
    with GuestMemory(16 * MIB) as memory, pytest.raises(LoadError) as e:
        bzimage.load_bzimage(memory, path, CMDLINE)
    assert str(e.value).startswith(path + ": ") and message in str(e.value)


def test_initrd_too_large(tmp_path):
    big = tmp_path / "big.img"
    big.write_bytes(bytes(15 * MIB))
    with GuestMemory(16 * MIB) as memory, pytest.raises(LoadError, match="does not fit in guest memory"):
        bzimage.load_bzimage(memory, GUEST, "", str(big))


def test_append_refused_for_other_images(capsys):
    status, _, err = run_main(capsys, "run", str(image_path("demo")), "-append", "x")
    assert status == 2 and "-append" in err and "neither a Linux bzImage" in err
