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

A signal sent to the process (``kill``, an interval timer's SIGALRM) is another matter.  Linux
gives it to the main thread when that thread does not block it, so it interrupts a KVM_RUN
there; kvmpy's KVM_RUN blocks it, so the kernel hands it to any other thread that does not --
and every Python thread but the vCPU's does not.  There CPython's C handler only notes it, and
the main thread runs the Python handler at its next bytecode check: inside KVM_RUN, which
would never learn of it (a HLT with IF=0 would wait for ever).  So while the main thread is
in KVM_RUN the Python handlers of the interrupting signals are diverted
(``_divert_handlers``): the stand-in records the signal, which is then pending as far as
``signal_pending`` is concerned; ``kvm_sigset_deactivate`` puts the handlers back and sends
the recorded signals to the thread again, so that they are delivered, and their handlers
run, as KVM_RUN returns.

Signals that would not interrupt KVM_RUN on Linux are left out: those the thread had
blocked (or KVM_SET_SIGNAL_MASK's mask, which replaces the thread's mask during KVM_RUN),
ignored ones, and the synchronous ones a fault raises (SIGSEGV, SIGBUS...), which must
never be blocked.  The masks are bit sets (bit ``s - 1`` for signal ``s``, the first word of the
kernel's ``sigset_t``) handled through libc's ``pthread_sigmask`` and ``sigpending``:
``signal.pthread_sigmask`` turns every signal of both sets into an enum member, which cost
about 150 us per KVM_RUN, more than the rest of an exit's round trip.  Without those libc
functions signals are not seen, only ``immediate_exit`` and kicks.
"""

from __future__ import annotations

import _signal       # the C module: signal.getsignal/signal convert every answer to an enum
import ctypes
import signal
import threading

# PyDLL: the calls keep the GIL.  They never block, and a CDLL call gives the GIL up: a
# vCPU thread asking for its signals after every exit then waited for the other vCPU
# threads' turn with the GIL (the switch interval, 5 ms) each time -- 300 us per call on
# average with two vCPUs, most of the time of an SMP guest that exits often.  (PyPy's ctypes
# has no PyDLL: CDLL there.)
_libc = getattr(ctypes, "PyDLL", ctypes.CDLL)(None, use_errno=True)
_HAVE_MASKS = hasattr(_libc, "pthread_sigmask") and hasattr(_libc, "sigpending")


class SigSet(ctypes.Structure):
    """glibc's sigset_t: 1024 bits, of which the kernel's 64 signals are the first word."""
    _fields_ = [("val", ctypes.c_ulong * 16)]


def _bits(signals) -> int:
    return sum(1 << (s - 1) for s in set(signals))


_SYNCHRONOUS = {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL",
                                             "SIGTRAP", "SIGSYS", "SIGABRT") if hasattr(signal, n)}
_DEFAULT_IGNORED = {getattr(signal, n) for n in ("SIGCHLD", "SIGURG", "SIGWINCH", "SIGCONT")
                    if hasattr(signal, n)}
_CATCHABLE = sorted(s for s in signal.valid_signals() if s not in _SYNCHRONOUS and s <= 64)
WATCHED = _bits(_CATCHABLE) if _HAVE_MASKS else 0
_WATCHED_SET = SigSet()
_WATCHED_SET.val[0] = WATCHED


def kvm_sigset_activate(vcpu) -> None:
    """Entering KVM_RUN: block the watched signals, remember which of them interrupt
    (those the thread, or KVM_SET_SIGNAL_MASK's mask ``vcpu.sigset``, does not block)."""
    if not _HAVE_MASKS:
        vcpu.sigmask_saved = None
        return
    saved = SigSet()
    _libc.pthread_sigmask(signal.SIG_BLOCK, ctypes.byref(_WATCHED_SET), ctypes.byref(saved))
    vcpu.sigmask_saved = saved
    blocked = vcpu.sigset if vcpu.sigset is not None else saved.val[0]
    vcpu.sigmask_interrupting = WATCHED & ~blocked
    if threading.current_thread() is threading.main_thread():
        _divert_handlers(vcpu)


def _divert_handlers(vcpu) -> None:
    """Replace the Python handlers of the interrupting signals by one that records the
    signal (in ``vcpu.signals_arrived``), for the time of KVM_RUN on the main thread.

    This runs on every KVM_RUN: the handlers are read in one pass of C calls and, when
    they are the ones the last KVM_RUN found, the list of signals to divert is reused
    rather than filtered again (a Python loop over every signal cost 20 us per entry)."""
    global _last_handlers, _last_diverted
    arrived = vcpu.signals_arrived = []
    diverted = vcpu.handlers_diverted = {}
    candidates = _candidates(vcpu.sigmask_interrupting)
    handlers = (candidates, list(map(_signal.getsignal, candidates)))
    if handlers != _last_handlers:
        _last_diverted = [(s, h) for s, h in zip(*handlers) if callable(h)]
        _last_handlers = handlers
    if _last_diverted:
        record = lambda signum, frame: arrived.append(signum)       # noqa: E731
        for signum, handler in _last_diverted:
            _signal.signal(signum, record)
            diverted[signum] = handler


_CANDIDATES = {}            # interrupting mask -> the catchable signals in it
_last_handlers = ()         # (signals, their handlers) as _divert_handlers read them last
_last_diverted = []         # (signal, handler) of the callable ones among them


def _candidates(mask: int) -> tuple:
    c = _CANDIDATES.get(mask)
    if c is None:
        c = _CANDIDATES[mask] = tuple(s for s in _CATCHABLE if mask >> (s - 1) & 1)
    return c


def kvm_sigset_deactivate(vcpu) -> None:
    """Leaving KVM_RUN: the handlers and the thread's own mask again; a pending signal (or
    one that arrived at a diverted handler, sent again) is delivered now."""
    saved = vcpu.sigmask_saved
    if saved is not None:
        vcpu.sigmask_saved = None
        diverted, vcpu.handlers_diverted = vcpu.handlers_diverted, {}
        for signum, handler in diverted.items():
            _signal.signal(signum, handler)
        for signum in set(vcpu.signals_arrived):
            send_to_current_thread(signum)
        vcpu.signals_arrived = []
        _libc.pthread_sigmask(signal.SIG_SETMASK, ctypes.byref(saved), None)


def signal_pending(vcpu) -> bool:
    """A signal that interrupts KVM_RUN is pending for this thread (or the process), or
    reached a diverted handler."""
    if vcpu.sigmask_saved is None:
        return False
    if vcpu.signals_arrived:
        return True
    pending = SigSet()
    _libc.sigpending(ctypes.byref(pending))
    bits = pending.val[0] & vcpu.sigmask_interrupting
    return bits != 0 and any(bits >> (s - 1) & 1 and _interrupts(s) for s in range(1, 65))


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
