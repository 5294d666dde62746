"""The ioctl-surface fuzzer, bounded and seeded for CI (tests/reliability/ioctl_fuzz.py).

Each seed runs in child processes on kvmpy and, where /dev/kvm exists, on the host; the run
fails on a crash or hang, an escaped Python exception, or an errno unlike the host's.
"""

import pytest

from tests.support.hostkvm import host_kvm_usable
from tests.reliability import ioctl_fuzz


@pytest.mark.parametrize("seed", [1, 2])
def test_ioctl_fuzz_no_defects(seed):
    report = ioctl_fuzz.fuzz(1500, seed, host=host_kvm_usable(), timeout=120)
    assert report["defects"] == []
    assert report["ioctl_calls"] > 1000


def test_each_defect_kind_is_reported():
    """The comparison is live: a crash, an escaped exception and an errno unlike the host's
    are each a defect; a difference the fuzzer can explain is counted, not failed."""
    ops = [["reset"], ["ioctl", "vm", 0xAEFF, 0, None, True], ["ioctl", "vm", 0xAEFF, 0, None, True],
           ["ioctl", "kvm", 0xC008AE05, 0, None, True], ["ioctl", "vm", 0xAEFF, 0, None, True]]
    soft = {0: "ok", 1: "EINVAL", 2: "X:TypeError", 3: "ok"}
    host = {0: "ok", 1: "ENOTTY", 2: "ENOTTY", 3: "E2BIG", 4: "ENOTTY"}
    defects, explained = ioctl_fuzz.compare(ops, {"soft": (soft, "boom", -11), "host": (host, "", 0)})
    assert [d["kind"] for d in defects] == ["crash", "errno", "escape"]
    assert defects[0]["op_index"] == 4 and defects[1]["op_index"] == 1
    assert list(explained.values()) == [1]


def test_a_stepped_hlt_is_explained_only_as_such():
    """kvmpy's KVM_EXIT_HLT against kvm_pvm's KVM_EXIT_DEBUG at the same RIP, after the same
    steps, is the single-stepped HLT; any other difference in a run is a defect."""
    run = ["run", [], False]
    hlt, debug = "ok,io:port0x10,exit5@0x1003", "ok,io:port0x10,exit4@0x1003"
    ops = [run, run, run]
    soft = {0: hlt, 1: hlt, 2: "ok,io:port0x10,exit5@0x1003"}
    host = {0: debug, 1: "ok,io:port0x10,exit4@0x1004", 2: "EINVAL,io:port0x10,exit4@0x1003"}
    defects, explained = ioctl_fuzz.compare(ops, {"soft": (soft, "", 0), "host": (host, "", 0)})
    assert [d["op_index"] for d in defects] == [1, 2]
    assert list(explained.values()) == [1]


def test_a_stepped_out_is_explained_only_as_such():
    """kvmpy's step after the OUT (at the HLT, 0x1002) against kvm_pvm's after the HLT
    (0x1003), after the same IO exit, is the lost trap of kvm_pvm's emulator; the same
    exits at other RIPs, or without the IO exit, are defects."""
    run = ["run", [], False]
    ops = [run, run, run]
    soft = {0: "ok,io:port0x10,exit4@0x1002", 1: "ok,io:port0x10,exit4@0x1001", 2: "ok,exit4@0x1002"}
    host = {0: "ok,io:port0x10,exit4@0x1003", 1: "ok,io:port0x10,exit4@0x1003", 2: "ok,exit4@0x1003"}
    defects, explained = ioctl_fuzz.compare(ops, {"soft": (soft, "", 0), "host": (host, "", 0)})
    assert [d["op_index"] for d in defects] == [1, 2]
    assert list(explained.values()) == [1]
