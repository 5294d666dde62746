"""The VM's clock and its high-resolution timers (Linux: kernel/time/hrtimer.c, as KVM uses it).

Every device model that keeps time (the TSC, the LAPIC timer, the PIT, kvmclock) reads one
per-VM clock, ``kvm.clock``, so that they agree with each other and so that the whole
machine can run on either of two time bases:

- ``"virtual"`` (the default): nanoseconds derived from the guest instructions the VM's
  vCPUs have retired (``Processor.icount``), ``NS_PER_INSN`` each, plus the time skipped
  while the machine was idle.  A halted machine does not wait: ``idle_advance`` jumps to
  the next timer deadline.  The same guest therefore sees the same times on every run,
  which is what makes runs reproducible (DESIGN.md: determinism for testers and fuzzers).
- ``"host"``: ``time.monotonic_ns``, so that a guest's timers keep wall-clock pace.

A timer that expires is not fired from another thread: the run loop calls
``kvm_clock_run_expired`` between VM entries, and the entry budget ends an entry at the next
deadline (``entry_insn_budget``), so that in virtual mode a timer fires at the exact
instruction, and in either mode a long entry cannot hold an expired timer back.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time

CLOCK_MODES = ("virtual", "host")
NS_PER_INSN = 1             # virtual time: one retired instruction is one nanosecond (a 1 GHz guest)
HOST_IDLE_POLL_NS = 1_000_000      # longest sleep of an idle vCPU in host mode (stays interruptible)
MAX_FIRES_PER_RUN = 1000    # timers one kvm_clock_run_expired fires; the rest wait for the next call


class KvmClock:
    """The VM's monotonic clock in nanoseconds, and its queue of armed HrTimers.

    ``insn_sources`` is a callable giving the processors whose retired instructions make
    virtual time (the VM's vCPUs); the clock sums their ``icount``, so every instruction of
    any vCPU moves time on by ``NS_PER_INSN``.
    """

    def __init__(self, mode: str = "virtual", insn_sources=lambda: ()):
        if mode not in CLOCK_MODES:
            raise ValueError("clock mode must be one of %s" % ", ".join(CLOCK_MODES))
        self.mode = mode
        self.insn_sources = insn_sources
        self.lock = threading.RLock()
        self._queue: list = []          # heap of (expires_ns, seq, timer); cancelled ones stay, marked stale
        self._seq = itertools.count()
        self._skipped_ns = 0            # virtual: time jumped over while idle
        self._last_ns = 0               # virtual: the clock never runs backwards
        self._host_base = time.monotonic_ns()

    def now_ns(self) -> int:
        if self.mode == "host":
            return time.monotonic_ns() - self._host_base
        insns = sum(cpu.icount for cpu in self.insn_sources())
        now = self._skipped_ns + insns * NS_PER_INSN
        if now < self._last_ns:         # a fault rolled a processor's icount back to its instruction
            return self._last_ns
        self._last_ns = now
        return now

    # ---------------------------------------------------------------- the timer queue
    def _arm(self, timer, expires_ns: int) -> None:
        with self.lock:
            timer._key = (expires_ns, next(self._seq), timer)
            heapq.heappush(self._queue, timer._key)

    def _disarm(self, timer) -> None:
        with self.lock:
            timer._key = None           # left in the heap; skipped when it reaches the top

    def _top(self):
        q = self._queue
        while q and q[0][2]._key is not q[0]:
            heapq.heappop(q)
        return q[0] if q else None

    def next_deadline_ns(self):
        """When the earliest armed timer expires, or None when none is armed."""
        with self.lock:
            top = self._top()
            return top[0] if top is not None else None

    def pop_expired(self, now_ns: int):
        """The next timer due at ``now_ns``, disarmed, or None."""
        with self.lock:
            top = self._top()
            if top is None or top[0] > now_ns:
                return None
            heapq.heappop(self._queue)
            top[2]._key = None
            return top[2]

    # ---------------------------------------------------------------- the run loop's questions
    def entry_insn_budget(self, budget: int) -> int:
        """Cut an entry's instruction budget so that it ends at the next deadline (virtual
        mode; in host mode ``deadline_passed`` ends the entry instead)."""
        if self.mode != "virtual":
            return budget
        deadline = self.next_deadline_ns()
        if deadline is None:
            return budget
        left = -(-(deadline - self.now_ns()) // NS_PER_INSN)
        return max(1, min(budget, left))

    def deadline_passed(self) -> bool:
        """Host mode: has the next deadline gone by?  The processor asks this, as it asks for
        signals, every few thousand instructions (virtual mode needs no asking)."""
        if self.mode != "host":
            return False
        deadline = self.next_deadline_ns()
        return deadline is not None and self.now_ns() >= deadline

    def idle_advance(self) -> bool:
        """Every vCPU is idle: let time pass up to the next deadline.  Virtual mode jumps
        there at once; host mode sleeps, at most HOST_IDLE_POLL_NS so the caller can look
        for signals.  False when no timer is armed, so time alone will wake nothing."""
        deadline = self.next_deadline_ns()
        if deadline is None:
            return False
        now = self.now_ns()
        if deadline > now:
            if self.mode == "virtual":
                with self.lock:
                    self._skipped_ns += deadline - now
            else:
                time.sleep(min(deadline - now, HOST_IDLE_POLL_NS) / 1e9)
        return True


class HrTimer:
    """struct hrtimer: calls ``callback(timer)`` once the clock reaches ``expires_ns``.

    As with hrtimer_restart, a callback that wants a periodic timer calls ``start`` again
    (with the next expiry) from inside the callback.
    """

    __slots__ = ("clock", "callback", "expires_ns", "_key")

    def __init__(self, clock: KvmClock, callback):
        self.clock = clock
        self.callback = callback
        self.expires_ns = None
        self._key = None

    @property
    def active(self) -> bool:
        return self._key is not None

    def start(self, expires_ns: int) -> None:
        """Arm (or re-arm) the timer for the absolute clock time ``expires_ns``."""
        if self._key is not None:
            self.clock._disarm(self)
        self.expires_ns = expires_ns
        self.clock._arm(self, expires_ns)

    def cancel(self) -> None:
        self.clock._disarm(self)

    def remaining_ns(self) -> int:
        """hrtimer_get_remaining: time to expiry (0 once due or inactive)."""
        if not self.active:
            return 0
        return max(0, self.expires_ns - self.clock.now_ns())


def kvm_clock_create(kvm, mode: str) -> KvmClock:
    """The clock of a new VM: its virtual time is made of its vCPUs' retired instructions."""
    def processors():
        return [v.arch.cpu for v in kvm.vcpus if v.arch is not None and getattr(v.arch, "cpu", None) is not None]
    return KvmClock(mode, processors)


def kvm_clock_run_expired(kvm) -> int:
    """Fire the timers that are due (the hrtimer softirq), in expiry order; the run loop calls
    this between VM entries.  A callback that re-arms its timer for a time already past
    fires again here, up to MAX_FIRES_PER_RUN, so that a timer re-armed for the past cannot
    keep the vCPU from looking for signals.  Returns how many fired."""
    clock = kvm.clock
    fired = 0
    now = clock.now_ns()
    while fired < MAX_FIRES_PER_RUN:
        timer = clock.pop_expired(now)
        if timer is None:
            break
        timer.callback(timer)
        fired += 1
    return fired


def kvm_clock_idle(kvm) -> bool:
    """Every vCPU of the VM is halted (kvm_vcpu_block's wait): let time pass to the next
    deadline and fire what is due.  False when no timer is armed (only an interrupt from
    outside, or a signal, can end the halt)."""
    if not kvm.clock.idle_advance():
        return False
    kvm_clock_run_expired(kvm)
    return True
