"""open / ioctl / mmap / close for kvmpy's ``/dev/kvm`` and the files it creates.

Each call behaves like its host counterpart on the real device -- ``os.open(path, flags)``,
``fcntl.ioctl(fd, request, arg, mutate_flag)``, ``mmap.mmap(fd, length, MAP_SHARED,
PROT_READ | PROT_WRITE, offset=offset)`` and ``os.close(fd)`` -- so a VMM written against one
runs on the other: same argument conversions, same return values, in-place updates of mutable
buffers, and ``OSError`` with the same errno.  Descriptors that are not kvmpy's are handed to
the host calls unchanged.

The ioctl argument reaches the kernel as a user address, as in C: for a buffer, CPython's
``fcntl.ioctl`` copies up to 1024 bytes into a temporary buffer (1025 bytes) and passes its
address, or passes the buffer's own address when it is larger; kvmpy does the same, so the
kernel's ``copy_from_user``/``copy_to_user`` see exactly what the host kernel would.
"""

from __future__ import annotations

import ctypes
import errno
import mmap as _mmap
import os as _os

from . import compat
from .kernel import fs

__all__ = ["open", "ioctl", "mmap", "close", "KVM_DEVICE"]

KVM_DEVICE = "/dev/kvm"


MODULE_NAMES = {"vmx": "kvm_intel", "svm": "kvm_amd"}


def _load_kvm() -> None:
    """What ``modprobe kvm_intel`` / ``modprobe kvm_amd`` does, on the first open of the device.

    The vendor is the module parameter ``kvmpy.kernel.x86.params.vendor`` (``--vendor``), or
    the environment variable ``KVMPY_VENDOR`` when set.  Like the kernel, a process has one
    vendor module: once one is loaded, asking for the other fails with EEXIST (kvm_init's
    "already loaded vendor module") instead of silently running on the loaded one.
    """
    # Local, as modprobe loads a module: the soft kernel (and the processor under it) is
    # imported at the first open of the device, not by every VMM that imports this module.
    from kvmpy.kernel.x86 import params, x86
    from kvmpy.kernel.x86.svm import svm
    from kvmpy.kernel.x86.vmx import vmx
    vendor = _os.environ.get("KVMPY_VENDOR") or params.vendor
    if vendor not in MODULE_NAMES:
        raise OSError(errno.ENODEV, "no KVM vendor module %r (expected vmx or svm)" % vendor)
    if fs.misc_is_registered(KVM_DEVICE):
        loaded = x86.kvm_x86_ops().name
        if loaded != vendor:
            raise OSError(errno.EEXIST, "%s is loaded: cannot load %s in the same process"
                          % (MODULE_NAMES[loaded], MODULE_NAMES[vendor]))
        return
    {"vmx": vmx.vmx_init, "svm": svm.svm_init}[vendor]()


def open(path, flags: int = _os.O_RDWR, mode: int = 0o777) -> int:  # noqa: A001 - mirrors os.open
    """open(2) of kvmpy's device node; any other path does not exist for kvmpy (ENOENT)."""
    path = _os.fsdecode(path)
    if _os.path.normpath(path) == KVM_DEVICE:
        _load_kvm()
    try:
        return fs.misc_open(path, flags)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def _fileno(fd) -> int:
    if isinstance(fd, int):
        if fd < 0:
            raise ValueError("file descriptor cannot be a negative integer (%d)" % fd)
        return fd
    if hasattr(fd, "fileno"):
        return _fileno(fd.fileno())
    raise TypeError("argument must be an int, or have a fileno() method.")


def _ret(ret) -> int:
    """A kernel function's return value as the system call returns it (an int >= 0)."""
    return 0 if ret is None else int(ret)


def _call(file, fd: int, request: int, arg, buf_addr: int | None, buf_size: int):
    if buf_addr is None:
        return _ret(fs.sys_ioctl(file, fd, request, arg))
    with fs.user_buffer(buf_addr, buf_size):
        return _ret(fs.sys_ioctl(file, fd, request, arg))


