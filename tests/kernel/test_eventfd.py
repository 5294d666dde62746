"""KVM_IOEVENTFD and KVM_IRQFD (kernel/eventfd.py) on real compat.eventfd descriptors: a guest
write signals an ioeventfd with no exit to user space (on the host and on kvmpy), the
errnos are the host's, and a signalled irqfd is consumed and drives its GSI (an edge, or a
level that the guest's EOI lowers and reports on the resample fd), watched at the irq hook."""

import os
import threading
import time

import pytest

from kvmpy import compat, syscalls
from kvmpy.kernel import fs, irq_hook
from kvmpy.kernel.eventfd import kvm_notify_acked_gsi
from kvmpy.uapi import kvm as uapi
from tests.support import guestvm
from tests.support.guestvm import BACKENDS, errno_name as _errno

PIO_ANY, PIO_MATCH = 0x700, 0x702
MMIO_ANY, MMIO_NOLEN = 0xD0000000, 0xD0000010

GUEST = guestvm.prot32(f"""
 mov ${PIO_ANY}, %dx
 out %al, %dx
 out %al, %dx
 mov ${PIO_MATCH}, %dx
 mov $5, %ax
 out %ax, %dx
 mov $6, %ax
 out %ax, %dx
 movl $1, {MMIO_ANY:#x}
 movw $2, {MMIO_NOLEN:#x}
 movb $3, {MMIO_NOLEN:#x}
 hlt
""")



def _ioeventfd(sc, vm, fd, addr, length, flags=0, datamatch=0):
    return sc.ioctl(vm, uapi.KVM_IOEVENTFD, uapi.kvm_ioeventfd(addr=addr, len=length, fd=fd, flags=flags,
                                                          datamatch=datamatch))


def _count(fd):
    try:
        return compat.eventfd_read(fd)
    except BlockingIOError:
        return 0


@pytest.mark.parametrize("sc", BACKENDS)
def test_guest_writes_signal_ioeventfds_without_exits(sc, soft_mmu):
    m = guestvm.Machine(sc, guestvm.assemble(GUEST))
    fds = {k: compat.eventfd(0, compat.EFD_NONBLOCK) for k in ("pio", "match", "mmio", "nolen")}
    try:
        pio = uapi.KVM_IOEVENTFD_FLAG_PIO
        _ioeventfd(sc, m.vm_fd, fds["pio"], PIO_ANY, 1, pio)
        _ioeventfd(sc, m.vm_fd, fds["match"], PIO_MATCH, 2, pio | uapi.KVM_IOEVENTFD_FLAG_DATAMATCH, 5)
        _ioeventfd(sc, m.vm_fd, fds["mmio"], MMIO_ANY, 4)
        _ioeventfd(sc, m.vm_fd, fds["nolen"], MMIO_NOLEN, 0)
        exits = [m.step(), m.step()]
        assert [(e["reason"], e.get("port"), e.get("data")) for e in exits] == [
            ("IO", hex(PIO_MATCH), "0600"), ("HLT", None, None)]     # only the unmatched write exits
        assert {k: _count(fd) for k, fd in fds.items()} == {"pio": 2, "match": 1, "mmio": 1, "nolen": 2}
    finally:
        m.close()
        for fd in fds.values():
            os.close(fd)


@pytest.mark.parametrize("sc", BACKENDS)
def test_ioeventfd_errnos_are_the_hosts(sc):
    m = guestvm.Machine(sc, mode=None, ram=0)
    e1, e2 = compat.eventfd(0), compat.eventfd(0)
    vm, pio, dm = m.vm_fd, uapi.KVM_IOEVENTFD_FLAG_PIO, uapi.KVM_IOEVENTFD_FLAG_DATAMATCH
    deassign = uapi.KVM_IOEVENTFD_FLAG_DEASSIGN
    try:
        got = [_errno(lambda: _ioeventfd(sc, vm, e1, 0x700, 3, pio)),
               _errno(lambda: _ioeventfd(sc, vm, e1, 0x700, 0, pio | dm)),
               _errno(lambda: _ioeventfd(sc, vm, e1, 0x700, 1, 1 << 7)),
               _errno(lambda: _ioeventfd(sc, vm, e1, (1 << 64) - 2, 4)),
               _errno(lambda: _ioeventfd(sc, vm, 9999, 0x700, 1, pio)),
               _errno(lambda: _ioeventfd(sc, vm, vm, 0x700, 1, pio)),              # not an eventfd
               _errno(lambda: _ioeventfd(sc, vm, e1, 0x700, 2, pio | dm, 1)),
               _errno(lambda: _ioeventfd(sc, vm, e2, 0x700, 2, pio | dm, 2)),    # another value: fine
               _errno(lambda: _ioeventfd(sc, vm, e2, 0x700, 2, pio)),            # a wildcard collides
               _errno(lambda: _ioeventfd(sc, vm, e2, 0x700, 0, pio)),            # so does no length
               _errno(lambda: _ioeventfd(sc, vm, e1, 0x700, 2, pio | dm | deassign, 1)),
               _errno(lambda: _ioeventfd(sc, vm, e1, 0x700, 2, pio | dm | deassign, 1)),
               _errno(lambda: _ioeventfd(sc, vm, e1, 0x800, 4, deassign))]
    finally:
        m.close()
        os.close(e1)
        os.close(e2)
    assert got == ["EINVAL", "EINVAL", "EINVAL", "EINVAL", "EBADF", "EINVAL", 0, 0, "EEXIST", "EEXIST",
                   0, "ENOENT", "ENOENT"]


