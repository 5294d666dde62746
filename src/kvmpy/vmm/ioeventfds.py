"""Device writes bound to eventfds in the kernel (KVM_IOEVENTFD), for the VMM's devices.

A device that wants a guest write handled without an exit to user space (QEMU's
``memory_region_add_eventfd``) asks :class:`Ioeventfds` to bind it: the kernel then signals
an eventfd on the write instead of returning KVM_EXIT_IO/MMIO, and the device never sees it.
Where the kernel has no KVM_IOEVENTFD, or refuses the binding, :meth:`Ioeventfds.bind`
returns None and the write keeps reaching the device, which then matches it itself, as
QEMU's memory core does for an accelerator without ioeventfds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kvmpy import compat
from kvmpy.uapi import kvm as uapi


@dataclass(frozen=True)
class Binding:
    """One write bound to one eventfd."""

    fd: int
    addr: int
    length: int
    datamatch: int | None
    pio: bool


class Ioeventfds:
    """The bindings of one VM, made through its ``ioeventfd`` call."""

    def __init__(self, vm):
        self.vm = vm
        self.available = bool(vm.check_extension(uapi.KVM_CAP_IOEVENTFD))
        self.bindings = set()

    def bind(self, addr, length, datamatch=None, pio=False):
        """A :class:`Binding` of writes at ``addr`` (``length`` bytes, 0: any; of
        ``datamatch`` unless None), or None when the kernel cannot take it."""
        if not self.available:
            return None
        fd = compat.eventfd(0, compat.EFD_NONBLOCK | compat.EFD_CLOEXEC)
        try:
            self.vm.ioeventfd(addr, length, fd, datamatch, pio)
        except OSError:
            os.close(fd)
            return None
        binding = Binding(fd, addr, length, datamatch, pio)
        self.bindings.add(binding)
        return binding

    def unbind(self, binding):
        self.bindings.discard(binding)
        self.vm.ioeventfd(binding.addr, binding.length, binding.fd, binding.datamatch,
                          binding.pio, deassign=True)
        os.close(binding.fd)

    @staticmethod
    def drain(binding) -> int:
        """The writes signalled since the last drain (the eventfd's counter, reset to 0)."""
        try:
            return compat.eventfd_read(binding.fd)
        except BlockingIOError:
            return 0

    def close(self):
        """Unbind everything (before the VM goes)."""
        for binding in list(self.bindings):
            self.unbind(binding)
