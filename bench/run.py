"""kvmpy benchmarks: guest MIPS against the host's KVM and QEMU, exit round-trip, boot, memory.

    python bench/run.py                    # all figures
    python bench/run.py --quick            # workloads a fifth of the size
    python bench/run.py --python PATH      # kvmpy also on that interpreter, side by side

kvmpy's own figures (workload MIPS, exit round-trip, boot, peak RSS) are measured on the
running interpreter and, side by side, on a second one: ``--python PATH``, else PyPy where
it has kvmpy installed (the repository's ``.pypyvenv``, as ``.ci/run`` makes it, or
``pypy3`` on PATH); ``--single`` leaves the second one out.  The second interpreter runs
this script with ``--worker``, which measures the same way and reports JSON; it must count
the same guest instructions as the first.

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
import json
import os
import platform
import resource
import shutil
import subprocess
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


def interpreter_name() -> str:
    """The running interpreter, e.g. "CPython 3.11.7" or "PyPy 7.3.11 (Python 3.9.16)"."""
    version = ".".join(map(str, sys.version_info[:3]))
    pypy = getattr(sys, "pypy_version_info", None)
    if pypy is None:
        return "%s %s" % (platform.python_implementation(), version)
    return "PyPy %s (Python %s)" % (".".join(map(str, pypy[:3])), version)


def kvmpy_figures(scale, n_exits):
    """What this interpreter measures of kvmpy itself: each workload's instructions and MIPS
    net of the empty guest, the exit round-trip, the demo's boot time and the peak RSS."""
    soft = lambda image: runners.run_vmm(image, "soft")
    empty = soft(workloads.image({}))
    mips = {}
    for w in workloads.WORKLOADS:
        r = _checked("kvmpy", soft, {w: max(2, workloads.DEFAULT_COUNTS[w] // scale)})
        insns = r.icount - empty.icount
        mips[w] = {"insns": insns, "icount": r.icount, "mips": insns / (r.seconds - empty.seconds) / 1e6}
    return {"python": interpreter_name(), "workloads": mips,
            "exit_us": exit_roundtrip("soft", n_exits), "boot_s": boot("soft"),
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def other_interpreter(requested):
    """The interpreter to measure beside this one: ``requested``, else a PyPy with kvmpy."""
    if requested:
        return requested
    if hasattr(sys, "pypy_version_info"):
        return None
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for python in (os.path.join(repo, ".pypyvenv", "bin", "python"), shutil.which("pypy3")):
        if python and os.access(python, os.X_OK) and subprocess.run(
                [python, "-c", "import kvmpy"], capture_output=True).returncode == 0:
            return python
    return None


def figures_on(python, scale, n_exits):
    """``kvmpy_figures`` measured by ``python`` running this script with ``--worker``."""
    argv = [python, os.path.abspath(__file__), "--worker", "--exits", str(n_exits)]
    proc = subprocess.run(argv + (["--quick"] if scale > 1 else []), capture_output=True, text=True)
    if proc.returncode != 0:
        raise runners.RunFailed("%s: %s" % (python, (proc.stdout + proc.stderr)[-500:]))
    return json.loads(proc.stdout.splitlines()[-1])


def guest_mips(scale, kvmpys, use_host, use_qemu):
    """The MIPS table: each workload on kvmpy (one column per interpreter in ``kvmpys``, the
    first the running one), the host and QEMU, net of the empty guest.

    QEMU's checksums are checked at kvmpy's size; it is timed at ``QEMU_FACTOR`` times the
    count (too long for the Python model: only its completion is checked), credited with an
    instruction count extrapolated from kvmpy's at half and full size (the count grows
    linearly with the workload count, give or take a few instructions per unit)."""
    soft = lambda image: runners.run_vmm(image, "soft")
    host = lambda image: runners.run_vmm(image, "host")
    qemu = lambda image: _best(runners.run_qemu, image, QEMU_REPEATS)
    empty_host = host(workloads.image({})) if use_host else None
    empty_qemu = qemu(workloads.image({})) if use_qemu else None
    names = [k["python"].split()[0] for k in kvmpys]
    print("%-34s %10s" % ("workload (net of empty guest)", "insns")
          + "".join("%9s" % n for n in names) + " %8s %8s" % ("host", "QEMU")
          + "".join(" %12s" % ("%s/host" % n) for n in names)
          + "".join(" %12s" % ("%s/QEMU" % n) for n in names))
    print("%-34s %10s" % ("", "") + "%9s" % "MIPS" * (len(names) + 2))
    for w in workloads.WORKLOADS:
        count = max(2, workloads.DEFAULT_COUNTS[w] // scale)
        insns = kvmpys[0]["workloads"][w]["insns"]
        for k in kvmpys[1:]:
            if k["workloads"][w]["insns"] != insns:
                raise runners.RunFailed("%s: %s counted %d instructions, %s %d" % (
                    w, kvmpys[0]["python"], insns, k["python"], k["workloads"][w]["insns"]))
        mips = [k["workloads"][w]["mips"] for k in kvmpys]
        host_mips = qemu_mips = None
        if use_host:
            h = _checked("host", host, {w: count})
            host_mips = insns / (h.seconds - empty_host.seconds) / 1e6
        if use_qemu:
            half = _checked("kvmpy", soft, {w: count // 2})
            per_unit = (kvmpys[0]["workloads"][w]["icount"] - half.icount) / (count - count // 2)
            _checked("qemu", runners.run_qemu, {w: count})
            factor = QEMU_FACTOR[w]
            q = qemu(workloads.image({w: count * factor}))
            if not q.output.endswith("bench done\r\n"):
                raise runners.RunFailed("qemu did not finish %s: %r" % (w, q.output[-200:]))
            qemu_insns = insns + per_unit * count * (factor - 1)
            qemu_mips = qemu_insns / (q.seconds - empty_qemu.seconds) / 1e6
        print("%-34s %10d" % (workloads.DESCRIPTIONS[w], insns) + "".join("%9.2f" % m for m in mips)
              + " %8s %8s" % (_fmt(host_mips, ".2f"), _fmt(qemu_mips, ".1f"))
              + "".join(" %12s" % _fmt(host_mips and m / host_mips, ".2f") for m in mips)
              + "".join(" %12s" % _fmt(qemu_mips and m / qemu_mips, ".4f") for m in mips))
    if not use_host:
        print("  (host columns: /dev/kvm cannot be opened)")
    if not use_qemu:
        print("  (QEMU columns: %s is not installed, or --no-qemu)" % runners.QEMU)
    else:
        print("  (QEMU timed on %s times longer workloads, instruction counts extrapolated)"
              % "/".join(str(QEMU_FACTOR[w]) for w in workloads.WORKLOADS))


def exit_roundtrip(backend, n):
    """Microseconds per KVM_RUN round-trip for a guest doing OUT in a loop (real mode)."""
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
    return dt / n * 1e6


def boot(backend):
    """Seconds for the demo guest from the first KVM_RUN to its exit."""
    from kvmpy.guests import image_path
    from kvmpy.vmm.machine import Machine
    t = time.perf_counter()
    with Machine(image_path("demo"), accel=backend, serial_sink=lambda data: None) as m:
        res = m.run(timeout=300)
    if res.reason != "debug-exit":
        raise runners.RunFailed("demo on %s: %s" % (backend, res.message))
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="workloads a fifth of the size")
    ap.add_argument("--no-qemu", action="store_true", help="leave out the QEMU columns")
    ap.add_argument("--python", metavar="PATH", help="also measure kvmpy on this interpreter")
    ap.add_argument("--single", action="store_true", help="measure kvmpy on this interpreter only")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--exits", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    scale = 5 if a.quick else 1
    n_exits = a.exits or 10000 // scale
    if a.worker:
        print(json.dumps(kvmpy_figures(scale, n_exits)))
        return 0
    use_host = runners.host_kvm_usable()
    other = None if a.single else other_interpreter(a.python)
    try:
        kvmpys = [kvmpy_figures(scale, n_exits)]
        if other:
            kvmpys.append(figures_on(other, scale, n_exits))
        print("kvmpy benchmarks, kvmpy on %s" % " and ".join(k["python"] for k in kvmpys))
        guest_mips(scale, kvmpys, use_host, runners.qemu_available() and not a.no_qemu)
        for k in kvmpys:
            print("%-34s %10d exits %7.1f us/exit" % ("exit round-trip (kvmpy, %s)" % k["python"].split()[0],
                                                     n_exits, k["exit_us"]))
        if use_host:
            print("%-34s %10d exits %7.1f us/exit" % ("exit round-trip (host)", n_exits,
                                                     exit_roundtrip("host", n_exits)))
        for k in kvmpys:
            print("%-34s %10.2f s" % ("demo boot to exit (kvmpy, %s)" % k["python"].split()[0], k["boot_s"]))
        if use_host:
            print("%-34s %10.2f s" % ("demo boot to exit (host)", boot("host")))
    except runners.RunFailed as e:
        print("FAILED: %s" % e)
        return 1
    for k in kvmpys:
        print("%-34s %10.1f MiB" % ("peak RSS (kvmpy, %s)" % k["python"].split()[0], k["rss_mib"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
