"""The per-VM run token: which vCPU thread executes guest code now.

There is no Linux analogue: on the host every vCPU thread runs on its own physical CPU, and
the hardware keeps LOCK-prefixed RMW atomic.  kvmpy's processor is Python code, whose
threads the interpreter interleaves at arbitrary bytecodes, so a guest instruction's
read-modify-write could be split by another vCPU's store.  The token makes guest execution
serial: a vCPU holds it from the start of ``vcpu_enter_guest`` until its exit is handled
(the guest's instructions, and the kernel's emulation of the exiting one, which may write
guest memory too); the processor gives it up only between blocks, so no instruction --
LOCK, XCHG or any other -- straddles a switch.  Everything else (user space, a halted
vCPU's ``kvm_vcpu_block``, the completion of a user-space exit) runs without it.

Fairness: the token is handed in arrival order (a FIFO of waiting vCPUs), and a holder with
a waiter behind it ends its entry once it has run ``SLICE`` instructions (asked through the
processor's host interrupt line, ``kvm_run_token_should_yield``), so a guest spinning on a
lock that another vCPU holds lets that vCPU run and release it.

A waiter is in KVM_RUN, so it must leave it as promptly as a running vCPU for
``immediate_exit`` or an unblocked signal (the VMM's kick): it waits at most
``TOKEN_POLL_S`` at a time and then asks the caller's ``interrupted()``; a signal cannot
wake it sooner, since KVM_RUN keeps the signals blocked (signals.py).
"""

from __future__ import annotations

import collections
import threading

SLICE = 20_000          # instructions a vCPU runs before yielding to a waiting one
CONTENDED_SLICE = 4_000 # the entry budget of a vCPU that enters while another waits
TOKEN_POLL_S = 0.001    # longest wait for the token before the waiter looks for signals again


class RunToken:
    """The token of one VM: its holder and the queue of vCPUs waiting for it."""

    def __init__(self):
        self.cond = threading.Condition(threading.Lock())
        self.holder = None
        self.last_holder = None     # the vCPU that held it last (a hand-off is a change)
        self.waiting: collections.deque = collections.deque()
        self.slice_end = 0          # the holder's icount at which it yields to a waiter
        self.handoffs = 0           # acquisitions by another vCPU than the last holder


def _mine(token, vcpu) -> bool:
    return token.holder is None and token.waiting[0] is vcpu


def kvm_run_token_busy(token) -> bool:
    """Must a vCPU that wants the token now wait for it (held, or others queued first)?
    Under ``token.cond`` an answer; without it, a hint."""
    return token.holder is not None or bool(token.waiting)


def kvm_run_token_acquire(vcpu, interrupted) -> bool:
    """Wait for the token (in arrival order), then hold it for a slice.  False, without the
    token, when ``interrupted()`` (immediate_exit, a pending signal) turns true first."""
    token = vcpu.kvm.run_token
    with token.cond:
        if kvm_run_token_busy(token):
            token.waiting.append(vcpu)
            try:
                while not _mine(token, vcpu):
                    token.cond.wait(TOKEN_POLL_S)
                    if not _mine(token, vcpu) and interrupted():
                        return False
            finally:
                token.waiting.remove(vcpu)
                token.cond.notify_all()     # the head of the queue may have changed
        token.holder = vcpu
        if token.last_holder is not vcpu:
            token.last_holder = vcpu
            token.handoffs += 1
        token.slice_end = vcpu.arch.cpu.icount + SLICE
    return True


def kvm_run_token_release(vcpu) -> None:
    token = vcpu.kvm.run_token
    with token.cond:
        if token.holder is vcpu:
            token.holder = None
            if token.waiting:
                token.cond.notify_all()


def kvm_run_token_contended(vcpu) -> bool:
    """Does another vCPU wait for the token (read without the lock, as a hint)?"""
    return bool(vcpu.kvm.run_token.waiting)


def kvm_run_token_should_yield(vcpu) -> bool:
    """Has the holder used its slice while another vCPU waits?  Read without the lock (a
    stale answer only moves the yield by one host tick)."""
    token = vcpu.kvm.run_token
    return bool(token.waiting) and vcpu.arch.cpu.icount >= token.slice_end
