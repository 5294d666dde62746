"""Guests that take interrupts from the in-kernel IOAPIC, MSIs and the LAPIC, and the harness
that runs them on the host's /dev/kvm and on kvmpy (tests/kernel/test_ioapic.py, test_msi.py,
test_split_irqchip.py).

A guest (32-bit protected mode, ``guestvm.prot32``) software-enables its LAPIC (SVR bit 8:
a LAPIC left as reset takes no fixed interrupt, so a guest that skips this waits for ever,
on the host as on kvmpy), masks the 8259 pair (its pins are unmasked at reset and would send
the same lines as ExtINTs), programs what the scenario needs and loops with IF=1.  Each
handler counts, reports on a port and writes the LAPIC's EOI register.  The guest talks to
the test through port exits: ``READY`` (the count so far in EAX: the test may act, e.g.
raise a line), ``HANDLER`` (in a handler, before its EOI: the test may look at the IOAPIC)
and ``DONE``.

KVM_RUN blocks while the guest halts with an in-kernel irqchip, so each run has a watchdog
(SIGALRM) that turns a guest waiting for ever into a test failure.
"""

import contextlib
import signal

from kvmpy.uapi import kvm as uapi
from tests.support.guestvm import TOUCH_STACK, prot32, putc

IOAPIC_BASE = 0xFEC00000
LAPIC_BASE = 0xFEE00000
LAPIC_EOI, LAPIC_SVR = LAPIC_BASE + 0xB0, LAPIC_BASE + 0xF0
READY, HANDLER, DONE = 0x520, 0x521, 0x522
COUNT = 0x9000                  # the handlers' interrupt count
VECTORS = 0x60                  # IDT size: the scenarios use vectors 0x40-0x5f
EDGE, LEVEL, MASKED = 0, 1 << 15, 1 << 16


def ioapic_write(sel, value):
    """Guest code: IOREGSEL = sel, IOWIN = value (clobbers nothing but flags)."""
    return f" movl ${sel:#x}, {IOAPIC_BASE:#x}\n movl ${value:#x}, {IOAPIC_BASE + 0x10:#x}\n"


def ioapic_read_out(sel, port=READY):
    """Guest code: read IOAPIC register ``sel`` and OUT it (32 bits) to ``port``; clobbers EAX, EDX."""
    return (f" movl ${sel:#x}, {IOAPIC_BASE:#x}\n movl {IOAPIC_BASE + 0x10:#x}, %eax\n"
            f" mov ${port:#x}, %dx\n out %eax, %dx\n")


def redirect(pin, vector, flags=EDGE, dest=0):
    """Guest code: pin -> ``vector`` (fixed delivery, physical destination ``dest``)."""
    return ioapic_write(0x10 + 2 * pin + 1, dest << 24) + ioapic_write(0x10 + 2 * pin, vector | flags)


def out(port):
    return f" mov ${port:#x}, %dx\n out %eax, %dx\n"


# Return from an interrupt taken with IF=1 (RETURN32 without its window: the EOI may have
# made the next interrupt pending, and one taken between POPF and the JMP would find ECX,
# the return address, overwritten by its own return).  STI's shadow covers the JMP.
IRQ_RETURN = " pop %ecx\n add $4, %esp\n andl $~0x200, (%esp)\n popf\n sti\n jmp *%ecx\n"


def handler(mark, before_eoi=""):
    """An interrupt handler: print ``mark``, count, OUT the count to HANDLER, run
    ``before_eoi``, EOI, return with IF=1."""
    return (f" push %eax\n push %edx\n{putc(mark)} incl {COUNT:#x}\n mov {COUNT:#x}, %eax\n{out(HANDLER)}"
            f"{before_eoi} movl $0, {LAPIC_EOI:#x}\n pop %edx\n pop %eax\n{IRQ_RETURN}")


# The start of every such guest: stack touched, LAPIC software-enabled, the 8259s masked,
# the interrupt count zeroed.
PRELUDE = f"""{TOUCH_STACK}
 movl $0x1ff, {LAPIC_SVR:#x}
 mov $0xff, %al
 out %al, $0x21
 out %al, $0xa1
 movl $0, {COUNT:#x}
"""


def guest(setup, handlers, expect):
    """The guest: LAPIC on, PIC masked, ``setup``, then loop until ``expect`` interrupts were
    counted, reporting each new count on READY (the first report is 0: "set up")."""
    body = f"""
{PRELUDE}{setup}
 mov $-1, %ebx
1: cli
 mov {COUNT:#x}, %eax
 cmp ${expect}, %eax
 jae 3f
 cmp %eax, %ebx
 je 2f
 mov %eax, %ebx
{out(READY)}
2: sti
 hlt
 jmp 1b
3:
{out(DONE)}
 hlt
"""
    return prot32(body, handlers, VECTORS)


class GuestHang(Exception):
    """Not an OSError, so that the harness's errno handling does not swallow it."""


def _alarm(signum, frame):
    raise GuestHang("the guest waited for ever (no interrupt came)")


@contextlib.contextmanager
def watchdog(seconds):
    """Fail a KVM_RUN that blocks longer than ``seconds`` (SIGALRM ends the host's KVM_RUN
    with EINTR and kvmpy's at its next check)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def port_exit(m):
    """Run until the next exit that is not a console byte: (port, EAX value) for a guest
    report, else the exit record."""
    rec = m.step()
    if rec["reason"] != "IO" or rec["dir"] != "out":
        return rec
    return int(rec["port"], 16), int.from_bytes(bytes.fromhex(rec["data"]), "little")


def ioapic_state(m):
    chip = uapi.kvm_irqchip(chip_id=uapi.KVM_IRQCHIP_IOAPIC)
    m.sc.ioctl(m.vm_fd, uapi.KVM_GET_IRQCHIP, chip)
    return chip.chip.ioapic


def pin_bits(m, pin):
    """(redirection entry, IRR bit) of ``pin`` as KVM_GET_IRQCHIP shows them."""
    s = ioapic_state(m)
    return s.redirtbl[pin].bits, s.irr >> pin & 1


def line(m, gsi, level):
    """KVM_IRQ_LINE_STATUS: the status KVM reports."""
    irq = uapi.kvm_irq_level(irq=gsi, level=level)
    m.sc.ioctl(m.vm_fd, uapi.KVM_IRQ_LINE_STATUS, irq)
    return irq.status


def signal_msi(m, address, data):
    return m.sc.ioctl(m.vm_fd, uapi.KVM_SIGNAL_MSI, uapi.kvm_msi(address_lo=address, data=data))


def msi_routes(m, routes):
    """KVM_SET_GSI_ROUTING with MSI routes only: [(gsi, address, data)]."""
    table = uapi.with_entries(uapi.kvm_irq_routing, max(1, len(routes)))()
    table.nr = len(routes)
    for i, (gsi, address, data) in enumerate(routes):
        e = table.entries[i]
        e.gsi, e.type = gsi, uapi.KVM_IRQ_ROUTING_MSI
        e.u.msi.address_lo, e.u.msi.data = address, data
    m.sc.ioctl(m.vm_fd, uapi.KVM_SET_GSI_ROUTING, table)


def enable_split_irqchip(pins):
    """``vm_setup`` for a split irqchip whose user space IOAPIC has ``pins`` GSIs."""
    def setup(m):
        cap = uapi.kvm_enable_cap(cap=uapi.KVM_CAP_SPLIT_IRQCHIP)
        cap.args[0] = pins
        m.sc.ioctl(m.vm_fd, uapi.KVM_ENABLE_CAP, cap)
    return setup
