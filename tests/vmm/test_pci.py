"""PCI configuration mechanism #1, BARs, pci-testdev and pc-testdev, through the machine's
buses (what a guest's IN/OUT and MMIO exits reach), and their -device options."""

import pytest

from kvmpy.guests import image_path
from kvmpy.vmm.machine import Machine, Unsupported
from tests.support.cli import run_main

ENABLE = 0x80000000
TESTDEV_BDF = 2 << 3


@pytest.fixture
def machine():
    with Machine(image_path("demo"), devices=[("pci-testdev", {}), ("pc-testdev", {})]) as m:
        yield m


def config_read(m, bdf, reg, size=4, bus=0):
    m.pio.write(0xCF8, 4, ENABLE | bus << 16 | bdf << 8 | (reg & 0xFC))
    return m.pio.read(0xCFC + (reg & 3), size)


def config_write(m, bdf, reg, value, size=4):
    m.pio.write(0xCF8, 4, ENABLE | bdf << 8 | (reg & 0xFC))
    m.pio.write(0xCFC + (reg & 3), size, value)


def test_scan_finds_the_host_bridge_and_the_testdev(machine):
    found = {d: config_read(machine, d << 3, 0) for d in range(32)
             if config_read(machine, d << 3, 0) != 0xFFFFFFFF}
    assert found == {0: 0x12378086, 2: 0x00051B36}
    assert config_read(machine, 0, 8) >> 8 == 0x060000             # host bridge class
    assert config_read(machine, TESTDEV_BDF, 0x0A, 2) == 0x00FF     # QEMU's class_id 0xff
    assert config_read(machine, TESTDEV_BDF, 0x2C) == 0x11001AF4    # subsystem
    assert config_read(machine, TESTDEV_BDF, 0, 2) == 0x1B36        # word reads
    assert config_read(machine, TESTDEV_BDF, 2, 2) == 0x0005


def test_address_low_bits_select_the_register_as_in_qemu(machine):
    """kvm-unit-tests' pci_config_readw(dev, 2): the register in the address, a word at 0xcfc."""
    machine.pio.write(0xCF8, 4, ENABLE | TESTDEV_BDF << 8 | 2)
    assert machine.pio.read(0xCFC, 2) == 0x0005
    machine.pio.write(0xCF8, 4, ENABLE | TESTDEV_BDF << 8 | 0xFC)
    assert machine.pio.read(0xCFF, 4) == 0x00                   # register 0xff, then nothing
    machine.pio.write(0xCFF, 4, 0xFFFFFFFF)                     # past the end: clipped


def test_config_address_register(machine):
    machine.pio.write(0xCF8, 4, 0x80001234)
    assert machine.pio.read(0xCF8, 4) == 0x80001234
    machine.pio.write(0xCF8, 4, 0)                                  # disabled: no data
    assert machine.pio.read(0xCFC, 4) == 0xFFFFFFFF
    assert config_read(machine, 0, 0, bus=1) == 0xFFFFFFFF          # no bus 1
    assert config_read(machine, 1 << 3, 0) == 0xFFFFFFFF            # empty slot


def test_bars_are_sized_and_move(machine):
    assert config_read(machine, TESTDEV_BDF, 0x10) == 0xE0000000
    assert config_read(machine, TESTDEV_BDF, 0x14) == 0xC001
    config_write(machine, TESTDEV_BDF, 0x10, 0xFFFFFFFF)
    assert config_read(machine, TESTDEV_BDF, 0x10) == 0xFFFFF000    # 4 KiB of memory
    config_write(machine, TESTDEV_BDF, 0x14, 0xFFFFFFFF)
    assert config_read(machine, TESTDEV_BDF, 0x14) == 0xFFFFFF01    # 256 ports
    config_write(machine, TESTDEV_BDF, 0x10, 0xE0100000)
    config_write(machine, TESTDEV_BDF, 0x14, 0xD000)
    machine.mmio.write(0xE0100000, 1, 1)                            # select wildcard-eventfd
    assert machine.mmio.read(0xE0100010, 4) == int.from_bytes(b"mmio", "little")
    assert machine.mmio.read(0xE0000000, 4) == 0xFFFFFFFF           # left the old place
    machine.pio.write(0xD000, 1, 0)
    assert machine.pio.read(0xD010, 4) == int.from_bytes(b"port", "little")
    config_write(machine, TESTDEV_BDF, 4, 0, size=2)                # decoding off
    assert machine.mmio.read(0xE0100010, 4) == 0xFFFFFFFF
    assert machine.pio.read(0xD010, 4) == 0xFFFFFFFF


def test_pci_testdev_counts_and_eventfds(machine):
    mem = 0xE0000000
    machine.mmio.write(mem, 1, 1)                       # mmio-wildcard-eventfd
    offset = machine.mmio.read(mem + 4, 4)
    assert (machine.mmio.read(mem + 1, 1), offset) == (1, 2049)
    machine.mmio.write(mem + offset, 4, 0x12345678)     # any width, any value: the eventfd's
    assert machine.mmio.read(mem + 12, 4) == 0
    machine.mmio.write(mem, 1, 2)                       # mmio-datamatch-eventfd
    offset = machine.mmio.read(mem + 4, 4)
    data = machine.mmio.read(mem + 8, 1)
    assert data == 0xFA
    machine.mmio.write(mem + offset, 1, 0x11)           # not its data: not counted either
    machine.mmio.write(mem + offset, 2, data)           # another width: reaches the device
    assert machine.mmio.read(mem + 12, 4) == 1
    machine.mmio.write(mem, 1, 7)                       # no such test: reads give 0
    assert machine.mmio.read(mem, 4) == 0


