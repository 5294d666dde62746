"""kernel/signals.py: the pending-signal check a vCPU thread makes after every exit."""

import ctypes

import pytest

from kvmpy.kernel import signals


class _Vcpu:
    sigset = None


def test_the_signal_calls_keep_the_gil():
    """sigpending and pthread_sigmask never block, so they are called without giving the
    GIL up (ctypes.PyDLL): a CDLL call releases it, and with two vCPU threads running guest
    code the one that asks for its signals after every exit then waited for the other's
    turn with the GIL each time -- 300 us a check on average, most of the time of x2apic's
    NMI ping-pong (80 round trips a second; 600 with the GIL kept)."""
    if not hasattr(ctypes, "PyDLL"):
        pytest.skip("this interpreter's ctypes has no PyDLL (PyPy)")
    for name in ("sigpending", "pthread_sigmask"):
        assert getattr(signals._libc, name)._flags_ & ctypes._FUNCFLAG_PYTHONAPI, name
    vcpu = _Vcpu()
    signals.kvm_sigset_activate(vcpu)
    try:
        assert not signals.signal_pending(vcpu)
    finally:
        signals.kvm_sigset_deactivate(vcpu)
