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

import signal
import threading

KICK_SIGNAL = signal.SIGUSR1
JOIN_TIMEOUT = 10.0


class VcpuThread:
    """An application processor's run loop: KVM_RUN, hand the exit to ``dispatch``, until
    ``stopped()``."""

    def __init__(self, vcpu, dispatch, stopped, on_error):
        self.vcpu = vcpu
        self.dispatch = dispatch
        self.stopped = stopped
        self.on_error = on_error
        self.thread = threading.Thread(target=self._loop, name=f"vcpu{vcpu.id}", daemon=True)

    def start(self):
        self.thread.start()

    def _loop(self):
        try:
            while not self.stopped():
                try:
                    exit_ = self.vcpu.run()
                except (InterruptedError, BlockingIOError):   # a kick; INIT taken (EAGAIN)
                    continue
                self.dispatch(exit_)
        except Exception as exc:        # noqa: BLE001 - reported as the run's end, not lost
            self.on_error(self.vcpu, exc)

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
