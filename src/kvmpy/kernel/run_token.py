"""The per-VM run token: which vCPU thread executes guest code now.

There is no Linux analogue: on the host every vCPU thread runs on its own physical CPU, and
the hardware keeps LOCK-prefixed RMW atomic.  kvmpy's processor is Python code, whose
threads the interpreter interleaves at arbitrary bytecodes, so a guest instruction's
read-modify-write could be split by another vCPU's store.  The token makes guest execution
serial: a vCPU holds it only while in guest mode (``kvm_guest_mode_run``) and the processor
gives it up only between blocks, so no instruction -- LOCK, XCHG or any other -- straddles
a switch.  Everything outside guest mode (exit handling, user space, ``kvm_vcpu_block``)
runs without it.

Fairness: the token is handed in arrival order (a FIFO of waiting vCPUs), and a holder with
a waiter behind it ends its entry once it has run ``SLICE`` instructions (asked through the
processor's host interrupt line, ``kvm_run_token_should_yield``), so a guest spinning on a
lock that another vCPU holds lets that vCPU run and release it.
"""

from __future__ import annotations

import collections
import threading

SLICE = 20_000      # instructions a vCPU runs before yielding to a waiting one


class RunToken:
    """The token of one VM: its holder and the queue of vCPUs waiting for it."""

    def __init__(self):
        self.cond = threading.Condition(threading.Lock())
        self.holder = None
        self.waiting: collections.deque = collections.deque()
        self.slice_end = 0          # the holder's icount at which it yields to a waiter


def kvm_run_token_acquire(vcpu) -> None:
    """Wait for the token (in arrival order), then hold it for a slice."""
    token = vcpu.kvm.run_token
    with token.cond:
        if token.holder is not None or token.waiting:
            token.waiting.append(vcpu)
            while token.holder is not None or token.waiting[0] is not vcpu:
                token.cond.wait()
            token.waiting.popleft()
        token.holder = vcpu
        token.slice_end = vcpu.arch.cpu.icount + SLICE


def kvm_run_token_release(vcpu) -> None:
    token = vcpu.kvm.run_token
    with token.cond:
        if token.holder is vcpu:
            token.holder = None
            if token.waiting:
                token.cond.notify_all()


def kvm_run_token_should_yield(vcpu) -> bool:
    """Has the holder used its slice while another vCPU waits?  Read without the lock (a
    stale answer only moves the yield by one host tick)."""
    token = vcpu.kvm.run_token
    return bool(token.waiting) and vcpu.arch.cpu.icount >= token.slice_end
