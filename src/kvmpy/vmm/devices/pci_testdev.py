"""QEMU's ``pci-testdev`` (1b36:0005): a PCI device for timing and checking I/O exits.

kvm-unit-tests' ``pci`` test and ``vmexit``'s pci-mem/pci-io cases drive it. It has two BARs,
BAR0 (4 KiB of MMIO) and BAR1 (256 ports), each beginning with the same header::

    0  test    (write)  select test N of this BAR (0 no-eventfd, 1 wildcard-eventfd,
                        2 datamatch-eventfd); another value selects none
    1  width   (read)   the width of the write the test counts (1)
    4  offset  (read)   where in the BAR that write goes
    8  data    (read)   the value to write (0xfa when the test matches data, else 0xce)
    12 count   (read)   the writes counted since the test was selected
    16 name    (read)   "mmio-no-eventfd", "portio-datamatch-eventfd", ...

Every read sees the selected test's header, a byte at a time (a wider access gathers the
bytes; nothing past the name's NUL); reads with no test selected give 0. A one-byte write
at the test's offset (of its data, when it matches data) adds one to ``count``.

The two eventfd tests are QEMU's ioeventfd checks: the test's write is bound to an eventfd
(wildcard: any value, and in the MMIO BAR any width; datamatch: only the data byte), and a
write that the eventfd takes does *not* reach the device, so ``count`` stays 0 and the
eventfd is signalled instead; a read clears it. The binding is made in the kernel
(KVM_IOEVENTFD, through the ``eventfds`` the VMM gives: :mod:`kvmpy.vmm.ioeventfds`), so the
write costs no exit, which is what kvm-unit-tests' vmexit pci cases time; where the kernel
cannot bind it, the device matches the write itself, as QEMU's memory core does for an
accelerator without ioeventfds, so the guest sees the same either way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvmpy.vmm.devices.pci import Bar, PciFunction

VENDOR_REDHAT, DEVICE_TEST = 0x1B36, 0x0005
CLASS_OTHERS = 0x00FF00                 # QEMU's class_id 0xff: subclass 0xff of class 0
MEM_BAR_SIZE, IO_BAR_SIZE = 4096, 256   # twice the test regions, as QEMU registers them
MEM_TEST_BASE, IO_TEST_BASE = 2048, 128
TESTS = ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd")
ACCESS_WIDTH = 1
DATAMATCH, NOMATCH = 0xFA, 0xCE
HEADER = struct.Struct("<BB2xIB3xI")    # test, width, offset, data, count; then the name
TEST_OFFSET, COUNT_OFFSET = 0, 12


@dataclass
class IoTest:
    """One test of one BAR: its header's fields, and its eventfd if it has one."""

    index: int                          # 0..5: the mmio tests, then the portio tests
    name: str
    offset: int
    match_data: bool
    has_eventfd: bool
    eventfd_width: int                  # 0: any width (the MMIO wildcard)
    count: int = 0
    signalled: bool = False             # a write the device matched itself
    binding: object = None              # the kernel's eventfd while the test runs

    @property
    def data(self):
        return DATAMATCH if self.match_data else NOMATCH

    def header(self) -> bytes:
        return HEADER.pack(self.index, ACCESS_WIDTH, self.offset, self.data,
                           self.count) + self.name.encode() + b"\0"

    def eventfd_takes(self, size, value) -> bool:
        return (self.has_eventfd and (self.eventfd_width in (0, size))
                and (not self.match_data or value == self.data))


def _tests(kind, base, first_index):
    return [IoTest(first_index + n, f"{kind}-{test}", base + first_index + n,
                   match_data=test != "wildcard-eventfd", has_eventfd=test != "no-eventfd",
                   eventfd_width=0 if kind == "mmio" and test == "wildcard-eventfd"
                   else ACCESS_WIDTH)
            for n, test in enumerate(TESTS)]


class _Region:
    """One BAR's range: hands accesses to the device with the BAR's test group."""

    def __init__(self, device, group):
        self.device, self.group = device, group

    def read(self, offset, size):
        return self.device.read(self.group, offset, size)

    def write(self, offset, size, value):
        self.device.write(self.group, offset, size, value)


class PciTestdev:
    """The device: ``function`` goes on the PCI bus; its BARs are the two regions.
    ``eventfds`` (:class:`kvmpy.vmm.ioeventfds.Ioeventfds` or None) binds the eventfd tests'
    writes in the kernel."""

    def __init__(self, eventfds=None):
        self.tests = [_tests("mmio", MEM_TEST_BASE, 0), _tests("portio", IO_TEST_BASE, 3)]
        self.current = None
        self.eventfds = eventfds
        self.bar_addr = [None, None]
        self.function = PciFunction(
            VENDOR_REDHAT, DEVICE_TEST, CLASS_OTHERS,
            bars=tuple(Bar(space, size, _Region(self, group),
                           on_map=lambda addr, group=group: self._bar_moved(group, addr))
                       for group, (space, size) in enumerate((("mem", MEM_BAR_SIZE),
                                                              ("io", IO_BAR_SIZE)))))

    def _group_of(self, test):
        return 0 if test in self.tests[0] else 1

    def _bind(self, test):
        addr = self.bar_addr[self._group_of(test)]
        if self.eventfds is None or not test.has_eventfd or addr is None:
            return
        test.binding = self.eventfds.bind(addr + test.offset, test.eventfd_width,
                                          test.data if test.match_data else None,
                                          pio=self._group_of(test) == 1)

    def _unbind(self, test):
        if test.binding is not None:
            self.eventfds.unbind(test.binding)
            test.binding = None

    def _bar_moved(self, group, addr):
        self.bar_addr[group] = addr
        test = self.current
        if test is not None and self._group_of(test) == group:
            self._unbind(test)
            self._bind(test)

    def read(self, group, offset, size):
        test = self.current
        if test is None:
            return 0
        test.signalled = False
        if test.binding is not None:
            self.eventfds.drain(test.binding)
        header = test.header()
        value = 0
        for i in range(size):           # byte by byte, nothing from the last byte on
            if offset + i + 1 < len(header):
                value |= header[offset + i] << (8 * i)
        return value

    def write(self, group, offset, size, value):
        test = self.current
        if test is not None and offset == test.offset and test.eventfd_takes(size, value):
            test.signalled = True
            return
        for i in range(size):           # the device takes bytes, as QEMU's does
            self._write_byte(group, offset + i, (value >> (8 * i)) & 0xFF)

    def _write_byte(self, group, offset, value):
        if offset == TEST_OFFSET:
            if self.current is not None:
                self._unbind(self.current)
            self.current = None
            if value < len(TESTS):
                self.current = self.tests[group][value]
                self.current.count = 0
                self.current.signalled = False
                self._bind(self.current)
            return
        test = self.current
        if test is None or offset != test.offset:
            return
        if test.match_data and value != test.data:
            return
        test.count += 1
