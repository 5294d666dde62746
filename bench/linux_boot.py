"""Linux boot time: the committed kernel and initramfs (kvmpy/guests/linux) booted to /init's
marker and to the power-off, on kvmpy (soft) and under QEMU TCG.

    python bench/linux_boot.py               # kvmpy on this interpreter, then QEMU TCG
    python bench/linux_boot.py --no-qemu

On kvmpy it runs the VMM's ``Machine`` (as ``kvmpy run -kernel -initrd -append`` does) and
notes, when the console first shows the marker, the wall time since ``Machine.run`` began
and the vCPU's retired instructions; QEMU's figure is the whole process.  The command line
runs ``echo kvmpy-$((6*7))`` in busybox's shell, so the shell's answer ``kvmpy-42`` is the
end of the boot that is timed.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time

import runners

from kvmpy.guests.linux import BZIMAGE, INIT_MARKER
from kvmpy.guests.linux.initramfs import build_initramfs

ANSWER = "kvmpy-42"
CMDLINE = 'console=ttyS0 kvmpy_cmd="echo kvmpy-$((6*7))"'
MEMORY_MIB = 128
TIMEOUT = 1200


def boot_kvmpy(initramfs, cmdline=CMDLINE, timeout=TIMEOUT):
    """{marker: (wall seconds, CPU seconds of the process, instructions)} for INIT_MARKER and
    ANSWER, plus the run's end.  The CPU time is the fairer figure on a shared machine."""
    from kvmpy.vmm.machine import Machine
    seen, out = {}, []
    t0 = [None]
    machine = [None]

    def sink(data):
        out.append(data)
        text = b"".join(out[-64:]).decode("latin-1")
        for marker in (INIT_MARKER, ANSWER):
            if marker not in seen and marker in text:
                seen[marker] = _now(t0, machine[0])

    with Machine(str(BZIMAGE), memory_mib=MEMORY_MIB, initrd=initramfs, cmdline=cmdline,
                 serial_sink=sink) as m:
        machine[0] = m
        t0[0] = (time.perf_counter(), time.process_time())
        res = m.run(timeout=timeout)
        seen["end: " + res.reason] = _now(t0, m)
    return seen, b"".join(out).decode("latin-1")


def _now(t0, machine):
    return (time.perf_counter() - t0[0][0], time.process_time() - t0[0][1],
            sum(v.guest_instructions() for v in machine.vcpus))


def boot_qemu(initramfs, cmdline=CMDLINE):
    argv = [runners.QEMU, "-accel", "tcg", "-m", str(MEMORY_MIB), "-kernel", str(BZIMAGE),
            "-initrd", initramfs, "-append", cmdline, "-nographic", "-no-reboot"]
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, timeout=TIMEOUT)
    return time.perf_counter() - t, proc.stdout.decode("latin-1")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-qemu", action="store_true")
    p.add_argument("--no-kvmpy", action="store_true")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help="wall seconds for kvmpy's boot")
    args = p.parse_args(argv)
    with tempfile.NamedTemporaryFile(suffix=".cpio.gz") as f:
        f.write(build_initramfs())
        f.flush()
        return _measure(args, f.name)


def _measure(args, initramfs):
    if not args.no_kvmpy:
        seen, out = boot_kvmpy(initramfs, timeout=args.timeout)
        print(f"kvmpy soft ({platform.python_implementation()} {platform.python_version()}):")
        for marker, (seconds, cpu, insns) in seen.items():
            print(f"  {marker!r:44} {seconds:7.1f} s ({cpu:6.1f} s CPU)  {insns / 1e6:7.1f} M insns  "
                  f"{insns / cpu / 1e6:5.2f} MIPS of CPU time")
        if ANSWER not in out:
            print(out[-2000:], file=sys.stderr)
            return 1
    if not args.no_qemu and runners.qemu_available():
        seconds, out = boot_qemu(initramfs)
        print(f"QEMU TCG: {seconds:.1f} s to power-off, answer {'seen' if ANSWER in out else 'MISSING'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
