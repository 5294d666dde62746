"""fw_cfg driven through its ports, byte by byte, as kvm-unit-tests' fwcfg.c drives it
(the guest test in test_multiboot.py reads it from a running guest)."""

import struct

import pytest

from kvmpy.vmm import layout
from kvmpy.vmm.devices import FwCfg, PioBus
from kvmpy.vmm.devices import fw_cfg

MIB = 1 << 20


@pytest.fixture
def bus():
    bus = PioBus()
    bus.register(0x510, 2, FwCfg(64 * MIB, 3, max_cpus=8))
    return bus


def read_item(bus, key, length):
    bus.write(0x510, 2, key)
    return bytes(bus.read(0x511, 1) for _ in range(length))


def test_items(bus):
    assert read_item(bus, 0x00, 4) == b"QEMU"
    assert read_item(bus, 0x01, 4) == struct.pack("<I", 1)         # traditional, no DMA
    assert read_item(bus, 0x03, 8) == struct.pack("<Q", 64 * MIB)
    assert read_item(bus, 0x05, 2) == struct.pack("<H", 3)
    assert read_item(bus, 0x0F, 2) == struct.pack("<H", 8)


def test_past_the_end_and_unknown_items_read_zero(bus):
    assert read_item(bus, 0x00, 6) == b"QEMU\0\0"
    assert read_item(bus, 0x11, 8) == bytes(8)                      # no such item
    assert read_item(bus, 0x1234, 2) == bytes(2)


def test_select_rewinds_and_data_writes_are_ignored(bus):
    assert read_item(bus, 0x00, 2) == b"QE"
    bus.write(0x511, 1, 0x55)
    assert bytes(bus.read(0x511, 1) for _ in range(2)) == b"MU"
    assert read_item(bus, 0x00, 1) == b"Q"
    assert read_item(bus, 0x4000 | 0x05, 2) == struct.pack("<H", 3)  # the write-channel bit


def _directory(bus):
    count, = struct.unpack(">I", read_item(bus, 0x19, 4))
    raw = bytes(bus.read(0x511, 1) for _ in range(64 * count))
    return [(name.rstrip(b"\0").decode(), size, select)
            for size, select, _, name in struct.iter_unpack(">IHH56s", raw)]


def test_file_directory_and_e820(bus):
    [(name, size, select)] = _directory(bus)
    assert (name, select) == ("etc/e820", 0x20)
    data = read_item(bus, select, size)
    assert list(struct.iter_unpack("<QQI", data)) == layout.e820_map(64 * MIB)
    assert data[-20:] == struct.pack("<QQI", 0x100000, 63 * MIB, 1)


def test_added_files_keep_the_directory_sorted():
    dev = FwCfg(16 * MIB, 1)
    bus = PioBus()
    bus.register(0x510, 2, dev)
    dev.add_file("opt/kvmpy/z", b"zz")
    dev.add_file("bootorder", b"b\0")
    assert _directory(bus) == [("bootorder", 2, 0x20), ("etc/e820", 80, 0x21),
                               ("opt/kvmpy/z", 2, 0x22)]
    assert read_item(bus, 0x22, 3) == b"zz\0"
    for bad in ("", "x" * 56):
        with pytest.raises(ValueError):
            dev.add_file(bad, b"")


def test_the_machine_has_it():
    from kvmpy.vmm.machine import Machine
    from kvmpy.guests import image_path
    with Machine(str(image_path("demo")), memory_mib=24) as machine:
        assert read_item(machine.pio, fw_cfg.FW_CFG_RAM_SIZE, 8) == struct.pack("<Q", 24 * MIB)
        assert read_item(machine.pio, fw_cfg.FW_CFG_NB_CPUS, 2) == b"\1\0"