def ioctl(fd, request: int, arg=0, mutate_flag: bool = True):
    """fcntl.ioctl for kvmpy's files (see the module docstring for the argument rules)."""
    fd = _fileno(fd)
    request = int(request) & 0xFFFFFFFF   # CPython converts with an unsigned-int mask
    file = fs.lookup_file(fd)
    if file is None:
        return compat.ioctl(fd, request, arg, mutate_flag)
    if isinstance(arg, int):
        # fcntl.ioctl passes a C int (32 bits); larger values are taken as the kernel's
        # unsigned long, as a C caller (or libc's ioctl) would pass them.
        if -(1 << 31) <= arg < (1 << 31):
            arg &= 0xFFFFFFFF
        elif not -(1 << 63) <= arg < (1 << 64):
            raise OverflowError("ioctl argument out of range")
        return _call(file, fd, request, arg & 0xFFFFFFFFFFFFFFFF, None, 0)

    mutable = _writable_view(arg)
    if mutable is not None and mutate_flag:
        n = mutable.nbytes
        if n > compat.IOCTL_BUFSZ:
            # the buffer itself is the user memory the kernel reads and writes
            c = (ctypes.c_char * n).from_buffer(mutable)
            try:
                return _call(file, fd, request, ctypes.addressof(c), ctypes.addressof(c), n)
            finally:
                del c
        tmp = compat.string_buffer(mutable.tobytes(), compat.IOCTL_BUFSZ + 1)
        try:
            return _call(file, fd, request, ctypes.addressof(tmp), ctypes.addressof(tmp), compat.IOCTL_BUFSZ + 1)
        finally:
            mutable[:] = tmp.raw[:n]

    data = _readonly_bytes(arg) if mutable is None else mutable.tobytes()
    if len(data) > compat.IOCTL_BUFSZ:
        raise ValueError("ioctl string arg too long")
    tmp = compat.string_buffer(data, compat.IOCTL_BUFSZ + 1)
    _call(file, fd, request, ctypes.addressof(tmp), ctypes.addressof(tmp), compat.IOCTL_BUFSZ + 1)
    return tmp.raw[:len(data)]


def _writable_view(arg):
    try:
        view = memoryview(arg)
    except TypeError:
        return None
    if view.readonly:
        return None
    if not view.c_contiguous:
        raise TypeError("ioctl: buffer must be contiguous")
    return view.cast("B")


def _readonly_bytes(arg) -> bytes:
    if isinstance(arg, str):
        return arg.encode()
    try:
        return memoryview(arg).tobytes()
    except TypeError:
        # same wording as fcntl.ioctl for an argument it cannot use
        raise TypeError("ioctl requires a file or file descriptor, an integer and optionally an "
                        "integer or buffer argument") from None


def mmap(fd, length: int, flags: int = _mmap.MAP_SHARED,
         prot: int = _mmap.PROT_READ | _mmap.PROT_WRITE, access: int = _mmap.ACCESS_DEFAULT,
         offset: int = 0):
    """mmap.mmap(fd, length, flags, prot, access, offset) for a kvmpy file.

    Only the vCPU file can be mapped (its kvm_run pages, shared with the kernel); the other
    kvmpy files have no mmap, ENODEV, as on the host.
    """
    if fd == -1:                             # anonymous memory, e.g. guest RAM
        return _mmap.mmap(-1, length, flags, prot, access, offset)
    fd = _fileno(fd)
    file = fs.lookup_file(fd)
    if file is None:
        return compat.mmap(fd, length, flags, prot, access, offset)
    compat.check_mmap_range(length, offset)
    if length == 0 or offset % _mmap.ALLOCATIONGRANULARITY:
        raise fs.kernel_error(errno.EINVAL)
    return fs.vfs_mmap(file, length, offset, flags, prot, access)


def close(fd) -> None:
    """os.close."""
    fd = _fileno(fd) if not isinstance(fd, int) else fd
    if fs.lookup_file(fd) is None:
        _os.close(fd)
        return
    fs.close_fd(fd)
