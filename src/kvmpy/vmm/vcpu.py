"""The machine's vCPUs, one thread each calling KVM_RUN (Firecracker's vstate/vcpu).

The boot processor runs on the thread that calls :meth:`Machine.run` (the main thread,
where the run bounds' signal handlers are); each application processor on a thread of its
own, started with the run.  An AP's first KVM_RUN waits in the kernel for the BSP's INIT
and start-up IPI (KVM_MP_STATE_UNINITIALIZED) and answers EAGAIN once INIT came: it is simply
called again.  Every exit goes to the machine's device buses under one lock, so devices see
one access at a time.

Stopping: whatever ends the run (an exit on any vCPU, a bound) sets the machine's result;
then each vCPU is kicked as QEMU kicks its vCPU threads: ``immediate_exit`` set, and a
signal (``KICK_SIGNAL``, whose handler does nothing) to its thread, which ends a KVM_RUN
blocked in the kernel with EINTR.
"""

from __future__ import annotations

import contextlib
import signal
import threading

KICK_SIGNAL = signal.SIGUSR1
JOIN_TIMEOUT = 10.0
#: how often a parked vCPU looks whether the run has ended, and a pauser re-kicks
PARK_POLL_S = 0.05


class VcpuThread:
    """An application processor's run loop: KVM_RUN, hand the exit to ``dispatch``, until
    ``stopped()``."""

    def __init__(self, vcpu, dispatch, stopped, on_error, gate):
        self.vcpu = vcpu
        self.dispatch = dispatch
        self.stopped = stopped
        self.on_error = on_error
        self.gate = gate
        self.thread = threading.Thread(target=self._loop, name=f"vcpu{vcpu.id}", daemon=True)

    def start(self):
        self.thread.start()

    def _loop(self):
        try:
            with self.gate.running():
                self._run()
        except Exception as exc:        # noqa: BLE001 - reported as the run's end, not lost
            self.on_error(self.vcpu, exc)

    def _run(self):
        while not self.stopped():
            if self.gate.park(self.vcpu, self.stopped):
                continue
            try:
                exit_ = self.vcpu.run()
            except (InterruptedError, BlockingIOError):   # a kick; INIT taken (EAGAIN)
                continue
            self.dispatch(exit_)

    def kick(self, with_signal=True):
        """End a KVM_RUN of this thread now (immediate_exit) or at once if it is blocked
        (the signal, when its handler is installed: kvmpy's kernel also sees
        immediate_exit while it waits, the host's only the signal)."""
        self.vcpu.immediate_exit = True
        ident = self.thread.ident
        if with_signal and ident is not None and self.thread.is_alive():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def join(self):
        self.thread.join(JOIN_TIMEOUT)
        return not self.thread.is_alive()


def install_kick_handler():
    """A handler for KICK_SIGNAL that does nothing (the default action would end the
    process); returns the previous one.  Main thread only, as signal.signal requires."""
    return signal.signal(KICK_SIGNAL, lambda signum, frame: None)


class PauseGate:
    """Where the vCPU threads wait between two KVM_RUNs while the VM is paused: the
    monitor's ``stop``, or a look at the vCPUs' registers, which KVM gives only to a vCPU
    outside KVM_RUN (QEMU's pause_all_vcpus).  Each vCPU loop runs inside
    :meth:`running` and calls :meth:`park` before each KVM_RUN; :meth:`paused` asks them
    all to park, kicks them out of KVM_RUN, and returns once every running one is parked.
    Pauses nest (``stop``, then ``info registers``, then ``cont``)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.requests = 0
        self.active = 0         # vCPU loops running
        self.parked = 0

    @contextlib.contextmanager
    def running(self):
        with self.cond:
            self.active += 1
        try:
            yield
        finally:
            with self.cond:
                self.active -= 1
                self.cond.notify_all()

    def park(self, vcpu, stopped):
        """On a vCPU thread: wait here while a pause is asked for (or until the run ends);
        True if it waited (the kick's ``immediate_exit`` is then cleared, and the caller
        looks again whether the run has ended)."""
        with self.cond:
            if not self.requests:
                return False
            self.parked += 1
            self.cond.notify_all()
            while self.requests and not stopped():
                self.cond.wait(PARK_POLL_S)
            self.parked -= 1
        vcpu.immediate_exit = False
        return True

    def pause(self, kick):
        """Ask every vCPU to park and wait until the running ones have; ``kick()`` gets
        them out of KVM_RUN (called again while some have not parked yet)."""
        with self.cond:
            self.requests += 1
        while True:
            kick()
            with self.cond:
                if self.parked >= self.active or self.cond.wait_for(
                        lambda: self.parked >= self.active, PARK_POLL_S):
                    return

    def resume(self):
        with self.cond:
            self.requests -= 1
            self.cond.notify_all()

    @contextlib.contextmanager
    def paused(self, kick):
        self.pause(kick)
        try:
            yield
        finally:
            self.resume()
