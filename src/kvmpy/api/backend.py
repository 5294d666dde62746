"""Backends: which open/ioctl/mmap/close the API objects use.

The API is the same for both; only these four functions differ:

* ``host``: the machine's real ``/dev/kvm`` through ``os.open``, ``fcntl.ioctl`` (as
  :mod:`kvmpy.compat` makes it on every interpreter), ``mmap.mmap`` and ``os.close``;
* ``soft``: kvmpy's own kernel through :mod:`kvmpy.syscalls`, which behaves the same way.

The soft kernel also takes module parameters (``ept``, ``vendor``...) the way
``modprobe kvm_intel ept=0`` does; they are applied when the device is first opened.

``guest_instructions(vcpu_fd)`` stands for the host's ``perf stat -e instructions:G``: the
instructions a vCPU has retired in guest mode.  kvmpy's processor counts them itself; the
host's KVM has no such count (perf needs a PMU), so there it answers None.
"""

import ctypes
import mmap
import os
from dataclasses import dataclass, field
from typing import Callable

from kvmpy import compat, syscalls
from kvmpy.kernel import fs as kernel_fs
from kvmpy.kernel.x86 import params as kernel_params

KVM_DEVICE = "/dev/kvm"


@dataclass(frozen=True)
class Backend:
    """The four system calls the API needs, plus the soft kernel's module parameters."""

    name: str
    open: Callable[[str, int], int]
    ioctl: Callable[..., int]
    mmap: Callable[[int, int], object]
    close: Callable[[int], None]
    params: dict = field(default_factory=dict)
    guest_instructions: Callable[[int], object] = lambda vcpu_fd: None

    def open_device(self):
        """Open /dev/kvm (applying module parameters first, for the soft kernel)."""
        if self.params:
            apply_soft_params(self.params)
        return self.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
INT_MAX = (1 << 31) - 1


def _host_ioctl(fd, request, arg=0):
    if isinstance(arg, int) and not -INT_MAX - 1 <= arg <= INT_MAX:
        # fcntl.ioctl passes an int argument as a C int; the kernel takes an unsigned
        # long (KVM_SET_TSS_ADDR 0xfffbd000), so larger values go through libc directly.
        ret = _libc.ioctl(fd, request, arg)
        if ret < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return ret
    # mutate_flag: a writable buffer (a ctypes struct) is filled in place, as in C.
    return compat.ioctl(fd, request, arg, True)


def _host_mmap(fd, length):
    return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def host_backend():
    """The host's real KVM."""
    return Backend("host", os.open, _host_ioctl, _host_mmap, os.close)


def soft_backend(params=None):
    """kvmpy's kernel; ``params`` are its module parameters (e.g. ``ept=False``)."""
    def soft_mmap(fd, length):
        return syscalls.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def soft_ioctl(fd, request, arg=0):
        return syscalls.ioctl(fd, request, arg)

    return Backend("soft", syscalls.open, soft_ioctl, soft_mmap, syscalls.close,
                   dict(params or {}), _soft_guest_instructions)


def _soft_guest_instructions(vcpu_fd):
    """The retired-instruction count of the soft processor behind vCPU file ``vcpu_fd``
    (the file's private data is the ``kvm_vcpu``)."""
    return kernel_fs.lookup_file(vcpu_fd).private_data.arch.cpu.icount


def apply_soft_params(params):
    """Set the soft kernel's module parameters (``kvmpy.kernel.x86.params.set``)."""
    kernel_params.set(**params)


def get_backend(backend, params=None):
    """A :class:`Backend` from a name ("soft" or "host") or a Backend itself."""
    if isinstance(backend, Backend):
        return backend
    if backend == "host":
        if params:
            raise ValueError("module parameters are only for the soft backend")
        return host_backend()
    if backend == "soft":
        return soft_backend(params)
    raise ValueError(f"unknown backend {backend!r} (expected 'soft' or 'host')")
