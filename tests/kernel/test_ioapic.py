"""The in-kernel IOAPIC as a guest sees it, on the host's /dev/kvm and on kvmpy (both vendor
modules, both MMU modes): its registers through the MMIO window at 0xfec00000, an edge
interrupt from KVM_IRQ_LINE, a level one with remote IRR and its EOI (sent again while the
line stays high), and a masked pin that latches its line.  The expected values are what the
host shows (kvm_pvm on Linux 6.18), so kvmpy is checked where /dev/kvm is absent.

The pins used are 16-23: the default routing sends GSIs 16-23 to the IOAPIC alone."""

import shutil

import pytest

from kvmpy.uapi import kvm as uapi
from tests.support import rawvmm
from tests.support.apicguest import (DONE, EDGE, HANDLER, LEVEL, MASKED, READY, guest, handler, ioapic_read_out,
                                     ioapic_state, ioapic_write, line, pin_bits, port_exit, redirect, watchdog)
from tests.support.guestvm import assemble, create_irqchip, machine, prot32
from tests.support.vendors import VENDORS_MMUS, jsonable, soft_results

pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                                reason="needs GNU as and ld")
REMOTE_IRR = 1 << 14


def _reports(m, act=None, limit=60):
    """The guest's (port, value) reports up to DONE; ``act(m, port, value)`` runs at each."""
    got = []
    with watchdog(20):
        for _ in range(limit):
            r = port_exit(m)
            got.append(r)
            if not isinstance(r, tuple) or r[0] == DONE:
                return got
            if act:
                act(m, *r)
    return got


# ------------------------------------------------------------------ the registers
REG_PIN = 3
REG_LOW = 0x10 + 2 * REG_PIN


def _registers_guest():
    body = (ioapic_read_out(1)                                         # version
            + ioapic_write(0, 0xFF000000) + ioapic_read_out(0)         # ID: 4 bits
            + ioapic_read_out(2)                                       # arbitration = ID
            + ioapic_write(1, 0x12345678) + ioapic_read_out(1)         # version is read-only
            # level, masked, vector 0xff, with the read-only delivery status and remote IRR bits
            + ioapic_write(REG_LOW, 0x1D0FF) + ioapic_read_out(REG_LOW)
            + ioapic_write(REG_LOW + 1, 0xAB000000) + ioapic_read_out(REG_LOW + 1)
            + ioapic_read_out(0x40) + ioapic_read_out(3)                # no such register: all ones
            + f" movl $0x1ff, {0xFEC00000:#x}\n movl {0xFEC00000:#x}, %eax\n mov ${READY:#x}, %dx\n out %eax, %dx\n"
            + f" mov ${HANDLER:#x}, %dx\n out %eax, %dx\n"                 # the test sets remote IRR
            + ioapic_read_out(REG_LOW)
            + ioapic_write(REG_LOW, 0x180FE) + ioapic_read_out(REG_LOW)  # a level rewrite keeps it
            + ioapic_write(REG_LOW, 0x100FE) + ioapic_read_out(REG_LOW)  # an edge one drops it
            + ioapic_write(REG_LOW, 0x180FE) + ioapic_read_out(REG_LOW)
            + f" mov ${DONE:#x}, %dx\n out %eax, %dx\n hlt\n")
    return prot32(body)


@machine
def registers(make):
    m = make(assemble(_registers_guest()), vm_setup=create_irqchip)

    def act(m, port, value):
        if port == HANDLER:
            chip = uapi.kvm_irqchip(chip_id=uapi.KVM_IRQCHIP_IOAPIC)
            m.sc.ioctl(m.vm_fd, uapi.KVM_GET_IRQCHIP, chip)
            chip.chip.ioapic.redirtbl[REG_PIN].bits |= REMOTE_IRR
            m.sc.ioctl(m.vm_fd, uapi.KVM_SET_IRQCHIP, chip)
    reports = _reports(m, act)
    s = ioapic_state(m)
    return dict(reports=[hex(v) for p, v in reports if p == READY], last=reports[-1][0],
                id=s.id, ioregsel=hex(s.ioregsel), entry=hex(s.redirtbl[REG_PIN].bits))


