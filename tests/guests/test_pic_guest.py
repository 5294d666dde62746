"""The in-kernel 8259 pair seen by a guest (kvmpy/guests/pic.S): the guest programs both PICs
and takes the edge IRQ 1 and the level-triggered IRQ 10 (through the cascade) that the VMM
raises with KVM_IRQ_LINE, waiting for each in HLT; then one IRQ 1 by poll mode.  On the host's
/dev/kvm and on kvmpy under both vendor modules and both MMU modes (each vendor in a child
process: a process loads one vendor).  Mid-run, the VMM saves the three chips with
KVM_GET_IRQCHIP, scrambles them and puts the saved state back with KVM_SET_IRQCHIP: the run
must end as if nothing had happened."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest

from kvmpy.guests import load_image
from kvmpy.uapi import kvm as uapi
from tests.support import guestvm, rawvmm

REPO = pathlib.Path(__file__).resolve().parents[2]
RAISE, LOWER10, RAISE_POLLED = "0x80", "0x82", "0x83"
CHIPS = (uapi.KVM_IRQCHIP_PIC_MASTER, uapi.KVM_IRQCHIP_PIC_SLAVE, uapi.KVM_IRQCHIP_IOAPIC)


def _line(m, irq, level):
    m.sc.ioctl(m.vm_fd, uapi.KVM_IRQ_LINE, uapi.kvm_irq_level(irq=irq, level=level))


def _get_chip(m, chip_id):
    chip = uapi.kvm_irqchip(chip_id=chip_id)
    m.sc.ioctl(m.vm_fd, uapi.KVM_GET_IRQCHIP, chip)
    return chip


def _round_trip(m):
    """Save, scramble (every PIC register to 0xff but the ELCR masks), restore."""
    saved = [_get_chip(m, c) for c in CHIPS]
    for c in CHIPS[:2]:
        junk = _get_chip(m, c)
        for name in ("irr", "imr", "isr", "irq_base", "last_irr", "priority_add"):
            setattr(junk.chip.pic, name, 0xFF)
        m.sc.ioctl(m.vm_fd, uapi.KVM_SET_IRQCHIP, junk)
    for chip in saved:
        m.sc.ioctl(m.vm_fd, uapi.KVM_SET_IRQCHIP, chip)


def run_pic_guest(sc, round_trip=False):
    m = guestvm.Machine(sc, load_image("pic"), mode="real", vm_setup=guestvm.create_irqchip)
    try:
        exits, raised = [], 0
        while len(exits) < 40:
            rec = m.kvm_run()
            exits.append({k: rec.get(k) for k in ("reason", "port", "if")})
            port = rec.get("port")
            if rec["reason"] != "IO" or port == hex(rawvmm.DEBUG_EXIT_PORT):
                break
            if port == RAISE:
                if raised % 2:
                    _line(m, 10, 1)
                else:
                    _line(m, 1, 1)
                    _line(m, 1, 0)
                raised += 1
                if round_trip and raised == 4:
                    _round_trip(m)
            elif port == LOWER10:
                _line(m, 10, 0)
            elif port == RAISE_POLLED:
                _line(m, 1, 1)
                _line(m, 1, 0)
        regs = {k: int(v, 16) for k, v in m.regs("rbx", "rcx", "rsi", "rdi").items()}
        chips = [bytes(_get_chip(m, c).chip)[:16].hex() for c in CHIPS[:2]]
        return {"exits": exits, "regs": regs, "chips": chips}
    finally:
        m.close()


CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from kvmpy import syscalls
from kvmpy.kernel.x86 import params
from tests.guests.test_pic_guest import run_pic_guest
params.set(ept=sys.argv[2] == "tdp")
print(json.dumps([run_pic_guest(syscalls), run_pic_guest(syscalls, round_trip=True)]))
"""


@functools.lru_cache(maxsize=None)
def _soft(vendor, mmu):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO), mmu], capture_output=True, text=True,
                          env=dict(os.environ, KVMPY_VENDOR=vendor), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _check(report):
    """What any correct 8259 pair shows this guest."""
    r = report["regs"]
    ports = [e["port"] for e in report["exits"]]
    assert ports == [RAISE, RAISE, LOWER10] * 3 + [RAISE_POLLED, hex(rawvmm.DEBUG_EXIT_PORT)]
    assert (r["rsi"], r["rdi"]) == (3, 3)           # three edges on IRQ 1, three levels on IRQ 10
    assert (r["rbx"] >> 8) & 0xFF == 0x04           # the ELCR read back
    assert r["rbx"] & 0xFF == 0x81                  # poll: a request, on pin 1
    assert r["rcx"] & 0xFFFF == 0                   # the poll consumed it: IRR and ISR clear
    return report


@pytest.mark.host
def test_pic_guest_on_the_host():
    _check(run_pic_guest(rawvmm.HOST))
    _check(run_pic_guest(rawvmm.HOST, round_trip=True))


VENDORS_MMUS = [(v, m) for v in ("vmx", "svm") for m in ("tdp", "shadow")]


@pytest.mark.parametrize("vendor,mmu", VENDORS_MMUS)
def test_pic_guest_on_kvmpy(vendor, mmu):
    plain, restored = _soft(vendor, mmu)
    _check(plain)
    assert restored == plain                        # KVM_GET/SET_IRQCHIP lost nothing


@pytest.mark.host
@pytest.mark.parametrize("vendor,mmu", VENDORS_MMUS)
def test_pic_guest_soft_matches_host(vendor, mmu):
    """Exits, registers and the final state of both PICs, byte for byte."""
    host = json.loads(json.dumps(run_pic_guest(rawvmm.HOST)))
    assert _soft(vendor, mmu)[0] == host
