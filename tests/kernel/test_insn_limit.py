"""The soft kernel's ``insn_limit`` module parameter: a vCPU retires that many guest
instructions over all its entries, then SIGXCPU goes to its thread and KVM_RUN ends with
EINTR / KVM_EXIT_INTR, even for a guest that never exits and for self-loops that the
processor runs as one block (``kvmpy run --max-insns`` is built on it)."""

import errno
import signal

import pytest

from kvmpy import syscalls
from kvmpy.kernel.x86 import params
from kvmpy.uapi import kvm as uapi
from tests.support.guestvm import Machine, assemble, prot32

INC_LOOP = assemble(prot32("1: inc %eax\n jmp 1b\n"))       # two instructions an iteration
OUT_LOOP = assemble(prot32("1: inc %eax\n out %al, $0x80\n jmp 1b\n"))


@pytest.fixture
def limited(monkeypatch):
    """Set the limit for vCPUs created from now on; record the SIGXCPUs."""
    seen = []
    old = signal.signal(signal.SIGXCPU, lambda signum, frame: seen.append(signum))
    yield lambda n: monkeypatch.setattr(params, "insn_limit", n), seen
    signal.signal(signal.SIGXCPU, old)


def _run(m):
    try:
        syscalls.ioctl(m.vcpu_fd, uapi.KVM_RUN, 0)
    except OSError as e:
        return e.errno
    return 0


@pytest.mark.parametrize("limit", [1001, 50_001, 250_001])
def test_a_looping_guest_stops_at_the_limit(soft_kvm, soft_mmu, limited, limit):
    set_limit, seen = limited
    set_limit(limit)
    m = Machine(syscalls, INC_LOOP)
    try:
        assert (_run(m), m.run.exit_reason) == (errno.EINTR, uapi.KVM_EXIT_INTR)
        assert seen == [signal.SIGXCPU]
        iterations = int(m.regs("rax")["rax"], 16)
        assert limit // 2 - 20 <= iterations <= limit // 2     # a few setup instructions
    finally:
        m.close()


def test_the_limit_counts_every_entry(soft_kvm, limited):
    """A guest that exits at every iteration: the OUT that KVM retires counts too.  The
    signal comes with the exit of the entry that reached the limit (its handler runs as
    KVM_RUN returns), as a signal does on Linux."""
    set_limit, seen = limited
    set_limit(3000)
    m = Machine(syscalls, OUT_LOOP)
    try:
        exits = 0
        while not seen:
            assert (_run(m), m.run.exit_reason) == (0, uapi.KVM_EXIT_IO)
            exits += 1
        assert seen == [signal.SIGXCPU]
        assert 990 <= exits <= 1000
    finally:
        m.close()


def test_no_limit_by_default(soft_kvm):
    assert params.insn_limit is None
