"""kvmpy benchmarks: guest MIPS against the host's KVM and QEMU, exit round-trip, boot, memory.

    python bench/run.py            # all figures
    python bench/run.py --quick    # workloads a fifth of the size

The MIPS table runs the three workloads of the bench guest (``kvmpy/guests/bench_workloads.S``,
see ``workloads.py``) -- an integer/branch loop in 64-bit mode, a sieve over 64 KiB in 32-bit
protected mode, string/memcpy code in 64-bit mode with paging -- each as a whole guest booted
from real mode: on kvmpy, on the host's /dev/kvm where it can be opened, and under QEMU TCG
where ``qemu-system-x86_64`` is installed.  kvmpy counts the retired instructions; the other
two are credited with the same count.  Each figure is net of the empty guest (same image,
every count 0: boot, mode switches, exit), so QEMU's start-up and BIOS are not counted.
Every run's output must equal the checksums ``workloads.expected_output`` computes.
Exit round-trip and boot time go through ``kvmpy.api`` / ``kvmpy.vmm`` on kvmpy's kernel and
on the host's KVM.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import runners
import workloads

QEMU_REPEATS = 5        # keep QEMU's fastest of several runs
#: QEMU times each workload at this many times kvmpy's size (about a second of QEMU time):
#: at kvmpy's size it takes a few milliseconds, lost in its start-up's +-50 ms of noise
QEMU_FACTOR = {"int": 500, "sieve32": 200, "memcpy64": 20}


def _best(run, image, repeats):
    return min((run(image) for _ in range(repeats)), key=lambda r: r.seconds)


def _checked(runner, run, counts):
    """``run(image)`` for ``counts``, after checking it printed the model's checksums."""
    r = run(workloads.image(counts))
    expected = workloads.expected_output(counts)
    if not r.output.endswith(expected):
        raise runners.RunFailed("%s printed %r, expected %r" % (runner, r.output[-200:], expected))
    return r


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def guest_mips(scale, use_host, use_qemu):
    """The MIPS table: each workload on kvmpy, the host and QEMU, net of the empty guest.

    QEMU's checksums are checked at kvmpy's size; it is timed at ``QEMU_FACTOR`` times the
    count (too long for the Python model: only its completion is checked), credited with an
    instruction count extrapolated from kvmpy's at half and full size (the count grows
    linearly with the workload count, give or take a few instructions per unit)."""
    soft = lambda image: runners.run_vmm(image, "soft")
    host = lambda image: runners.run_vmm(image, "host")
    qemu = lambda image: _best(runners.run_qemu, image, QEMU_REPEATS)
    empty_soft = soft(workloads.image({}))
    empty_host = host(workloads.image({})) if use_host else None
    empty_qemu = qemu(workloads.image({})) if use_qemu else None
    print("%-34s %10s %8s %8s %8s %11s %11s" % ("workload (net of empty guest)", "insns",
          "kvmpy", "host", "QEMU", "kvmpy/host", "kvmpy/QEMU"))
    print("%-34s %10s %8s %8s %8s" % ("", "", "MIPS", "MIPS", "MIPS"))
    for w in workloads.WORKLOADS:
        count = max(2, workloads.DEFAULT_COUNTS[w] // scale)
        r = _checked("kvmpy", soft, {w: count})
        insns = r.icount - empty_soft.icount
        mips = insns / (r.seconds - empty_soft.seconds) / 1e6
        host_mips = qemu_mips = None
        if use_host:
            h = _checked("host", host, {w: count})
            host_mips = insns / (h.seconds - empty_host.seconds) / 1e6
        if use_qemu:
            half = _checked("kvmpy", soft, {w: count // 2})
            per_unit = (r.icount - half.icount) / (count - count // 2)
            _checked("qemu", runners.run_qemu, {w: count})
            factor = QEMU_FACTOR[w]
            q = qemu(workloads.image({w: count * factor}))
            if not q.output.endswith("bench done\r\n"):
                raise runners.RunFailed("qemu did not finish %s: %r" % (w, q.output[-200:]))
            qemu_insns = insns + per_unit * count * (factor - 1)
            qemu_mips = qemu_insns / (q.seconds - empty_qemu.seconds) / 1e6
        print("%-34s %10d %8.2f %8s %8s %11s %11s" % (
            workloads.DESCRIPTIONS[w], insns, mips, _fmt(host_mips, ".2f"), _fmt(qemu_mips, ".1f"),
            _fmt(host_mips and mips / host_mips, ".2f"), _fmt(qemu_mips and mips / qemu_mips, ".4f")))
    if not use_host:
        print("  (host columns: /dev/kvm cannot be opened)")
    if not use_qemu:
        print("  (QEMU columns: %s is not installed, or --no-qemu)" % runners.QEMU)
    else:
        print("  (QEMU timed on %s times longer workloads, instruction counts extrapolated)"
              % "/".join(str(QEMU_FACTOR[w]) for w in workloads.WORKLOADS))


def exit_roundtrip(backend, n):
    """KVM_RUN round-trips per second for a guest doing OUT in a loop (real mode)."""
    from kvmpy.api import GuestMemory, Kvm
    from kvmpy.api.exits import Io
    code = bytes([0xE6, 0x80, 0xEB, 0xFC])          # out 0x80, al; jmp $-2
    with Kvm(backend) as kvm, GuestMemory(0x10000) as mem:
        mem.write(0x1000, code)
        vm = kvm.create_vm()
        vm.set_user_memory_region(0, 0, mem.size, mem.host_addr)
        vcpu = vm.create_vcpu(0)
        sregs = vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rflags = 0x1000, 2
        vcpu.set_regs(regs)
        t = time.perf_counter()
        for _ in range(n):
            x = vcpu.run()
            assert isinstance(x, Io), x
        dt = time.perf_counter() - t
    print("%-34s %10d exits %7.2f s %7.1f us/exit" % ("exit round-trip (%s)" % backend, n, dt, dt / n * 1e6))


def boot(backend):
    from kvmpy.guests import image_path
    from kvmpy.vmm.machine import Machine
    out = []
    t = time.perf_counter()
    with Machine(image_path("demo"), accel=backend, serial_sink=out.append) as m:
        res = m.run(timeout=300)
    dt = time.perf_counter() - t
    print("%-34s %10s %7.2f s" % ("demo boot to exit (%s)" % backend, res.reason, dt))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="workloads a fifth of the size")
    ap.add_argument("--no-qemu", action="store_true", help="leave out the QEMU columns")
    a = ap.parse_args()
    quick = 5 if a.quick else 1
    use_host = runners.host_kvm_usable()
    print("kvmpy benchmarks (CPython %s)" % ".".join(map(str, sys.version_info[:3])))
    try:
        guest_mips(quick, use_host, runners.qemu_available() and not a.no_qemu)
    except runners.RunFailed as e:
        print("FAILED: %s" % e)
        return 1
    exit_roundtrip("soft", 10000 // quick)
    if use_host:
        exit_roundtrip("host", 10000 // quick)
    boot("soft")
    if use_host:
        boot("host")
    print("%-34s %10.1f MiB" % ("peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return 0


if __name__ == "__main__":
    sys.exit(main())
