"""The in-kernel PIT seen by a guest (kvmpy/guests/pit.S): channel 2's OUT polled through the
speaker port 0x61 with its gate on, channel 0's counter latched twice and its status read
back, a BCD counter on channel 1; on the host's /dev/kvm and on kvmpy under both vendor
modules and both MMU modes (each vendor in a child process: a process loads one vendor)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from kvmpy.guests import load_image
from kvmpy import syscalls
from tests.support import guestvm, rawvmm

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_pit_guest(sc):
    """The guest's report: its registers at the debug-exit OUT, and the exits it made."""
    m = guestvm.Machine(sc, load_image("pit"), mode="real", vm_setup=guestvm.create_irqchip_and_pit)
    try:
        exits = []
        while True:
            rec = m.kvm_run()
            exits.append(rec)
            if rec.get("port") == hex(rawvmm.DEBUG_EXIT_PORT) or rec["reason"] != "IO" or len(exits) > 5:
                break
        regs = {k: int(v, 16) for k, v in m.regs("rbx", "rcx", "rdx", "rsi", "rdi", "rbp").items()}
        return {"exits": exits, "regs": regs, "tsc": int.from_bytes(m.ram[0x6000:0x6008], "little")}
    finally:
        m.close()


CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from kvmpy import syscalls
from kvmpy.kernel.x86 import params
from tests.guests.test_pit_guest import run_pit_guest
params.set(ept=sys.argv[2] == "tdp")
print(json.dumps(run_pit_guest(syscalls)))
"""


def _soft(vendor, mmu):
    env = dict(os.environ, KVMPY_VENDOR=vendor)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO), mmu], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _check(report):
    """What any correct 8254 shows this guest, whatever the speed of the processor."""
    exits, r = report["exits"], report["regs"]
    assert [(e["reason"], e.get("port")) for e in exits] == [("IO", "0xf4")]   # the PIT's ports never exit
    bl, bh = r["rbx"] & 0xFF, (r["rbx"] >> 8) & 0xFF
    assert bl == 0                      # mode 0: OUT low once the count is loaded
    assert 0 < r["rcx"] < 0x1000000     # ... and it rose while the guest polled
    assert bh == 0x21                   # gate on, speaker data off, OUT high
    first, second = r["rsi"], r["rdi"]
    assert second != first              # the counter runs
    assert r["rdx"] & 0x7F == 0x34      # read-back status: lobyte/hibyte, mode 2, binary
    assert 0 < r["rbp"] < 0x5000        # BCD mode, counting in binary as KVM does
    return r


@pytest.mark.host
def test_pit_guest_on_the_host():
    _check(run_pit_guest(rawvmm.HOST))


@pytest.mark.parametrize("mmu", ["tdp", "shadow"])
@pytest.mark.parametrize("vendor", ["vmx", "svm"])
def test_pit_guest_on_kvmpy(vendor, mmu):
    r = _check(_soft(vendor, mmu))
    # On the virtual clock the counts follow from the instructions retired: channel 0 went
    # down by the delay loop's ticks (about 4000 instructions = 4 us = 4.8 ticks), the BCD
    # counter likewise, from 0x5000.
    assert 0 < (r["rsi"] - r["rdi"]) % 0x10000 < 20
    assert 0x5000 - 20 < r["rbp"] < 0x5000
    # 0x100 ticks of channel 2 = 214.6 us = 214,552 instructions, 6 per poll
    assert abs(r["rcx"] - 0x100 * 10**9 // 1193182 // 6) < 5


def test_two_runs_on_the_virtual_clock_are_identical(soft_kvm):
    """Determinism: the same guest twice gives the same exits, the same counter reads, the
    same number of polls and the same TSC (in-process: the second VM is a new VM)."""
    first, second = run_pit_guest(syscalls), run_pit_guest(syscalls)
    assert first == second and first["tsc"] > 0
