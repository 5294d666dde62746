"""The one home of what kvmpy needs from CPython's standard library that PyPy does differently.

``ioctl`` and ``mmap`` are ``fcntl.ioctl`` and ``mmap.mmap`` as CPython 3.11 defines them,
on any interpreter (on CPython they are those functions).  kvmpy's host backend and
kvmpy's own ``syscalls`` (for descriptors that are not kvmpy's) rely on that contract, and
the tests compare kvmpy with the host's ``/dev/kvm`` through it.  PyPy's ``fcntl.ioctl``
departs from it in three ways that matter to KVM callers:

* an int argument with ``mutate_flag`` is a TypeError (CPython ignores the flag);
* an int argument reaches the kernel sign-extended to 64 bits (CPython passes a C int,
  which the kernel's ``unsigned long`` sees zero-extended: KVM_SET_TSS_ADDR 0xfffbd000);
* a mutable buffer is not copied back when the call fails (KVM_GET_MSR_INDEX_LIST
  writes the needed count, then fails with E2BIG).

So on PyPy ``ioctl`` makes the system call through libc with CPython's rules: an int is
a C int; a writable buffer with ``mutate_flag`` of at most 1024 bytes is copied into a
1025-byte buffer (NUL after it) and copied back whatever the outcome, a larger one is
passed in place; any other buffer is copied (at most 1024 bytes) and the copy returned.

``eventfd``, ``eventfd_read``, ``eventfd_write`` and the ``EFD_*`` flags are the ``os``
functions of CPython 3.10+; PyPy 3.9's ``os`` has none of them, so there they call libc's
eventfd(2) and read or write the 8-byte counter.

PyPy's ``mmap.mmap`` raises ValueError for a negative offset and TypeError for a negative
length, where CPython raises OverflowError (``check_mmap_range``).

``string_buffer`` is ``ctypes.create_string_buffer(init, size)``.  PyPy's fills the array
one element at a time through Python-level ctypes code: 250 us for the 1025 bytes of an
ioctl's copy (CPython: 2 us), a cost on every ioctl with a struct.  On PyPy it is a ctypes
array over a bytearray instead (6 us).
"""

import ctypes
import fcntl
import mmap as _mmap
import os
import platform

IOCTL_BUFSZ = 1024              # CPython's fcntl.ioctl copy-buffer size


_sys_ioctl = ctypes.CDLL(None, use_errno=True).ioctl
_sys_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]


def _checked(ret: int) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def _string_buffer_over_bytearray(init: bytes, size: int):
    """A ``c_char * size`` array holding ``init`` then NULs, over a bytearray it keeps alive."""
    return (ctypes.c_char * size).from_buffer(bytearray(init.ljust(size, b"\0")))


def _ioctl(fd, request, arg=0, mutate_flag=True):
    """fcntl.ioctl with CPython's semantics (see the module docstring)."""
    fd = fd if isinstance(fd, int) else fd.fileno()
    request &= 0xFFFFFFFF       # CPython converts with an unsigned-int mask
    if isinstance(arg, int):
        if not -(1 << 31) <= arg < (1 << 31):
            raise OverflowError("signed integer is greater than maximum")
        return _checked(_sys_ioctl(fd, request, arg & 0xFFFFFFFF))
    if isinstance(arg, str):
        arg = arg.encode()
    view = memoryview(arg).cast("B")
    size = view.nbytes
    if mutate_flag and not view.readonly and size > IOCTL_BUFSZ:
        return _checked(_sys_ioctl(fd, request, ctypes.addressof(ctypes.c_char.from_buffer(view))))
    if size > IOCTL_BUFSZ:
        raise ValueError("ioctl string arg too long")
    buf = string_buffer(view.tobytes(), IOCTL_BUFSZ + 1)
    ret = _sys_ioctl(fd, request, ctypes.addressof(buf))
    if mutate_flag and not view.readonly:
        view[:] = buf.raw[:size]
        return _checked(ret)
    _checked(ret)
    return buf.raw[:size]


def check_mmap_range(length: int, offset: int) -> None:
    """CPython's mmap.mmap argument checks that PyPy makes with other exception types."""
    if length < 0:
        raise OverflowError("memory mapped length must be positive")
    if offset < 0:
        raise OverflowError("memory mapped offset must be positive")


def _mmap_checked(fileno, length, flags=_mmap.MAP_SHARED, prot=_mmap.PROT_READ | _mmap.PROT_WRITE,
                  access=_mmap.ACCESS_DEFAULT, offset=0):
    """mmap.mmap with CPython's checks of the length and offset."""
    check_mmap_range(length, offset)
    return _mmap.mmap(fileno, length, flags, prot, access=access, offset=offset)


if platform.python_implementation() == "CPython":
    ioctl, mmap, string_buffer = fcntl.ioctl, _mmap.mmap, ctypes.create_string_buffer
else:
    ioctl, mmap, string_buffer = _ioctl, _mmap_checked, _string_buffer_over_bytearray


EFD_SEMAPHORE, EFD_CLOEXEC, EFD_NONBLOCK = 1, os.O_CLOEXEC, os.O_NONBLOCK   # <sys/eventfd.h>

_libc_eventfd = ctypes.CDLL(None, use_errno=True).eventfd
_libc_eventfd.argtypes = [ctypes.c_uint, ctypes.c_int]


def _eventfd(initval: int, flags: int = EFD_CLOEXEC) -> int:
    return _checked(_libc_eventfd(initval, flags))


def _eventfd_read(fd: int) -> int:
    return int.from_bytes(os.read(fd, 8), "little")


def _eventfd_write(fd: int, value: int) -> None:
    os.write(fd, value.to_bytes(8, "little"))


if hasattr(os, "eventfd"):
    eventfd, eventfd_read, eventfd_write = os.eventfd, os.eventfd_read, os.eventfd_write
else:
    eventfd, eventfd_read, eventfd_write = _eventfd, _eventfd_read, _eventfd_write
