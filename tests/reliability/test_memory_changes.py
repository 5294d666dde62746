"""Guest memory that the VMM takes away: never a segfault, never a write after the slot is gone.

Each scenario runs in a child process (``memory_fuzz --scenario``), so a segfault fails the
test instead of killing pytest.  The outcomes on the host's /dev/kvm, where it exists, are the
reference (kvm_pvm answers MMIO exits; KVM with EPT/NPT answers EFAULT instead and its run
ends there, which ``memory_fuzz.same_as_host`` accepts).
"""

import json
import os
import subprocess
import sys

import pytest

from tests.reliability import memory_fuzz as mf
from tests.reliability import memory_vm as mv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# what kvmpy answers (and the host's kvm_pvm did when these were written)
EXPECTED = {
    "munmap_write": ["MMIO w 0x20010", "IO 0xf4"],
    "munmap_read": ["MMIO r 0x20010", "IO 0xf4"],
    "ro_write": ["MMIO w 0x20010", "IO 0xf4"],
    "ro_read": ["IO 0xf4"],
    "none_write": ["MMIO w 0x20010", "IO 0xf4"],
    "none_read": ["MMIO r 0x20010", "IO 0xf4"],
    "nevermapped_write": ["MMIO w 0x20010", "IO 0xf4"],
    "nevermapped_read": ["MMIO r 0x20010", "IO 0xf4"],
    "code_munmap_write": ["INTERNAL_ERROR 1"],
    "code_munmap_read": ["INTERNAL_ERROR 1"],
    "used_then_munmap": ["IO 0x80", "MMIO w 0x20010", "MMIO r 0x20010", "IO 0xf4"],
    "used_then_ro": ["IO 0x80", "MMIO w 0x20010", "IO 0xf4"],
    "used_then_none": ["IO 0x80", "MMIO w 0x20010", "MMIO r 0x20010", "IO 0xf4"],
    # no memslot left: an emulation failure without instruction bytes (the processor's TLB,
    # which still pointed at the unmapped code, was flushed first: it was a segfault)
    "all_deleted_then_munmap": ["IO 0x80", "INTERNAL_ERROR 1"],
}


def _child(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    p = subprocess.run([sys.executable, "-m", "tests.reliability.memory_fuzz"] + list(args), cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, "child ended with %s: %s" % (p.returncode, p.stderr[-2000:])
    return p.stdout


def _scenario(name, backend):
    return json.loads(_child("--scenario", name, "--backend", backend).splitlines()[-1])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_memory_taken_away_is_an_exit_not_a_segfault(name):
    r = _scenario(name, "soft")
    assert r["outcomes"] == EXPECTED[name]
    assert r["canaries"]


@pytest.mark.host
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_memory_taken_away_ends_as_on_the_host(name):
    soft, host = _scenario(name, "soft"), _scenario(name, "host")
    assert mf.same_as_host(soft["outcomes"], host["outcomes"]), (soft, host)
    assert soft["canaries"] and host["canaries"]


def test_an_efault_of_the_host_ends_its_run():
    """The comparison a KVM with EPT/NPT gets: EFAULT where kvmpy exits, then nothing."""
    soft = EXPECTED["used_then_munmap"]
    assert mf.same_as_host(soft, soft)
    assert mf.same_as_host(soft, ["IO 0x80", "EFAULT"])
    assert mf.same_as_host(EXPECTED["code_munmap_read"], ["EFAULT"])
    assert not mf.same_as_host(soft, ["EFAULT"])                  # the first exit differs
    assert not mf.same_as_host(soft, ["IO 0x80", "MMIO w 0x20010"])
    assert not mf.same_as_host(EXPECTED["ro_read"], ["EFAULT"])   # an IO exit is not an access


def test_scenarios_cover_the_issue_reproducers():
    assert set(EXPECTED) == set(mf.SCENARIOS)


def test_delete_under_a_running_vcpu_then_munmap():
    """The vCPU stores in a loop in another thread; after KVM_SET_USER_MEMORY_REGION deleted
    (or moved) the slot, the old memory never changes again, and munmapping it is safe."""
    out = _child("--child", "--threads-only", "--seed", "7", "--count", "6")
    cases = [json.loads(line) for line in out.splitlines()]
    assert len(cases) == 6
    assert [c["defects"] for c in cases] == [[]] * 6
    # every delete hit the guest still storing (it spins): its stores became MMIO exits
    assert all(c["exits"] >= 1 for c in cases)


def test_random_memory_changes_seeded():
    """A bounded, seeded run of the fuzzer: its child processes report no defect."""
    summary = mf.fuzz(16, seed=100, batch=8, log=open(os.devnull, "w"))
    assert summary["cases"] == 16
    assert summary["defects"] == []


def test_canary_check_sees_a_write_outside_the_slots():
    """The fuzzer's canary check is not vacuous: a stray write to a guard page is seen."""
    from kvmpy import syscalls
    vm = mv.MemoryVm(syscalls, mv.guest([]))
    try:
        assert vm.canaries_intact()
        import ctypes
        ctypes.memset(vm.guards[1] + 100, 0, 1)
        assert not vm.canaries_intact()
    finally:
        vm.close()