REGISTERS = dict(
    reports=["0x170011", "0xf000000", "0xf000000", "0x170011", "0x180ff", "0xab000000", "0xffffffff",
             "0xffffffff", "0xff", "0x1c0ff", "0x1c0fe", "0x100fe", "0x180fe"],
    last=DONE, id=15, ioregsel="0x16", entry="0xab000000000180fe")


# ------------------------------------------------------------------ edge
EDGE_PIN, EDGE_VEC = 16, 0x50


@machine
def edge(make):
    """Two edges, each raised and lowered by KVM_IRQ_LINE at a READY report; a second raise
    while the line is high is coalesced (status 0)."""
    setup = redirect(EDGE_PIN, EDGE_VEC, EDGE)
    m = make(assemble(guest(setup, {EDGE_VEC: handler("E")}, 2)), vm_setup=create_irqchip)
    statuses = []

    def act(m, port, value):
        if port == READY:
            statuses.extend([line(m, EDGE_PIN, 1), line(m, EDGE_PIN, 1), line(m, EDGE_PIN, 0)])
    reports = _reports(m, act)
    return dict(console=m.console, reports=reports, statuses=statuses, pin=[hex(b) for b in pin_bits(m, EDGE_PIN)])


EDGE_RESULT = dict(console="EE", reports=[[READY, 0], [HANDLER, 1], [READY, 1], [HANDLER, 2], [DONE, 2]],
                   statuses=[1, 0, 1, 1, 0, 1], pin=[hex(EDGE_VEC), "0x0"])


# ------------------------------------------------------------------ level
LEVEL_PIN, LEVEL_VEC = 17, 0x51


@machine
def level(make):
    """The line goes high at READY and stays high through the first interrupt: its EOI
    sends it again; the test lowers it in the second handler, whose EOI ends it."""
    setup = redirect(LEVEL_PIN, LEVEL_VEC, LEVEL)
    m = make(assemble(guest(setup, {LEVEL_VEC: handler("L")}, 2)), vm_setup=create_irqchip)
    seen = []

    def act(m, port, value):
        if port == READY:
            seen.append(("raise", line(m, LEVEL_PIN, 1), line(m, LEVEL_PIN, 1)))
        elif port == HANDLER:
            bits, irr = pin_bits(m, LEVEL_PIN)
            seen.append(("in handler", bool(bits & REMOTE_IRR), irr))
            if value == 2:
                seen.append(("lower", line(m, LEVEL_PIN, 0)))
    reports = _reports(m, act)
    bits, irr = pin_bits(m, LEVEL_PIN)
    return dict(console=m.console, reports=reports, seen=seen, after=[bool(bits & REMOTE_IRR), irr])


LEVEL_RESULT = dict(console="LL", reports=[[READY, 0], [HANDLER, 1], [HANDLER, 2], [DONE, 2]],
                    seen=[["raise", 1, -1], ["in handler", True, 1], ["in handler", True, 1], ["lower", 1]],
                    after=[False, 0])


# ------------------------------------------------------------------ masked pins
MASK_EDGE_PIN, MASK_LEVEL_PIN, MASK_EDGE_VEC, MASK_LEVEL_VEC = 18, 19, 0x52, 0x53


