"""Interrupt delivery: LAPIC timer interrupts a guest handles per second, and the IPI round
trip between two vCPUs, on kvmpy and on the host's /dev/kvm, side by side.

    python bench/interrupts.py                  # both, kvmpy on both clocks
    python bench/interrupts.py --repeats 3      # best of three runs each

The guest is ``kvmpy/guests/irqbench.S`` run by kvmpy's VMM with two vCPUs (one thread
each) and the in-kernel irqchip: TIMER_N one-shot timer interrupts back to back (the
handler re-arms the count of 1), then IPI_N ping-pongs between CPU 0 and CPU 1.  The guest
marks each phase with an OUT to port 0x80; the bench timestamps those exits, so the figures
are wall time inside the guest's phases, not VM creation.  On kvmpy's virtual clock a timer
count costs one guest instruction of time, so the timer figure is the cost of delivery
itself; on the host clock (``--clock host``) and on the host the timer's nanosecond counts.
"""

from __future__ import annotations

import argparse
import sys
import time

import runners

TIMER_N, IPI_N = 2000, 500          # irqbench.S's counts
PHASE_PORT = 0x80


class PhaseClock:
    """The device at port 0x80: the time of each phase mark the guest writes."""

    def __init__(self):
        self.marks = {}

    def read(self, offset, size):
        return 0xFF

    def write(self, offset, size, value):
        self.marks[value] = time.perf_counter()


def run(accel, clock=None):
    """(timer interrupts per second, IPI round trip in microseconds) of one run."""
    from kvmpy import guests
    from kvmpy.vmm.machine import Machine
    marks = PhaseClock()
    params = {"clock": clock} if clock else None
    with Machine(str(guests.image_path("irqbench")), accel=accel, smp=2, params=params,
                 serial_sink=lambda data: None) as m:
        m.pio.register(PHASE_PORT, 1, marks)
        res = m.run(timeout=600)
    if res.reason != "debug-exit" or res.status != 1 or sorted(marks.marks) != [1, 2, 3, 4]:
        raise SystemExit("irqbench on %s: %s (phases %s)" % (accel, res.message, sorted(marks.marks)))
    t = marks.marks
    return TIMER_N / (t[2] - t[1]), (t[4] - t[3]) / IPI_N * 1e6


def best(accel, clock, repeats):
    runs = [run(accel, clock) for _ in range(repeats)]
    return max(r[0] for r in runs), min(r[1] for r in runs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    rows = [("kvmpy, virtual clock", best("soft", "virtual", args.repeats)),
            ("kvmpy, host clock", best("soft", "host", args.repeats))]
    if runners.host_kvm_usable():
        rows.append(("host /dev/kvm", best("host", None, args.repeats)))
    print("%-22s %18s %18s" % ("", "timer irqs / s", "IPI round trip us"))
    for name, (rate, rtt) in rows:
        print("%-22s %18.0f %18.1f" % (name, rate, rtt))
    print("(%s; %d timer interrupts, %d round trips, best of %d)"
          % (sys.implementation.name, TIMER_N, IPI_N, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
