"""A minimal VFS: struct file, file_operations, the descriptor table, ioctl dispatch, and
user-memory access (copy_from_user / copy_to_user).

"Everything is a file" is how KVM talks to user space (seed step 2): ``/dev/kvm`` is a misc
device, a VM and each vCPU are anonymous-inode files.  kvmpy keeps that shape.  Every kvmpy
file is installed under a **real** descriptor number, a ``memfd`` owned by the file, so
numbers are unique in the process, survive ``poll``/``fstat``, and the vCPU's descriptor can
be ``mmap``-ed to share ``kvm_run`` exactly as the kernel's page is shared.

Errors are raised as ``OSError`` carrying the kernel's errno (see ``kernel_error``), which the
syscall layer lets through unchanged, like a failing system call.

User pointers are real addresses in this process.  ``copy_from_user``/``copy_to_user`` read
and write them through ``process_vm_readv``/``process_vm_writev`` on our own pid, so a bad
pointer is an ``EFAULT`` rather than a crash -- the kernel's fault-tolerant user access.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading

from .. import compat

__all__ = [
    "File", "FileOperations", "MiscDevice", "kernel_error", "noop_llseek",
    "get_unused_fd_flags", "put_unused_fd", "fd_install", "anon_inode_getfile", "anon_inode_getfd",
    "lookup_file", "fdget", "fget", "fput", "dup_fd", "vfs_ioctl", "do_vfs_ioctl", "sys_ioctl", "vfs_mmap_check", "vfs_mmap", "close_fd", "misc_register",
    "misc_deregister", "misc_is_registered", "misc_open", "copy_from_user", "copy_to_user", "user_buffer",
]


def kernel_error(code: int) -> OSError:
    """The exception a failing kernel function raises: ``raise kernel_error(errno.EINVAL)``."""
    return OSError(code, os.strerror(code))


# --------------------------------------------------------------------------------------
# struct file_operations, struct file
# --------------------------------------------------------------------------------------
class FileOperations:
    """struct file_operations: the callbacks a file's owner provides.

    ``unlocked_ioctl(file, cmd, arg)``, ``mmap(file, length, offset, flags, prot, access) -> mmap``,
    ``release(inode, file)``, ``llseek(file, offset, whence)``, ``open(inode, file)``.
    """

    __slots__ = ("name", "open", "release", "unlocked_ioctl", "compat_ioctl", "mmap", "llseek")

    def __init__(self, name, *, open=None, release=None, unlocked_ioctl=None, compat_ioctl=None,
                 mmap=None, llseek=None):
        self.name = name
        self.open = open
        self.release = release
        self.unlocked_ioctl = unlocked_ioctl
        self.compat_ioctl = compat_ioctl
        self.mmap = mmap
        self.llseek = llseek

    def __repr__(self):
        return "<file_operations %s>" % self.name


def noop_llseek(file, offset, whence):
    """llseek that leaves the position alone (what kvm's files use)."""
    return file.f_pos


class File:
    """struct file: operations, private data, open flags and a reference count."""

    __slots__ = ("f_op", "private_data", "f_flags", "f_count", "f_pos", "name", "memfd", "fd",
                 "inode", "__weakref__")

    def __init__(self, name, fops, private_data, flags):
        self.name = name
        self.f_op = fops
        self.private_data = private_data
        self.f_flags = flags
        self.f_count = 1
        self.f_pos = 0
        self.memfd = None       # the real descriptor backing this file (set by fd_install)
        self.fd = None
        self.inode = None       # (st_dev, st_ino) of the descriptor, to detect a foreign close

    def __repr__(self):
        return "<file %s fd=%s count=%d>" % (self.name, self.fd, self.f_count)


# --------------------------------------------------------------------------------------
# The descriptor table
# --------------------------------------------------------------------------------------
_fdtable: dict[int, File] = {}
_fd_lock = threading.RLock()


def get_unused_fd_flags(flags: int, name: str = "kvmpy", share_fd: int | None = None) -> int:
    """Reserve a real, unique descriptor number.

    A fresh ``memfd`` normally; with ``share_fd`` a duplicate of that descriptor, so that the
    new file's descriptor maps the same memory (the vCPU descriptor and its kvm_run pages).
    """
    if share_fd is not None:
        fd = os.dup(share_fd)
        os.set_inheritable(fd, not flags & os.O_CLOEXEC)
        return fd
    return os.memfd_create(name, os.MFD_CLOEXEC if flags & os.O_CLOEXEC else 0)


def put_unused_fd(fd: int) -> None:
    """Give back a number reserved by get_unused_fd_flags that was never installed."""
    os.close(fd)


def fd_install(fd: int, file: File) -> None:
    """Publish ``file`` under descriptor ``fd``; from now on user space can use it."""
    st = os.fstat(fd)
    with _fd_lock:
        file.fd = file.memfd = fd
        file.inode = (st.st_dev, st.st_ino)
        _fdtable[fd] = file


def anon_inode_getfile(name: str, fops: FileOperations, priv, flags: int) -> File:
    """A new file with no path, bound to ``fops`` (seed steps 3-4)."""
    return File(name, fops, priv, flags)


def anon_inode_getfd(name: str, fops: FileOperations, priv, flags: int,
                     share_fd: int | None = None) -> int:
    """anon_inode_getfile + fd_install; returns the new descriptor number."""
    fd = get_unused_fd_flags(flags, name, share_fd)
    try:
        file = anon_inode_getfile(name, fops, priv, flags)
    except BaseException:
        put_unused_fd(fd)
        raise
    fd_install(fd, file)
    return fd


def lookup_file(fd: int) -> File | None:
    """The kvmpy file installed at ``fd``, or None if the descriptor is not kvmpy's.

    A descriptor closed behind kvmpy's back (``os.close``) and perhaps reused for something
    else no longer names the file: the stale entry is dropped along with its reference.
    """
    file = _fdtable.get(fd)
    if file is None:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == file.inode:
            return file
    except OSError:
        pass
    with _fd_lock:
        stale = _fdtable.get(fd) is file
        if stale:
            del _fdtable[fd]
    if stale:
        fput(file)
    return None


def fdget(fd: int) -> File:
    """The file installed at ``fd`` (EBADF if none), without taking a reference."""
    file = lookup_file(fd)
    if file is None:
        raise kernel_error(errno.EBADF)
    return file


def fget(fd) -> File:
    """The file at ``fd`` with a new reference (drop it with fput)."""
    with _fd_lock:
        file = fdget(fd)
        file.f_count += 1
    return file


def fput(file: File) -> None:
    """Drop a reference; the last one calls the owner's ``release``."""
    with _fd_lock:
        file.f_count -= 1
        last = file.f_count == 0
    if last and file.f_op.release is not None:
        file.f_op.release(None, file)


def dup_fd(oldfd: int, newfd: int) -> None:
    """dup(2)'s part in the descriptor table, once the host has duplicated ``oldfd`` to
    ``newfd``: a kvmpy file that ``newfd`` named before is released (dup2 closes it), and
    ``newfd`` names ``oldfd``'s file, with a reference of its own (one struct file, two
    descriptors, as in the kernel)."""
    lookup_file(newfd)                  # drops the entry of a file dup2 replaced
    with _fd_lock:
        file = lookup_file(oldfd)
        if file is None:
            return
        file.f_count += 1
        _fdtable[newfd] = file


def close_fd(fd: int) -> None:
    """close(2): remove the descriptor and drop its reference to the file."""
    with _fd_lock:
        file = _fdtable.pop(fd, None)
    if file is None:
        raise kernel_error(errno.EBADF)
    try:
        os.close(fd)
    finally:
        fput(file)


# --------------------------------------------------------------------------------------
# ioctl and mmap
# --------------------------------------------------------------------------------------
# The generic ioctls of fs/ioctl.c (asm-generic/ioctls.h, linux/fs.h)
FIGETBSZ = 0x0002
FIONBIO = 0x5421
FIONCLEX = 0x5450
FIOCLEX = 0x5451
FIOASYNC = 0x5452
FIOQSIZE = 0x5460
FS_IOC_FIEMAP = 0xC020660B
FASYNC = os.O_ASYNC
PSEUDO_FS_BLOCKSIZE = 4096      # s_blocksize of anon_inodefs and devtmpfs (PAGE_SIZE)


def _get_user_int(arg: int) -> int:
    """get_user() of an ``int __user *``."""
    return int.from_bytes(copy_from_user(arg, 4), "little", signed=True)


def ioctl_fionbio(file: File, fd: int, arg: int) -> int:
    """FIONBIO: O_NONBLOCK on or off, for any file (the flag lives in the open file)."""
    on = _get_user_int(arg)
    file.f_flags = file.f_flags | os.O_NONBLOCK if on else file.f_flags & ~os.O_NONBLOCK
    os.set_blocking(fd, not on)
    return 0


def ioctl_fioasync(file: File, arg: int) -> int:
    """FIOASYNC: kvmpy's files have no ``fasync``, so changing the FASYNC state is ENOTTY."""
    flag = FASYNC if _get_user_int(arg) else 0
    if (flag ^ file.f_flags) & FASYNC:
        raise kernel_error(errno.ENOTTY)
    return 0


def do_vfs_ioctl(file: File, fd: int, cmd: int, arg: int):
    """The ioctls fs/ioctl.c answers for every file before the file's own ``unlocked_ioctl``;
    None (the kernel's -ENOIOCTLCMD) for any other command.

    kvmpy's files are a character device and anonymous inodes: no size (FIOQSIZE is ENOTTY),
    no extent map (FS_IOC_FIEMAP is EOPNOTSUPP), and their pseudo filesystem's block size.
    FIONREAD and FIBMAP only mean something for regular files: here they reach the owner.
    """
    if cmd == FIOCLEX:
        os.set_inheritable(fd, False)
        return 0
    if cmd == FIONCLEX:
        os.set_inheritable(fd, True)
        return 0
    if cmd == FIONBIO:
        return ioctl_fionbio(file, fd, arg)
    if cmd == FIOASYNC:
        return ioctl_fioasync(file, arg)
    if cmd == FIOQSIZE:
        raise kernel_error(errno.ENOTTY)
    if cmd == FS_IOC_FIEMAP:
        raise kernel_error(errno.EOPNOTSUPP)
    if cmd == FIGETBSZ:
        copy_to_user(arg, ctypes.c_int(PSEUDO_FS_BLOCKSIZE))
        return 0
    return None


def sys_ioctl(file: File, fd: int, cmd: int, arg: int):
    """ioctl(2) once the argument is a user address: the VFS's own ioctls, then the file's."""
    ret = do_vfs_ioctl(file, fd, cmd, arg)
    if ret is not None:
        return ret
    return vfs_ioctl(file, cmd, arg)


def vfs_ioctl(file: File, cmd: int, arg) -> int:
    """Dispatch to the file's ``unlocked_ioctl`` (ENOTTY if it has none)."""
    if file.f_op.unlocked_ioctl is None:
        raise kernel_error(errno.ENOTTY)
    return file.f_op.unlocked_ioctl(file, cmd, arg)


MAP_TYPE, MAP_SHARED, MAP_SHARED_VALIDATE, PROT_WRITE = 0x0F, 0x01, 0x03, 0x02
O_ACCMODE = 0o3                 # <fcntl.h>; PyPy's os module lacks it


def vfs_mmap_check(file: File, flags: int, prot: int) -> None:
    """do_mmap's checks of a file mapping: a shared writable mapping needs a file open for
    writing, any mapping one open for reading (EACCES), and the file must have an ``mmap``
    (ENODEV).

    A kvmpy file that has one maps its own descriptor's memory (the vCPU's kvm_run pages are
    the memfd its descriptor duplicates), so a caller that passes these checks may map the
    descriptor with the host's mmap (the LD_PRELOAD library does, at the client's address).
    """
    mode = file.f_flags & O_ACCMODE
    if flags & MAP_TYPE in (MAP_SHARED, MAP_SHARED_VALIDATE) and prot & PROT_WRITE and mode == os.O_RDONLY:
        raise kernel_error(errno.EACCES)
    if mode == os.O_WRONLY:
        raise kernel_error(errno.EACCES)
    if file.f_op.mmap is None:
        raise kernel_error(errno.ENODEV)


def vfs_mmap(file: File, length: int, offset: int, flags: int, prot: int, access: int):
    """mmap(2) of a file: vfs_mmap_check, then the owner's ``mmap`` returns the mapping."""
    vfs_mmap_check(file, flags, prot)
    return file.f_op.mmap(file, length, offset, flags, prot, access)


# --------------------------------------------------------------------------------------
# Misc devices
# --------------------------------------------------------------------------------------
class MiscDevice:
    """struct miscdevice: ``{minor, name, fops}``; registered as ``/dev/<name>``."""

    __slots__ = ("minor", "name", "fops")

    def __init__(self, minor: int, name: str, fops: FileOperations):
        self.minor = minor
        self.name = name
        self.fops = fops

    @property
    def nodename(self) -> str:
        return "/dev/" + self.name


_misc_devices: dict[str, MiscDevice] = {}


def misc_register(misc: MiscDevice) -> None:
    """Bind the device's file operations to its node (seed step 2)."""
    if misc.nodename in _misc_devices:
        raise kernel_error(errno.EBUSY)
    _misc_devices[misc.nodename] = misc


def misc_is_registered(nodename: str) -> bool:
    return os.path.normpath(nodename) in _misc_devices


def misc_deregister(misc: MiscDevice) -> None:
    _misc_devices.pop(misc.nodename, None)


def misc_lookup(path: str, flags: int) -> MiscDevice:
    """The path walk of open(2) (fs/namei.c), over the nodes kvmpy registers.

    A device node is not a directory: a component after it (``/dev/kvm/``, ``/dev/kvm/.``,
    ``/dev/kvm/..``) or O_DIRECTORY is ENOTDIR; O_CREAT|O_EXCL of an existing node is EEXIST.
    """
    walked = []
    parts = os.path.join(os.getcwd(), path).split("/")
    for i, part in enumerate(parts):
        if part in ("", "."):
            continue
        if part == "..":
            walked = walked[:-1]
            continue
        walked.append(part)
        misc = _misc_devices.get("/" + "/".join(walked))
        if misc is None:
            continue
        if i + 1 < len(parts) or flags & os.O_DIRECTORY:
            raise kernel_error(errno.ENOTDIR)
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise kernel_error(errno.EEXIST)
        return misc
    raise kernel_error(errno.ENOENT)


def misc_open(path: str, flags: int) -> int:
    """open(2) of a misc device node: a new file with the device's fops."""
    misc = misc_lookup(path, flags)
    fd = get_unused_fd_flags(flags, misc.name)
    file = File(misc.name, misc.fops, misc, flags)
    try:
        if misc.fops.open is not None:
            misc.fops.open(None, file)
    except BaseException:
        put_unused_fd(fd)
        raise
    fd_install(fd, file)
    return fd


# --------------------------------------------------------------------------------------
# User memory access
# --------------------------------------------------------------------------------------
class _iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_writev.restype = ctypes.c_ssize_t
_PID = os.getpid()
_TASK_SIZE = 1 << 47

# The ioctl argument buffer the syscall layer is passing in this thread: [start, end).
# Accesses that start inside it but run past its end are EFAULT (the host would scribble on
# whatever follows; kvmpy refuses), accesses entirely inside it take a fast memmove.
_current = threading.local()


class user_buffer:
    """Context manager used by the syscall layer: declares the ioctl argument buffer."""

    __slots__ = ("start", "end", "saved")

    def __init__(self, start: int, size: int):
        self.start, self.end = start, start + size

    def __enter__(self):
        self.saved = getattr(_current, "buf", None)
        _current.buf = (self.start, self.end)
        return self

    def __exit__(self, *exc):
        _current.buf = self.saved


def _in_buffer(addr: int, n: int) -> bool:
    buf = getattr(_current, "buf", None)
    if buf is None or not buf[0] <= addr < buf[1]:
        return False
    if addr + n > buf[1]:
        raise kernel_error(errno.EFAULT)
    return True


def _check_range(addr: int, n: int) -> None:
    if addr < 0 or n < 0 or addr + n > _TASK_SIZE:
        raise kernel_error(errno.EFAULT)


def _vm_rw(fn, addr: int, local, n: int) -> None:
    liov = _iovec(ctypes.cast(local, ctypes.c_void_p), n)
    riov = _iovec(addr, n)
    done = fn(_PID, ctypes.byref(liov), 1, ctypes.byref(riov), 1, 0)
    if done != n:
        raise kernel_error(errno.EFAULT)


def copy_from_user(addr: int, n: int) -> bytes:
    """Read ``n`` bytes at user address ``addr`` (EFAULT if not readable)."""
    if n == 0:
        return b""
    if _in_buffer(addr, n):
        return ctypes.string_at(addr, n)
    _check_range(addr, n)
    out = compat.string_buffer(b"", n)
    _vm_rw(_libc.process_vm_readv, addr, out, n)
    return out.raw


def copy_to_user(addr: int, data) -> None:
    """Write ``data`` (bytes or a ctypes object) at user address ``addr`` (EFAULT if not writable)."""
    data = bytes(data)
    n = len(data)
    if n == 0:
        return
    if _in_buffer(addr, n):
        ctypes.memmove(addr, data, n)
        return
    _check_range(addr, n)
    src = compat.string_buffer(data, n)
    _vm_rw(_libc.process_vm_writev, addr, src, n)
