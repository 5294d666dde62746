"""``signal_pending(current)`` for a vCPU thread, and the signal mask of KVM_RUN.

Linux's KVM_RUN returns -EINTR (exit reason KVM_EXIT_INTR) as soon as a signal is pending
for the vCPU thread, and the handler runs on the way back to user space.  A Python handler
only ever runs in the main thread, between bytecodes, so it cannot be what tells a vCPU in
another thread to stop.  kvmpy does what the kernel's own signal code does in effect: for
the time of KVM_RUN (``kvm_sigset_activate``) the thread blocks the signals that would
interrupt it, so that a signal sent to it (``pthread_kill``) or to the process stays
pending; ``signal_pending`` asks the kernel for the pending set (``sigpending``, one system
call); ``kvm_sigset_deactivate`` restores the mask and the signal is delivered, its handler
run, as KVM_RUN returns.

Signals that would not interrupt KVM_RUN on Linux are left out: those the thread had
blocked (or KVM_SET_SIGNAL_MASK's mask, which replaces the thread's mask during KVM_RUN),
ignored ones, and the synchronous ones a fault raises (SIGSEGV, SIGBUS...), which must
never be blocked.  Without ``pthread_sigmask`` (not every Python has it) signals are not
seen, only ``immediate_exit`` and kicks.
"""

from __future__ import annotations

import signal
import threading

_HAVE_MASKS = hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigpending")
_SYNCHRONOUS = {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL",
                                             "SIGTRAP", "SIGSYS", "SIGABRT") if hasattr(signal, n)}
_DEFAULT_IGNORED = {getattr(signal, n) for n in ("SIGCHLD", "SIGURG", "SIGWINCH", "SIGCONT")
                    if hasattr(signal, n)}
WATCHED = frozenset(s for s in signal.valid_signals() if s not in _SYNCHRONOUS) if _HAVE_MASKS else frozenset()


def kvm_sigset_activate(vcpu) -> None:
    """Entering KVM_RUN: block the watched signals, remember which of them interrupt."""
    if not _HAVE_MASKS:
        vcpu.sigmask_saved = None
        return
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    vcpu.sigmask_saved = saved
    vcpu.sigmask_interrupting = WATCHED - (vcpu.sigset if vcpu.sigset is not None else saved)


def kvm_sigset_deactivate(vcpu) -> None:
    """Leaving KVM_RUN: the thread's own mask again; a pending signal is delivered now."""
    saved = vcpu.sigmask_saved
    if saved is not None:
        vcpu.sigmask_saved = None
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


def signal_pending(vcpu) -> bool:
    """A signal that interrupts KVM_RUN is pending for this thread (or the process)."""
    if vcpu.sigmask_saved is None:
        return False
    pending = signal.sigpending()
    if not pending:
        return False
    return any(_interrupts(s) for s in pending & vcpu.sigmask_interrupting)


def _interrupts(signum) -> bool:
    """Delivering ``signum`` would run a handler or end the process (not ignore it)."""
    handler = signal.getsignal(signum)
    if handler == signal.SIG_IGN:
        return False
    return not (handler == signal.SIG_DFL and signum in _DEFAULT_IGNORED)


def send_to_current_thread(signum) -> None:
    """The kernel signals the thread it runs for (``send_sig(..., current, ...)``): pending
    while KVM_RUN has it blocked, delivered when KVM_RUN returns."""
    signal.pthread_kill(threading.get_ident(), signum)
