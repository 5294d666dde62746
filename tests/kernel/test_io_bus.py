"""The kernel's I/O buses (kernel/iodev.py): a device registered on KVM_PIO_BUS or KVM_MMIO_BUS
serves the guest's accesses inside KVM_RUN, with no exit to user space; accesses no device
covers still exit as KVM_EXIT_IO / KVM_EXIT_MMIO, and an unregistered device is no longer
called."""

import pytest

from kvmpy import syscalls
from kvmpy.kernel import fs
from kvmpy.kernel.iodev import (KVM_MMIO_BUS, KVM_PIO_BUS, KvmIoDevice, kvm_io_bus_register_dev,
                                kvm_io_bus_unregister_dev)
from tests.support import guestvm

DEV_PORT, USER_PORT = 0x700, 0x710
DEV_MMIO, USER_MMIO = 0xD0000000, 0xD0001000


class Recorder(KvmIoDevice):
    """Answers every read with ``answer`` and records the writes it is offered."""

    def __init__(self, answer):
        self.answer = answer
        self.writes = []

    def read(self, vcpu, addr, length, data):
        data[:] = self.answer.to_bytes(8, "little")[:length]
        return True

    def write(self, vcpu, addr, length, data):
        self.writes.append((addr, length, bytes(data).hex()))
        return True


GUEST = guestvm.prot32(f"""
 mov $0x42, %al
 mov ${DEV_PORT}, %dx
 out %al, %dx
 in %dx, %eax
 mov %eax, %ebx
 movl $0xcafef00d, {DEV_MMIO + 0x10:#x}
 movl {DEV_MMIO + 0x20:#x}, %ecx
 mov ${USER_PORT}, %dx
 out %al, %dx
 movl %ecx, {USER_MMIO:#x}
 hlt
""")


def _machine_and_vm(image):
    m = guestvm.Machine(syscalls, guestvm.assemble(image))
    return m, fs.fdget(m.vm_fd).private_data


def test_devices_on_the_buses_serve_accesses_without_exits(soft_mmu):
    m, kvm = _machine_and_vm(GUEST)
    try:
        pio, mmio = Recorder(0xA5A5A5A5), Recorder(0x12345678)
        kvm_io_bus_register_dev(kvm, KVM_PIO_BUS, DEV_PORT, 4, pio)
        kvm_io_bus_register_dev(kvm, KVM_MMIO_BUS, DEV_MMIO, 0x1000, mmio)
        exits = [m.step() for _ in range(3)]
        assert [(e["reason"], e.get("port") or e.get("addr")) for e in exits] == [
            ("IO", hex(USER_PORT)), ("MMIO", hex(USER_MMIO)), ("HLT", None)]
        assert exits[1]["data"] == "78563412"          # the value the MMIO device answered
        assert pio.writes == [(DEV_PORT, 1, "42")]
        assert mmio.writes == [(DEV_MMIO + 0x10, 4, "0df0feca")]
        assert m.regs("rbx", "rcx") == {"rbx": "0xa5a5a5a5", "rcx": "0x12345678"}
    finally:
        m.close()


@pytest.mark.parametrize("bus,access,expected", [
    (KVM_PIO_BUS, f"mov ${DEV_PORT}, %dx\n out %al, %dx\n", ("IO", hex(DEV_PORT))),
    (KVM_MMIO_BUS, f"movl %eax, {DEV_MMIO:#x}\n", ("MMIO", hex(DEV_MMIO))),
])
def test_an_unregistered_device_is_not_called(bus, access, expected):
    m, kvm = _machine_and_vm(guestvm.prot32(access + " hlt\n"))
    try:
        dev = Recorder(0)
        kvm_io_bus_register_dev(kvm, bus, DEV_PORT if bus == KVM_PIO_BUS else DEV_MMIO, 0x1000, dev)
        kvm_io_bus_unregister_dev(kvm, bus, dev)
        e = m.step()
        assert (e["reason"], e.get("port") or e.get("addr")) == expected
        assert dev.writes == []
    finally:
        m.close()


def test_a_device_that_declines_leaves_the_access_to_user_space():
    """A device whose op returns False (here: the default read and write) does not handle
    the access: it exits to user space as if no device were there."""
    m, kvm = _machine_and_vm(guestvm.prot32(f"mov ${DEV_PORT}, %dx\n in %dx, %al\n hlt\n"))
    try:
        kvm_io_bus_register_dev(kvm, KVM_PIO_BUS, DEV_PORT, 1, KvmIoDevice())
        e = m.step()
        assert (e["reason"], e["port"], e["dir"]) == ("IO", hex(DEV_PORT), "in")
    finally:
        m.close()
