"""kvmpy's Linux guest: a small x86-64 kernel and a busybox initramfs, for booting Linux on
the VMM (``kvmpy run -kernel bzImage -initrd initramfs.cpio.gz -append console=ttyS0``).

The recipe is here: ``kvmpy.config`` (the options merged over ``make tinyconfig``),
``init`` (the initramfs's /init), :mod:`.cpio` and :mod:`.initramfs` (the archive),
:mod:`.build` (Debian's linux-source-6.1 built out of tree). The built ``bzImage`` is
committed beside it with ``build.json``, which records the hash of the recipe it was built
from, so a test can tell when it is stale.  The initramfs is not committed (busybox alone
is 1 MB gzip'd): it is made in a second from the host's static busybox.

    python -m kvmpy.guests.linux build                  # the kernel (minutes)
    python -m kvmpy.guests.linux initramfs -o FILE      # the initramfs (a second)
    python -m kvmpy.guests.linux check                  # the bzImage matches the recipe
"""

import pathlib

LINUX_DIR = pathlib.Path(__file__).resolve().parent
BZIMAGE = LINUX_DIR / "bzImage"
MANIFEST = LINUX_DIR / "build.json"
CONFIG_FRAGMENT = LINUX_DIR / "kvmpy.config"
INIT_SCRIPT = LINUX_DIR / "init"
#: what /init prints once the kernel has run it and it has mounted /proc, /sys and /dev
INIT_MARKER = "kvmpy-initramfs: /init running on Linux"