@machine
def masked(make):
    """Both pins masked; the test raises their lines at the first READY (status -1, the IRR
    latches them).  The guest then unmasks both: the level pin sends at once, the edge pin's
    latched edge is not sent (KVM re-evaluates only level pins on unmask), and a new edge,
    raised at the next READY, is."""
    setup = (redirect(MASK_EDGE_PIN, MASK_EDGE_VEC, EDGE | MASKED) + redirect(MASK_LEVEL_PIN, MASK_LEVEL_VEC, LEVEL | MASKED)
             + f" mov $0, %eax\n mov ${READY:#x}, %dx\n out %eax, %dx\n"
             + redirect(MASK_EDGE_PIN, MASK_EDGE_VEC, EDGE) + redirect(MASK_LEVEL_PIN, MASK_LEVEL_VEC, LEVEL))
    handlers = {MASK_EDGE_VEC: handler("e"), MASK_LEVEL_VEC: handler("l", f" mov ${0x523:#x}, %dx\n out %eax, %dx\n")}
    m = make(assemble(guest(setup, handlers, 2)), vm_setup=create_irqchip)
    seen = []

    def act(m, port, value):
        if port == READY and not seen:
            seen.append(("raise masked", line(m, MASK_EDGE_PIN, 1), line(m, MASK_LEVEL_PIN, 1)))
            s = ioapic_state(m)
            seen.append(("irr", s.irr >> MASK_EDGE_PIN & 3))
        elif port == READY and value == 1:
            seen.append(("new edge", line(m, MASK_EDGE_PIN, 0), line(m, MASK_EDGE_PIN, 1)))
        elif port == 0x523:
            seen.append(("lower level", line(m, MASK_LEVEL_PIN, 0)))
    reports = _reports(m, act)
    return dict(console=m.console, reports=reports, seen=seen)


MASKED_RESULT = dict(console="le", reports=[[READY, 0], [READY, 0], [HANDLER, 1], [0x523, 1], [READY, 1],
                                            [HANDLER, 2], [DONE, 2]],
                     seen=[["raise masked", -1, -1], ["irr", 3], ["lower level", 1], ["new edge", 1, 1]])


# ------------------------------------------------------------------ retargeted in service
MOVED_PIN, MOVED_VEC = 20, 0x54


@machine
def retargeted(make):
    """A level interrupt in service whose entry the handler sends elsewhere (destination 1,
    no such LAPIC) before its EOI: the EOI still reaches the IOAPIC (KVM keeps the vector
    among the vCPU's EOI-exit vectors while it is pending there) and clears remote IRR."""
    setup = redirect(MOVED_PIN, MOVED_VEC, LEVEL)
    move = redirect(MOVED_PIN, MOVED_VEC, LEVEL, dest=1)
    m = make(assemble(guest(setup, {MOVED_VEC: handler("M", move)}, 1)), vm_setup=create_irqchip)

    def act(m, port, value):
        if port == READY and value == 0:
            line(m, MOVED_PIN, 1)
        elif port == HANDLER:
            line(m, MOVED_PIN, 0)
    reports = _reports(m, act)
    bits, irr = pin_bits(m, MOVED_PIN)
    return dict(console=m.console, reports=reports, remote_irr=bool(bits & REMOTE_IRR), dest=bits >> 56)


RETARGETED_RESULT = dict(console="M", reports=[[READY, 0], [HANDLER, 1], [DONE, 1]], remote_irr=False, dest=1)

SCENARIOS = {"registers": registers, "edge": edge, "level": level, "masked": masked, "retargeted": retargeted}
EXPECTED = {"registers": REGISTERS, "edge": EDGE_RESULT, "level": LEVEL_RESULT, "masked": MASKED_RESULT,
            "retargeted": RETARGETED_RESULT}


# kvm_pvm (the vendor module of the host this was measured on) leaves a delivered level vector in the LAPIC's IRR with
# its ISR bit clear (KVM_GET_LAPIC inside the handler shows it), so the interrupt is taken
# twice and its EOI never reaches the IOAPIC (remote IRR stays set): measured, not KVM's design.
PVM_DIFFERS = {"level", "masked", "retargeted"} if rawvmm.host_kvm_module() == "kvm_pvm" else set()


def _param(name, known_bad, reason):
    marks = [pytest.mark.xfail(reason=reason, strict=True)] if name in known_bad else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.host
@pytest.mark.parametrize("name", [_param(n, PVM_DIFFERS, "kvm_pvm's level delivery") for n in sorted(SCENARIOS)])
def test_ioapic_on_the_host(name):
    assert jsonable(SCENARIOS[name](rawvmm.HOST)) == jsonable(EXPECTED[name])


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("vendor,mmu", VENDORS_MMUS)
def test_ioapic_on_kvmpy(name, vendor, mmu):
    assert soft_results("tests.kernel.test_ioapic", vendor, mmu)[name] == jsonable(EXPECTED[name])
