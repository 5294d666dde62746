"""Kick latency: how long a running vCPU takes to come back from KVM_RUN when asked.

    python -m tests.reliability.latency --count N [--seed S] [--combos vmx/tdp,...] [--budget S] [--no-host]

Random guests (the guest fuzzer's, tests/reliability/guests.py) run with no instruction
limit; ``budget`` seconds into each run a timer thread asks the vCPU thread to stop, in one
of two ways: it sets ``immediate_exit`` in the shared kvm_run page, or it sends SIGUSR1 to
the thread with ``pthread_kill`` (QEMU's kick).  The latency is the time from that request
to KVM_RUN's return; the distribution (median, p99, max) is printed for each backend and
way (the host's /dev/kvm only for the signal: Linux reads ``immediate_exit`` as KVM_RUN
starts, and setting it during a run does not stop the vCPU there; kvmpy also polls it), with the guest instructions kvmpy retired meanwhile and the slowest guest, to be run
again alone with ``guest_fuzz --seed S --start I --count 1 --combos C``.  Guests that end
before the kick give no figure.  The target: 10 ms.
"""

import argparse
import sys
import time

from tests.reliability import guest_fuzz
from tests.support.hostkvm import host_kvm_usable

WAYS = ("immediate_exit", "signal")
BUDGET_S = 0.1
TARGET_MS = 10.0


def measure(count, seed, backends, budget=BUDGET_S):
    """{(backend, way): [(latency ms, guest index, instructions after the kick)]}."""
    out = {}
    for way in WAYS:
        for backend in backends:
            if backend == "host" and way == "immediate_exit":
                continue        # Linux reads it only as KVM_RUN starts: it does not kick
            records = guest_fuzz.run_backend(backend, seed, range(count), budget, insn_budget=0, kick=way,
                                             controls=False)
            out[backend, way] = sorted((r["kick_ms"], i, r.get("kick_insns", 0))
                                       for i, r in records.items() if "kick_ms" in r)
    return out


def report(figures, seed, out=sys.stdout):
    for (backend, way), samples in figures.items():
        if not samples:
            print("%-10s %-14s no guest was still running at the kick" % (backend, way), file=out)
            continue
        lat = [s[0] for s in samples]
        worst_ms, worst_i, _ = samples[-1]
        over = sum(ms > TARGET_MS for ms in lat)
        print("%-10s %-14s n %4d  median %6.2f ms  p99 %6.2f ms  max %6.2f ms  over %g ms: %d  "
              "insns after the kick: max %d  (slowest: --seed %d --start %d)" % (
                  backend, way, len(lat), guest_fuzz.percentile(lat, 0.5), guest_fuzz.percentile(lat, 0.99),
                  worst_ms, TARGET_MS, over, max(s[2] for s in samples), seed, worst_i), file=out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=50, help="guests per backend and way")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds from the start of a guest to the kick")
    p.add_argument("--combos", default=",".join(guest_fuzz.COMBOS), help="comma-separated vendor/mmu list")
    p.add_argument("--no-host", action="store_true", help="do not measure the host's /dev/kvm")
    args = p.parse_args(argv)
    backends = [b for b in args.combos.split(",") if b]
    if not args.no_host and host_kvm_usable():
        backends.append("host")
    t0 = time.time()
    report(measure(args.count, args.seed, backends, args.budget), args.seed)
    print("%.0f s" % (time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
