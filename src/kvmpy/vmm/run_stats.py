"""``kvmpy run --stats``: how long the guest took to boot and how fast it ran.

Times count from the start of the machine's setup (image loading, VM and vCPU creation),
so the interpreter's own start-up is left out.  Besides the end of the run, two boot
milestones a serial-console guest passes are noted: its first byte of output (for Linux,
the first console line) and the first time it enables COM1's receive interrupt (for Linux,
user space opening the console: init, a shell).  At each one, and at the end, the guest's
retired instructions are read where the backend counts them (kvmpy's processor; the
host's KVM cannot), which gives the guest's instruction rate.
"""

from __future__ import annotations

import time

FIRST_OUTPUT = "first serial output"
INPUT_ENABLED = "console input enabled"


class RunStats:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.start = clock()
        self.machine = None
        self.ready = None
        self.run_start = None
        self.milestones = []        # (what, seconds, instructions or None)

    def wrap_sink(self, sink):
        """``sink`` (COM1's output) noting when its first byte comes."""
        def first(data):
            self.mark(FIRST_OUTPUT)
            wrapped.sink = sink
            sink(data)

        def wrapped(data):
            wrapped.sink(data)
        wrapped.sink = first
        return wrapped

    def attach(self, machine):
        """The machine is built: setup ends, the run starts."""
        self.machine = machine
        self.ready = self.clock() - self.start
        machine.serial.on_input_enabled = lambda: self.mark(INPUT_ENABLED)

    def began(self):
        self.run_start = self.clock() - self.start

    def mark(self, what):
        if self.machine is not None:
            self.milestones.append((what, self.clock() - self.start, self._instructions()))

    def _instructions(self):
        counts = [vcpu.guest_instructions() for vcpu in self.machine.vcpus]
        return None if None in counts else sum(counts)

    def report(self, result):
        """The lines to print once the run has ended with ``result`` (a RunResult)."""
        end = self.clock() - self.start
        instructions = self._instructions()
        lines = [f"kvmpy stats: machine ready after {self.ready:.3f} s (image loaded, "
                 f"VM and {len(self.machine.vcpus)} vCPU(s) created)"]
        for what, at, count in self.milestones:
            lines.append(f"kvmpy stats: {what} after {at:.3f} s" + (
                f", {count:,} guest instructions" if count is not None else ""))
        run_time = end - (self.run_start if self.run_start is not None else self.ready)
        tail = f"kvmpy stats: run ended after {end:.3f} s ({result.reason}), {result.exits:,} exits"
        if instructions is None:
            tail += "; guest instructions not counted on this KVM"
        else:
            rate = instructions / run_time / 1e6 if run_time > 0 else 0.0
            tail += f"; {instructions:,} guest instructions, {rate:.2f} MIPS"
        lines.append(tail)
        return "\n".join(lines)
