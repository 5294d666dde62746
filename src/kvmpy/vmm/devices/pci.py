"""PCI bus 0: configuration mechanism #1 and the functions on it, with their BARs.

The guest finds PCI devices by reading their configuration space through two I/O ports
(PCI Local Bus 3.0, 3.2.2.3.2): it writes the address dword ``1 << 31 | bus << 16 |
device << 11 | function << 8 | register`` to CONFIG_ADDRESS (0xcf8, dword accesses only) and
then reads or writes CONFIG_DATA (0xcfc-0xcff, any width, the low two register bits from the
port). As in QEMU, the address keeps its low two bits and they are ORed with the port's:
kvm-unit-tests reads the device ID as a word at 0xcfc after writing register 2 to the
address. A function nobody implements reads all-ones, which is how a scan tells "no device".

:class:`PciFunction` is one function's 256-byte type-0 header with the writable bits the
spec gives it; its BARs are sized the standard way (write all-ones, read back the mask) and
map their device on the machine's port or MMIO bus while the command register enables
decoding, moving when the guest reprograms them. :meth:`PciBus.assign_resources` is the
firmware's part (SeaBIOS on QEMU): BAR addresses from the windows of
:mod:`kvmpy.vmm.layout`, then I/O and memory decoding on, so a guest that only reads the
BARs (kvm-unit-tests) finds the devices working.

Function 00:00.0 is the host bridge QEMU's ``pc`` machine has, the i440FX (8086:1237).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmpy.vmm.devices.bus import BusError

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_DATA_PORT = 0xCFC
#: offsets the host device sees: the address dword, and the four data ports
ADDRESS, DATA = 0, 4
CONFIG_ENABLE = 1 << 31
CONFIG_SPACE_SIZE = 256
ALL_ONES = 0xFFFFFFFF

# the type-0 header (PCI 3.0, 6.1)
VENDOR_ID, DEVICE_ID, COMMAND, STATUS, REVISION_ID, CLASS_PROG = 0x00, 0x02, 0x04, 0x06, 0x08, 0x09
CACHE_LINE_SIZE, LATENCY_TIMER, HEADER_TYPE = 0x0C, 0x0D, 0x0E
BAR0, BAR_COUNT = 0x10, 6
SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x2C, 0x2E
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D

COMMAND_IO, COMMAND_MEMORY, COMMAND_MASTER = 1 << 0, 1 << 1, 1 << 2
COMMAND_PARITY, COMMAND_SERR, COMMAND_INTX_DISABLE = 1 << 6, 1 << 8, 1 << 10
COMMAND_WRITABLE = (COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_PARITY
                    | COMMAND_SERR | COMMAND_INTX_DISABLE)
BAR_SPACE_IO = 0x1                      # bit 0 of an I/O BAR; memory BARs (32-bit) have 0
BAR_IO_FLAGS_MASK, BAR_MEM_FLAGS_MASK = 0x3, 0xF
IO_SPACE_END = 0x10000

#: the subsystem IDs QEMU gives a device that sets none (Red Hat/Qumranet, QEMU)
QEMU_SUBSYSTEM_VENDOR, QEMU_SUBSYSTEM = 0x1AF4, 0x1100

I440FX_VENDOR, I440FX_DEVICE, I440FX_REVISION = 0x8086, 0x1237, 0x02
CLASS_HOST_BRIDGE = 0x060000


def devfn(slot: int, function: int = 0) -> int:
    return slot << 3 | function


@dataclass
class Bar:
    """One base address register: ``space`` "io" or "mem", a power-of-two ``size``, the
    device answering its range (``read(offset, size)`` / ``write(offset, size, value)``),
    and ``on_map(address or None)``, told where the range decodes whenever that changes."""

    space: str
    size: int
    device: object
    on_map: object = None
    mapped_at: int | None = None


class PciFunction:
    """A function's configuration space: the header fields read back as set, the writable
    bits the guest may change, and its BARs."""

    def __init__(self, vendor_id, device_id, class_code, revision=0, bars=(),
                 subsystem=(QEMU_SUBSYSTEM_VENDOR, QEMU_SUBSYSTEM), interrupt_pin=0):
        self.config = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        struct.pack_into("<HH", self.config, VENDOR_ID, vendor_id, device_id)
        self.config[REVISION_ID] = revision
        self.config[CLASS_PROG:CLASS_PROG + 3] = class_code.to_bytes(3, "little")
        struct.pack_into("<HH", self.config, SUBSYSTEM_VENDOR_ID, *subsystem)
        self.config[INTERRUPT_PIN] = interrupt_pin
        struct.pack_into("<H", self.wmask, COMMAND, COMMAND_WRITABLE)
        for reg in (CACHE_LINE_SIZE, LATENCY_TIMER, INTERRUPT_LINE):
            self.wmask[reg] = 0xFF
        if len(bars) > BAR_COUNT:
            raise ValueError("a type-0 header has six BARs")
        self.bars = list(bars)
        for i, bar in enumerate(self.bars):
            if bar.size & (bar.size - 1) or bar.size < (4 if bar.space == "io" else 16):
                raise ValueError(f"BAR {i}: size {bar.size:#x} is not a power of two")
            struct.pack_into("<I", self.config, BAR0 + 4 * i,
                             BAR_SPACE_IO if bar.space == "io" else 0)
            struct.pack_into("<I", self.wmask, BAR0 + 4 * i, ~(bar.size - 1) & ALL_ONES)
        self.on_change = None           # the bus's: remap the BARs after a write

    def read_config(self, reg, size):
        """An access running past the 256 bytes sees only those inside, as in QEMU."""
        return int.from_bytes(self.config[reg:reg + size], "little")

    def write_config(self, reg, size, value):
        for i in range(min(size, CONFIG_SPACE_SIZE - reg)):
            off = reg + i
            mask = self.wmask[off]
            self.config[off] = (self.config[off] & ~mask) | ((value >> (8 * i)) & mask)
        if self.on_change and (reg < COMMAND + 2 and reg + size > COMMAND
                               or reg < BAR0 + 4 * BAR_COUNT and reg + size > BAR0):
            self.on_change(self)

    def command(self):
        return self.read_config(COMMAND, 2)

    def bar_address(self, i):
        """Where BAR ``i`` decodes now, or None (decoding off, or an address that cannot
        hold it: all-ones while the guest sizes it, past 4 GiB or the 64 KiB of ports)."""
        bar = self.bars[i]
        raw = self.read_config(BAR0 + 4 * i, 4)
        if bar.space == "io":
            addr, enabled, end = raw & ~BAR_IO_FLAGS_MASK, COMMAND_IO, IO_SPACE_END
        else:
            addr, enabled, end = raw & ~BAR_MEM_FLAGS_MASK, COMMAND_MEMORY, ALL_ONES
        if not self.command() & enabled or addr == 0 or addr + bar.size > end:
            return None
        return addr


class PciBus:
    """Bus 0: the functions by devfn; their BARs mapped on ``pio`` and ``mmio``."""

    def __init__(self, pio, mmio):
        self.pio, self.mmio = pio, mmio
        self.functions = {}

    def add(self, number, function):
        if number in self.functions:
            raise ValueError(f"PCI 00:{number >> 3:02x}.{number & 7} is taken")
        self.functions[number] = function
        function.on_change = self.update_mappings

    def free_slot(self):
        """The lowest device number with no function on it."""
        return next(s for s in range(32) if devfn(s) not in self.functions)

    def update_mappings(self, function):
        """Map each BAR where it decodes now, unmapping it from where it did."""
        for i, bar in enumerate(function.bars):
            addr = function.bar_address(i)
            if addr == bar.mapped_at:
                continue
            bus = self.pio if bar.space == "io" else self.mmio
            if bar.mapped_at is not None:
                bus.unregister(bar.mapped_at, bar.device)
                bar.mapped_at = None
            if addr is not None:
                try:
                    bus.register(addr, bar.size, bar.device)
                    bar.mapped_at = addr
                except BusError:
                    pass                # over another device: it decodes nothing (a conflict)
            if bar.on_map:
                bar.on_map(bar.mapped_at)

    def assign_resources(self, mmio_base, io_base):
        """The firmware's BAR assignment: each BAR at the next address of its window aligned
        to its size, then I/O and memory decoding enabled."""
        windows = {"mem": mmio_base, "io": io_base}
        for number in sorted(self.functions):
            function = self.functions[number]
            for i, bar in enumerate(function.bars):
                addr = -(-windows[bar.space] // bar.size) * bar.size
                windows[bar.space] = addr + bar.size
                function.write_config(BAR0 + 4 * i, 4, addr)
            if function.bars:
                function.write_config(COMMAND, 2,
                                      function.command() | COMMAND_IO | COMMAND_MEMORY)

    def read_config(self, number, reg, size):
        function = self.functions.get(number)
        if function is None:
            return (1 << (8 * size)) - 1
        return function.read_config(reg, size)

    def write_config(self, number, reg, size, value):
        function = self.functions.get(number)
        if function is not None:
            function.write_config(reg, size, value)


def i440fx_host_bridge():
    """Function 00:00.0 of QEMU's pc machine."""
    return PciFunction(I440FX_VENDOR, I440FX_DEVICE, CLASS_HOST_BRIDGE, I440FX_REVISION)


class PciHost:
    """Configuration mechanism #1: the address dword at offset 0, the data at offsets 4-7.
    Map offset 0 at 0xcf8 (with offsets 2-3 at 0xcfa) and offset 4 at 0xcfc."""

    def __init__(self, bus):
        self.bus = bus
        self.address = 0

    def _target(self, port_offset):
        """(devfn, register) that a data access addresses, or None."""
        addr = self.address
        if not addr & CONFIG_ENABLE or (addr >> 16) & 0xFF:
            return None                 # disabled, or a bus that does not exist
        return (addr >> 8) & 0xFF, (addr | port_offset) & 0xFF

    def read(self, offset, size):
        if offset == ADDRESS and size == 4:
            return self.address
        target = self._target(offset - DATA) if offset >= DATA else None
        if target is None:
            return (1 << (8 * size)) - 1
        return self.bus.read_config(*target, size)

    def write(self, offset, size, value):
        if offset == ADDRESS and size == 4:
            self.address = value & ALL_ONES
            return
        target = self._target(offset - DATA) if offset >= DATA else None
        if target is not None:
            self.bus.write_config(*target, size, value)
