"""The initramfs: Debian's static busybox, its applets as symbolic links, and ``init``.

Linux unpacks the archive into its rootfs and runs ``/init``; before that it opens
``/dev/console`` as init's standard streams, so the archive carries that node (the
devtmpfs that /init mounts over /dev comes later). The archive is gzip'd (``RD_GZIP``)
with a zero timestamp, so that the same busybox and recipe give the same bytes.
"""

import gzip
import os
import subprocess

from kvmpy.guests.linux import INIT_SCRIPT
from kvmpy.guests.linux.cpio import CpioWriter

BUSYBOX = "/bin/busybox"
DIRECTORIES = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root")
TTYAUX_MAJOR = 5
CONSOLE_MINOR = 1


def busybox_missing(busybox=BUSYBOX):
    """True when there is no busybox to build the initramfs from (apt-get install busybox-static)."""
    return not os.access(busybox, os.X_OK)


def applets(busybox=BUSYBOX):
    """The applets' install paths (``bin/ls``, ``sbin/poweroff``...), as busybox lists them."""
    out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True)
    return sorted(line.strip() for line in out.stdout.splitlines() if line.strip())


def build_initramfs(busybox=BUSYBOX):
    """The gzip'd newc archive's bytes."""
    cpio = CpioWriter()
    for d in DIRECTORIES:
        cpio.directory(d)
    cpio.char_device("dev/console", TTYAUX_MAJOR, CONSOLE_MINOR)
    with open(busybox, "rb") as f:
        cpio.file("bin/busybox", f.read(), 0o755)
    for path in applets(busybox):
        if path != "bin/busybox":
            cpio.symlink(path, "/bin/busybox")
    cpio.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    return gzip.compress(cpio.getvalue(), compresslevel=9, mtime=0)
