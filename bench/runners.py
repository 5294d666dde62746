"""Run one guest image on kvmpy, on the host's /dev/kvm, or under QEMU TCG, and time it.

kvmpy and the host run the image through kvmpy's own VMM (``kvmpy.vmm.machine.Machine``),
timing ``Machine.run`` only, so VM creation is not counted.  QEMU boots the image from a raw
disk through SeaBIOS (the image's first sector is a boot sector); its time is the whole
process, so the caller subtracts an empty guest's time.  Only kvmpy can count retired
instructions: ``Run.icount`` is None on the other two.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

QEMU = "qemu-system-x86_64"
QEMU_ARGS = ("-machine", "pc", "-accel", "tcg", "-display", "none", "-nographic",
             "-serial", "stdio", "-monitor", "none", "-net", "none",
             "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04")
DISK_SIZE = 65536       # a tiny raw disk; SeaBIOS boots it as the first hard disk
QEMU_SUCCESS = 1        # isa-debug-exit value 0 -> exit status (0 << 1) | 1
RUN_TIMEOUT = 600


class RunFailed(Exception):
    """The guest did not end with isa-debug-exit value 0."""


@dataclass
class Run:
    output: str         # everything the guest wrote to COM1 (for QEMU: SeaBIOS's too)
    seconds: float
    icount: int | None  # retired guest instructions (kvmpy only)


def host_kvm_usable() -> bool:
    """True when the host's /dev/kvm exists and this process may open it."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None



def run_vmm(image: bytes, accel: str) -> Run:
    """Run ``image`` with kvmpy's VMM on ``accel`` ("soft" or "host")."""
    from kvmpy.vmm.machine import Machine
    out: list[bytes] = []
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(image)
        f.flush()
        with Machine(f.name, accel=accel, serial_sink=out.append) as m:
            t = time.perf_counter()
            res = m.run(timeout=RUN_TIMEOUT)
            dt = time.perf_counter() - t
            icount = m.vcpu.guest_instructions() if accel == "soft" else None
    if res.reason != "debug-exit" or res.status != QEMU_SUCCESS:
        raise RunFailed("%s: %s" % (accel, res.message))
    return Run(b"".join(out).decode("latin-1"), dt, icount)


def run_qemu(image: bytes) -> Run:
    """Boot ``image`` as a raw hard disk under QEMU TCG; time the whole process."""
    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(image.ljust(DISK_SIZE, b"\0"))
        f.flush()
        argv = [QEMU, *QEMU_ARGS, "-drive", "file=%s,format=raw,if=ide" % f.name]
        t = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, timeout=RUN_TIMEOUT)
        dt = time.perf_counter() - t
    if proc.returncode != QEMU_SUCCESS:
        raise RunFailed("qemu: exit status %d: %s" % (proc.returncode, proc.stderr.decode()[-500:]))
    return Run(proc.stdout.decode("latin-1"), dt, None)