def test_pc_testdev_ports_and_memory(machine):
    pio = machine.pio
    pio.write(0xE0, 4, 0x12345678)
    assert (pio.read(0xE0, 4), pio.read(0xE2, 1), pio.read(0xE1, 2)) == (0x12345678, 0x34, 0x3456)
    pio.write(0xE9, 1, 0xAB)                            # the byte window, same register
    assert pio.read(0xE0, 4) == 0x1234AB78
    machine.mmio.write(0xFF000010, 8, 0x1122334455667788)
    assert machine.mmio.read(0xFF000014, 4) == 0x11223344
    machine.memory.write(0x3000, b"kept")
    pio.write(0xE4, 4, 0x3123)                          # flush the page: contents stay
    assert (machine.pc_testdev.flushes, machine.pc_testdev.last_flushed) == (1, 0x3000)
    assert machine.memory.read(0x3000, 4) == b"kept"
    pio.write(0x2000 + 4, 1, 1)                         # no irqchip: the line goes nowhere
    assert machine.pc_testdev.irq_levels[4]


def test_pc_testdev_wide_irq_write_sets_a_line_per_byte(machine):
    """kvm-unit-tests' realmode raises IRQ 11 with an OUTL to 0x200b: as in QEMU, whose byte-
    wide region gets it split, the low byte drives line 11 and the others lines 12-14."""
    pio, dev = machine.pio, machine.pc_testdev
    pio.write(0x2000 + 12, 1, 1)
    pio.write(0x2000 + 11, 4, 0x00000001)
    assert dev.irq_levels[11:15] == [True, False, False, False]
    pio.write(0x2000 + 22, 4, 0x0101)                   # past the last line: dropped
    assert dev.irq_levels[22:24] == [True, True]
    pio.write(0x2000 + 11, 2, 0x0100)
    assert dev.irq_levels[11:13] == [False, True]


def test_reset_register_keeps_only_the_system_reset_bit(machine):
    machine.pio.write(0xCF9, 1, 0x02)
    assert machine.pio.read(0xCF9, 1) == 0x02 and machine._stop is None
    machine.pio.write(0xCF9, 1, 0x06)
    assert machine._stop.reason == "reset"


@pytest.mark.parametrize("device, message", [
    (("pci-testdev", {"membar": "1M"}),
     "-device pci-testdev: property 'membar' is not supported (it takes none)"),
    (("pc-testdev", {"iobase": "0xe0"}),
     "-device pc-testdev: property 'iobase' is not supported (it takes none)"),
])
def test_bad_device_properties(device, message):
    with pytest.raises(Unsupported) as e:
        Machine(image_path("demo"), devices=[device])
    assert str(e.value) == message


def test_pc_testdev_twice_is_refused():
    with pytest.raises(Unsupported, match="^-device pc-testdev: given twice"):
        Machine(image_path("demo"), devices=[("pc-testdev", {})] * 2)


@pytest.mark.parametrize("option, message", [
    ("pci-testdev,membar=1M", "property 'membar' is not supported"),
    ("pc-testdev,irq=5", "property 'irq' is not supported"),
])
def test_bad_device_properties_on_the_command_line(capsys, option, message):
    status, out, err = run_main(capsys, "run", "-device", option)
    assert status == 2 and out == ""
    assert message in err and len(err.splitlines()) == 1


def test_device_help_lists_the_testdevs(capsys):
    status, out, _ = run_main(capsys, "run", "-device", "help")
    lines = out.splitlines()
    assert status == 0
    assert any('name "pc-testdev"' in line for line in lines)
    assert any('name "pci-testdev"' in line for line in lines)


def test_two_pci_testdevs_get_their_own_slots_and_bars():
    with Machine(image_path("demo"), devices=[("pci-testdev", {})] * 2) as m:
        assert config_read(m, 3 << 3, 0) == 0x00051B36
        assert config_read(m, 3 << 3, 0x10) == 0xE0001000
        assert config_read(m, 3 << 3, 0x14) == 0xC101


def test_random_guest_accesses_never_raise_and_ids_stay(machine):
    """What a guest can do to these devices (any port, width and value, any configuration
    register) never raises in the VMM, and the read-only identity registers stay."""
    import random
    rng = random.Random(9)
    ports = [0xCF8, 0xCF9, 0xCFA, 0xCFC, 0xCFD, 0xCFE, 0xCFF, 0xB000, 0xB002, 0xB004, 0xB008,
             0xE0, 0xE3, 0xE4, 0xE8, 0x2000, 0x2017, 0xC000, 0xC080, 0xC0FF]
    for _ in range(3000):
        size = rng.choice((1, 2, 4))
        if rng.random() < 0.5:
            config_write(machine, rng.choice((0, TESTDEV_BDF)), rng.randrange(256),
                         rng.getrandbits(32), size)
        elif rng.random() < 0.5:
            port = rng.choice(ports)
            machine.pio.write(port, size, rng.getrandbits(8 * size))
            machine.pio.read(port, size)
        else:
            addr = rng.choice((0xE0000000, 0xFF000000)) + rng.randrange(0x10000)
            machine.mmio.write(addr, rng.choice((1, 2, 4, 8)), rng.getrandbits(64))
            machine.mmio.read(addr, size)
    assert config_read(machine, 0, 0) == 0x12378086
    assert config_read(machine, TESTDEV_BDF, 0) == 0x00051B36
