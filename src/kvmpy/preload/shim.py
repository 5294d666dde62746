"""The Python entry points of the LD_PRELOAD library (kvmpy_embed.c calls them, GIL held).

Each is a system call as the C caller sees it: the arguments are C integers (the ioctl
argument a user address), and the result is the kernel's return value, a negative errno for
a failure -- so the C side needs no knowledge of Python exceptions.  The calls go to
``kvmpy.syscalls``, the layer Python VMMs call, and to the kernel's descriptor table for the
parts of dup(2) and mmap(2) that the host's calls do not do for kvmpy's files.

``KVMPY_TRACE`` set in the environment: every failing ioctl is logged to stderr with its name
and errno, so a user sees what a new client needs that kvmpy lacks.
"""

from __future__ import annotations

import errno
import os
import sys

from kvmpy import syscalls
from kvmpy.kernel import fs
from kvmpy.uapi import kvm as uapi

TRACE = bool(os.environ.get("KVMPY_TRACE"))


def open(path: bytes, flags: int) -> int:  # noqa: A001 - the system call's name
    try:
        return syscalls.open(os.fsdecode(path), flags)
    except OSError as e:
        return -e.errno


def ioctl(fd: int, request: int, arg: int):
    """(result, whether the result is a descriptor of a kvmpy file): the library tracks the
    descriptors that KVM_CREATE_VM, KVM_CREATE_VCPU and the like return."""
    try:
        ret = syscalls.ioctl(fd, request, arg)
    except OSError as e:
        if TRACE:
            file = fs.lookup_file(fd)
            print("kvmpy: ioctl(%d <%s>, %s, %#x) = -%s" % (
                fd, file.name if file else "?", uapi.ioctl_name(request), arg,
                errno.errorcode.get(e.errno, e.errno)), file=sys.stderr, flush=True)
        return -e.errno, False
    return ret, ret > 0 and fs.lookup_file(ret) is not None


def close(fd: int) -> int:
    try:
        syscalls.close(fd)
    except OSError as e:
        return -e.errno
    return 0


def dup(oldfd: int, newfd: int) -> int:
    fs.dup_fd(oldfd, newfd)
    return 0


def mmap_check(fd: int, prot: int, flags: int) -> int:
    """0 if the host may map the descriptor (see fs.vfs_mmap_check), else -errno."""
    file = fs.lookup_file(fd)
    if file is None:
        return 0
    try:
        fs.vfs_mmap_check(file, flags, prot)
    except OSError as e:
        return -e.errno
    return 0
