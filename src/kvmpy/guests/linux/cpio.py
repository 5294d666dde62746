"""A writer of "newc" cpio archives, the format Linux unpacks as an initramfs
(Documentation/driver-api/early-userspace/buffer-format.rst).

Each member is a 110-byte ASCII header -- the magic ``070701`` and thirteen 8-digit hex
fields -- then the NUL-terminated name, padded to a multiple of 4 bytes, then the data,
padded the same way. The archive ends with a member named ``TRAILER!!!``. The kernel needs
no more than that: a directory, a regular file, a symbolic link (the target is the data) or
a device node (``rdevmajor``/``rdevminor``) per member; inode numbers only have to be
distinct for files that are not hard links.

Every field is fixed (owner root, mtime 0), so the same members give the same bytes: the
archive can be committed and checked against its recipe.
"""

import stat

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
ALIGN = 4


def _pad(length):
    return b"\0" * (-length % ALIGN)


class CpioWriter:
    """Collects members in order; :meth:`getvalue` gives the archive's bytes."""

    def __init__(self):
        self._chunks = []
        self._next_ino = 1

    def _member(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        encoded = name.encode() + b"\0"
        fields = (self._next_ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        self._next_ino += 1
        header = MAGIC + b"".join(b"%08x" % f for f in fields)
        self._chunks += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]

    def directory(self, name, perm=0o755):
        self._member(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name, data, perm=0o644):
        self._member(name, stat.S_IFREG | perm, bytes(data))

    def symlink(self, name, target):
        self._member(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name, major, minor, perm=0o600):
        self._member(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def getvalue(self):
        """The archive so far, closed by the trailer (the writer can go on after it)."""
        trailer = CpioWriter()
        trailer._member(TRAILER, 0, nlink=1)
        return b"".join(self._chunks + trailer._chunks)