def _irqfd(sc, vm, fd, gsi, flags=0, resamplefd=0):
    return sc.ioctl(vm, uapi.KVM_IRQFD, uapi.kvm_irqfd(fd=fd, gsi=gsi, flags=flags, resamplefd=resamplefd))


@pytest.mark.parametrize("sc", BACKENDS)
def test_irqfd_errnos_are_the_hosts(sc):
    e1, e2, r = compat.eventfd(0), compat.eventfd(0), compat.eventfd(0)
    bare = guestvm.Machine(sc, mode=None, ram=0)
    try:
        without = _errno(lambda: _irqfd(sc, bare.vm_fd, e1, 0))
    finally:
        bare.close()
    m = guestvm.Machine(sc, mode=None, ram=0, vm_setup=guestvm.create_irqchip)
    vm, resample, deassign = m.vm_fd, uapi.KVM_IRQFD_FLAG_RESAMPLE, uapi.KVM_IRQFD_FLAG_DEASSIGN
    try:
        got = [without,
               _errno(lambda: _irqfd(sc, vm, e1, 0)),
               _errno(lambda: _irqfd(sc, vm, e1, 1)),                    # one eventfd, one GSI
               _errno(lambda: _irqfd(sc, vm, e2, 1, 1 << 2)),
               _errno(lambda: _irqfd(sc, vm, 9999, 1)),
               _errno(lambda: _irqfd(sc, vm, vm, 1)),
               _errno(lambda: _irqfd(sc, vm, e2, 5, deassign)),          # nothing to remove: fine
               _errno(lambda: _irqfd(sc, vm, e2, 5, resample, 9999)),
               _errno(lambda: _irqfd(sc, vm, e2, 5, resample, r)),
               _errno(lambda: _irqfd(sc, vm, e2, 5, deassign)),
               _errno(lambda: _irqfd(sc, vm, e2, 5000))]
    finally:
        m.close()
        for fd in (e1, e2, r):
            os.close(fd)
    assert got == ["EINVAL", 0, "EBUSY", "EINVAL", "EBADF", "EINVAL", 0, "EBADF", 0, 0, 0]


@pytest.fixture
def irq_vm(monkeypatch):
    """A soft VM with an irqchip, and the GSI changes its irqfds make, as (source, gsi, level)."""
    lines = []
    seen = threading.Event()

    def record(kvm, src, gsi, level, line_status=False):
        lines.append((src, gsi, level))
        seen.set()
        return 1

    monkeypatch.setattr(irq_hook, "kvm_set_irq", record)
    m = guestvm.Machine(syscalls, mode=None, ram=0, vm_setup=guestvm.create_irqchip)
    yield m, fs.fdget(m.vm_fd).private_data, lines, seen
    m.close()


def _wait(lines, n):
    deadline = time.monotonic() + 5
    while len(lines) < n and time.monotonic() < deadline:
        time.sleep(0.001)
    return list(lines)


def test_an_irqfd_signalled_from_another_thread_pulses_its_gsi(irq_vm):
    m, kvm, lines, seen = irq_vm
    efd = compat.eventfd(0, compat.EFD_NONBLOCK)
    try:
        _irqfd(syscalls, m.vm_fd, efd, 10)
        threading.Thread(target=compat.eventfd_write, args=(efd, 3)).start()
        src = irq_hook.KVM_USERSPACE_IRQ_SOURCE_ID
        assert _wait(lines, 2) == [(src, 10, 1), (src, 10, 0)]
        assert _count(efd) == 0                                  # the kernel consumed the count
        _irqfd(syscalls, m.vm_fd, efd, 10, uapi.KVM_IRQFD_FLAG_DEASSIGN)
        compat.eventfd_write(efd, 1)
        time.sleep(0.05)
        assert len(lines) == 2 and _count(efd) == 1              # deassigned: nobody reads it
    finally:
        os.close(efd)


def test_a_resampling_irqfd_holds_the_level_until_the_eoi(irq_vm):
    m, kvm, lines, seen = irq_vm
    efd, rfd = compat.eventfd(0, compat.EFD_NONBLOCK), compat.eventfd(0, compat.EFD_NONBLOCK)
    try:
        _irqfd(syscalls, m.vm_fd, efd, 11, uapi.KVM_IRQFD_FLAG_RESAMPLE, rfd)
        compat.eventfd_write(efd, 1)
        src = irq_hook.KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID
        assert _wait(lines, 1) == [(src, 11, 1)]
        assert _count(rfd) == 0
        kvm_notify_acked_gsi(kvm, 11)                            # the guest's EOI
        assert lines == [(src, 11, 1), (src, 11, 0)] and _count(rfd) == 1
        _irqfd(syscalls, m.vm_fd, efd, 11, uapi.KVM_IRQFD_FLAG_DEASSIGN)
        assert kvm.irq_ack_notifier_list == [] and lines[-1] == (src, 11, 0)
    finally:
        os.close(efd)
        os.close(rfd)
