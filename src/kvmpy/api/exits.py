"""Typed vCPU exits, decoded from the ``kvm_run`` page after ``KVM_RUN`` returns.

Each exit is a small dataclass under :class:`VcpuExit` (``VcpuExit.Io``, ``VcpuExit.Mmio``,
``VcpuExit.Hlt``...), so a run loop can ``match`` on them. Exits that need an answer
(an IN, an MMIO read) carry a view of the shared page: ``exit.set_data(value)`` writes the
answer where the kernel picks it up on the next ``KVM_RUN``, exactly as a C VMM writes
``run->mmio.data`` or the PIO data page.
"""

import ctypes
import enum
from dataclasses import dataclass, field

from kvmpy.uapi import kvm as uapi


class IoDirection(enum.IntEnum):
    IN = uapi.KVM_EXIT_IO_IN
    OUT = uapi.KVM_EXIT_IO_OUT


def _as_bytes(value, length):
    if isinstance(value, int):
        return (value & ((1 << (8 * length)) - 1)).to_bytes(length, "little")
    value = bytes(value)
    if len(value) != length:
        raise ValueError(f"expected {length} bytes, got {len(value)}")
    return value


class VcpuExit:
    """Base of all exits; ``reason`` is the KVM_EXIT_* number."""

    reason = uapi.KVM_EXIT_UNKNOWN

    @property
    def name(self):
        return uapi.EXIT_REASON_NAMES.get(self.reason, str(self.reason))


@dataclass
class Io(VcpuExit):
    """Port I/O. ``data`` is what an OUT wrote (``size * count`` bytes)."""

    reason = uapi.KVM_EXIT_IO
    direction: IoDirection
    port: int
    size: int
    data: bytes
    count: int = 1
    _buf: ctypes.Array = field(default=None, repr=False, compare=False)

    @property
    def is_in(self):
        return self.direction == IoDirection.IN

    @property
    def value(self):
        """``data`` as a little-endian integer (the value of a single OUT)."""
        return int.from_bytes(self.data, "little")

    def set_data(self, value):
        """Answer an IN: an int (one access) or ``size * count`` bytes."""
        if not self.is_in:
            raise ValueError("set_data answers IN exits only")
        data = _as_bytes(value, self.size * self.count)
        ctypes.memmove(self._buf, data, len(data))
        self.data = data


@dataclass
class Mmio(VcpuExit):
    """An access to guest-physical memory with no RAM behind it."""

    reason = uapi.KVM_EXIT_MMIO
    addr: int
    data: bytes
    is_write: bool
    _mmio: object = field(default=None, repr=False, compare=False)

    @property
    def size(self):
        return len(self.data)

    @property
    def value(self):
        return int.from_bytes(self.data, "little")

    def set_data(self, value):
        """Answer a read: an int or ``size`` bytes, copied to ``run->mmio.data``."""
        if self.is_write:
            raise ValueError("set_data answers MMIO reads only")
        data = _as_bytes(value, self.size)
        ctypes.memmove(self._mmio.data, data, len(data))
        self.data = data


@dataclass
class Hlt(VcpuExit):
    reason = uapi.KVM_EXIT_HLT


@dataclass
class Shutdown(VcpuExit):
    """Triple fault (or another event that shuts the processor down)."""

    reason = uapi.KVM_EXIT_SHUTDOWN


@dataclass
class FailEntry(VcpuExit):
    reason = uapi.KVM_EXIT_FAIL_ENTRY
    hardware_entry_failure_reason: int
    cpu: int


@dataclass
class InternalError(VcpuExit):
    """KVM could not handle the exit; ``suberror`` is KVM_INTERNAL_ERROR_*."""

    reason = uapi.KVM_EXIT_INTERNAL_ERROR
    suberror: int
    data: tuple

    SUBERROR_NAMES = {
        uapi.KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
        uapi.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
        uapi.KVM_INTERNAL_ERROR_DELIVERY_EV: "failure delivering an event",
        uapi.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected exit reason",
    }

    def describe(self):
        what = self.SUBERROR_NAMES.get(self.suberror, "unknown suberror")
        data = " ".join(f"{d:#x}" for d in self.data)
        return f"internal error: suberror {self.suberror} ({what}), data [{data}]"


@dataclass
class IrqWindowOpen(VcpuExit):
    reason = uapi.KVM_EXIT_IRQ_WINDOW_OPEN


@dataclass
class Intr(VcpuExit):
    """The run was interrupted (a signal); the guest can simply be run again."""

    reason = uapi.KVM_EXIT_INTR


@dataclass
class SystemEvent(VcpuExit):
    reason = uapi.KVM_EXIT_SYSTEM_EVENT
    type: int
    data: tuple


@dataclass
class Debug(VcpuExit):
    reason = uapi.KVM_EXIT_DEBUG
    exception: int
    pc: int
    dr6: int
    dr7: int


@dataclass
class GuestException(VcpuExit):
    reason = uapi.KVM_EXIT_EXCEPTION
    exception: int
    error_code: int


@dataclass
class Hypercall(VcpuExit):
    reason = uapi.KVM_EXIT_HYPERCALL
    nr: int
    args: tuple


@dataclass
class Other(VcpuExit):
    """An exit reason this API does not decode; ``reason`` says which."""

    reason: int


for _cls in (Io, Mmio, Hlt, Shutdown, FailEntry, InternalError, IrqWindowOpen, Intr,
             SystemEvent, Debug, Hypercall, Other):
    setattr(VcpuExit, _cls.__name__, _cls)
VcpuExit.Exception = GuestException


def decode_exit(run, run_address):
    """Build the exit object for the ``kvm_run`` structure ``run`` (at ``run_address``)."""
    reason = run.exit_reason
    if reason == uapi.KVM_EXIT_IO:
        io = run.io
        length = io.size * io.count
        buf = (ctypes.c_char * length).from_address(run_address + io.data_offset)
        return Io(IoDirection(io.direction), io.port, io.size, bytes(buf), io.count, buf)
    if reason == uapi.KVM_EXIT_MMIO:
        m = run.mmio
        length = min(m.len, 8)
        return Mmio(m.phys_addr, bytes(m.data[:length]), bool(m.is_write), m)
    if reason == uapi.KVM_EXIT_HLT:
        return Hlt()
    if reason == uapi.KVM_EXIT_SHUTDOWN:
        return Shutdown()
    if reason == uapi.KVM_EXIT_FAIL_ENTRY:
        f = run.fail_entry
        return FailEntry(f.hardware_entry_failure_reason, f.cpu)
    if reason == uapi.KVM_EXIT_INTERNAL_ERROR:
        i = run.internal
        return InternalError(i.suberror, tuple(i.data[:min(i.ndata, 16)]))
    if reason == uapi.KVM_EXIT_IRQ_WINDOW_OPEN:
        return IrqWindowOpen()
    if reason == uapi.KVM_EXIT_INTR:
        return Intr()
    if reason == uapi.KVM_EXIT_SYSTEM_EVENT:
        e = run.system_event
        return SystemEvent(e.type, tuple(e.data[:min(e.ndata, 16)]))
    if reason == uapi.KVM_EXIT_DEBUG:
        d = run.debug.arch
        return Debug(d.exception, d.pc, d.dr6, d.dr7)
    if reason == uapi.KVM_EXIT_EXCEPTION:
        return GuestException(run.ex.exception, run.ex.error_code)
    if reason == uapi.KVM_EXIT_HYPERCALL:
        h = run.hypercall
        return Hypercall(h.nr, tuple(h.args))
    return Other(reason)
