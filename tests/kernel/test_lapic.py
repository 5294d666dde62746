"""The in-kernel LAPIC as a guest and a VMM see it, on the host's /dev/kvm and on kvmpy (both
vendor modules, both MMU modes): its registers through the xAPIC window (reset values,
writable bits, TPR/PPR, the software enable), self-IPIs through the ICR, the TPR holding an
interrupt back, the timer in one-shot, periodic and TSC-deadline modes, x2APIC mode through
MSRs (and the #GPs of its reserved registers), and KVM_GET/SET_LAPIC with KVM_SET_SREGS's
CR8.  Expected values are the host's (Linux 6.18), measured; guests report through port
exits (``READY``: a value; ``DONE``: the end)."""

import shutil

import pytest

from kvmpy.uapi import kvm as uapi
from tests.support import rawvmm
from tests.support.apicguest import COUNT, DONE, LAPIC_BASE, READY, guest, handler, out, port_exit, watchdog
from tests.support.guestvm import (GP_SKIP2, assemble, create_irqchip, errno_name, machine, prot32,
                                   putc)
from tests.support.vendors import scenario_tests

pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                                reason="needs GNU as and ld")


def rd(reg):
    """Guest code: read LAPIC register ``reg`` (xAPIC window) and report it on READY."""
    return f" movl {LAPIC_BASE + reg:#x}, %eax\n{out(READY)}"


def wr(reg, value):
    return f" movl ${value:#x}, {LAPIC_BASE + reg:#x}\n"


def rdmsr(msr):
    """Guest code: RDMSR and report EAX (a #GP prints G and skips it, reporting 0xee)."""
    return f" mov $0xee, %eax\n mov ${msr:#x}, %ecx\n rdmsr\n{out(READY)}"


def wrmsr(msr, value, high=0):
    return f" mov ${msr:#x}, %ecx\n mov ${value:#x}, %eax\n mov ${high:#x}, %edx\n wrmsr\n"


def _reports(m, limit=200):
    got = []
    with watchdog(30):
        for _ in range(limit):
            r = port_exit(m)
            if not isinstance(r, tuple):
                return got + [r.get("reason")]
            got.append(r[1] if r[0] == READY else "done" if r[0] == DONE else r)
            if r[0] == DONE:
                return got
    return got


def _run(make, body, handlers=None):
    m = make(assemble(prot32(body + f"{out(DONE)} hlt\n", handlers, 0x60)), vm_setup=create_irqchip)
    reports = _reports(m)
    return dict(console=m.console, reports=[hex(v) if isinstance(v, int) else v for v in reports])


# ------------------------------------------------------------------ registers
@machine
def registers(make):
    body = "".join(rd(r) for r in (0x20, 0x30, 0xF0, 0x350, 0x360, 0x320, 0xE0, 0xD0, 0x80, 0xA0, 0x3E0, 0x280))
    body += wr(0xF0, 0x1FF) + rd(0xF0)                              # software-enabled
    body += wr(0x80, 0x5F) + rd(0x80) + rd(0xA0)                    # TPR, PPR follows
    body += wr(0x80, 0) + wr(0xD0, 0xFF123456) + rd(0xD0)           # LDR: bits 24-31
    body += wr(0xE0, 0) + rd(0xE0)                                   # DFR: model bits only
    body += wr(0x360, 0xFFFFFFFF) + rd(0x360)                       # LINT1's writable bits
    body += wr(0x370, 0xFFFFFFFF) + rd(0x370)                       # LVT error
    body += wr(0x320, 0xFFFFFFFF) + rd(0x320)                       # LVT timer (+ mode bits)
    body += wr(0x3E0, 0xFF) + rd(0x3E0)                              # TDCR: bits 0, 1, 3
    body += wr(0x20, 0x05000000) + rd(0x20) + wr(0x20, 0)           # xAPIC ID is writable
    body += wr(0x30, 0x12345678) + rd(0x30)                          # LVR is read-only
    body += wr(0xF0, 0xFF) + rd(0x350) + rd(0x360)                  # disabling masks the LVTs
    body += wr(0x350, 0x700) + rd(0x350)                            # and keeps them masked
    return _run(make, body)


# ------------------------------------------------------------------ IPIs and the TPR
SELF_VEC, PHYS_VEC, TPR_VEC = 0x41, 0x42, 0x45


@machine
def self_ipi(make):
    """A self-IPI by shorthand, one by physical destination (its own ID), the ICR read back
    (delivery status clear), and a vector held back by the TPR until the TPR drops."""
    setup = (wr(0x300, 0x40000 | SELF_VEC) + rd(0x300)
             + wr(0x310, 0) + wr(0x300, PHYS_VEC) + rd(0x300)
             + wr(0x80, 0x50) + wr(0x300, 0x40000 | TPR_VEC) + " sti\n nop\n cli\n"
             + f" mov {COUNT:#x}, %eax\n{out(READY)}" + rd(0x220) + rd(0xA0)
             + wr(0x80, 0))
    handlers = {v: handler(c) for v, c in ((SELF_VEC, "s"), (PHYS_VEC, "p"), (TPR_VEC, "t"))}
    m = make(assemble(guest(setup, handlers, 3)), vm_setup=create_irqchip)
    reports = _reports(m)
    return dict(console=m.console, reports=[hex(v) for v in reports[:6]])


# the console gives the order (highest class first once the TPR drops); the reports after
# the setup's are left out: between the interrupts kvm_pvm lets the guest's loop report,
# where the silicon (and kvmpy) takes the next one at the end of the handler's STI shadow
SELF_IPI = dict(console="tps", reports=["0x40041", "0x42", "0x0", "0x26", "0x50", "0x0"])


# ------------------------------------------------------------------ the timer
TIMER_VEC = 0x46


def _timer(make, setup, mark, count, after, handlers=None):
    """A timer scenario: ``setup`` arms it, the loop waits for ``count`` interrupts (each
    printing ``mark``), then ``after`` reports what is left."""
    handlers = {TIMER_VEC: handler(mark), **(handlers or {})}
    code = guest(setup, handlers, count).replace(out(DONE), after + out(DONE), 1)
    m = make(assemble(code), vm_setup=create_irqchip)
    reports = _reports(m)
    return dict(console=m.console, reports=[hex(v) if isinstance(v, int) else v for v in reports])


@machine
def timer_oneshot(make):
    """One-shot: the current count runs down from TMICT; at zero one interrupt, and the
    current count stays 0."""
    setup = (wr(0x3E0, 0xB) + wr(0x320, TIMER_VEC) + wr(0x380, 2_000_000)
             + f" movl {LAPIC_BASE + 0x390:#x}, %eax\n cmp $2000000, %eax\n setbe %al\n movzbl %al, %eax\n"
             + out(READY))
    return _timer(make, setup, "T", 1, rd(0x390) + rd(0x380))


@machine
def timer_periodic(make):
    """Periodic with divide-by-2: three interrupts, then masked."""
    setup = wr(0x3E0, 0) + wr(0x320, 0x20000 | TIMER_VEC) + wr(0x380, 500_000)
    return _timer(make, setup, "P", 3, wr(0x320, 0x10000 | TIMER_VEC) + rd(0x320))


@machine
def timer_tscdeadline(make):
    """TSC-deadline mode: TMICT writes are ignored; the deadline MSR arms it; after the
    interrupt the MSR reads 0."""
    setup = (wr(0x320, 0x40000 | TIMER_VEC) + rd(0x320) + wr(0x380, 1000) + rd(0x380)
             + " rdtsc\n add $3000000, %eax\n adc $0, %edx\n mov $0x6e0, %ecx\n wrmsr\n")
    return _timer(make, setup, "D", 1, rdmsr(0x6E0), {13: GP_SKIP2})


# ------------------------------------------------------------------ x2APIC
X2_VEC = 0x47


@machine
def x2apic(make):
    """x2APIC mode through IA32_APIC_BASE: the ID, version and logical ID by MSR, the TPR and
    PPR, a self-IPI through the SELF IPI MSR and its EOI by MSR, and #GP for ICR2 (gone in
    x2APIC mode), a write to the read-only ID, an EOI read and a reserved high half."""
    eoi = wrmsr(0x80B, 0)
    h = (f" push %eax\n push %edx\n push %ecx\n{putc('X')} incl {COUNT:#x}\n{eoi} pop %ecx\n pop %edx\n pop %eax\n"
         " pop %ecx\n add $4, %esp\n andl $~0x200, (%esp)\n popf\n sti\n jmp *%ecx\n")
    body = (wr(0xF0, 0x1FF) + " mov $0x1b, %ecx\n rdmsr\n or $0xc00, %eax\n wrmsr\n"
            + rdmsr(0x802) + rdmsr(0x803) + rdmsr(0x80D) + rdmsr(0x80F)
            + wrmsr(0x808, 0x20) + rdmsr(0x808) + rdmsr(0x80A) + wrmsr(0x808, 0)
            + f" movl $0, {COUNT:#x}\n" + wrmsr(0x83F, X2_VEC) + " sti\n hlt\n cli\n"
            + f" mov {COUNT:#x}, %eax\n{out(READY)}"
            + rdmsr(0x831) + wrmsr(0x802, 5) + rdmsr(0x80B) + wrmsr(0x808, 0, high=1) + rdmsr(0x808)
            + wrmsr(0x830, 0x40000 | X2_VEC) + " sti\n hlt\n cli\n" + f" mov {COUNT:#x}, %eax\n{out(READY)}"
            + f" movl {LAPIC_BASE + 0x30:#x}, %eax\n{out(READY)}")       # the xAPIC window is gone
    return _run(make, body, {X2_VEC: h, 13: GP_SKIP2})


# ------------------------------------------------------------------ the PV send-IPI hypercall
PV_VEC = 0x48


def vmcall(nr, a0=0, a1=0, a2=0, a3=0):
    """Guest code: a KVM hypercall (VMCALL on Intel, VMMCALL on AMD: the host's KVM patches
    the other one) whose answer is reported."""
    return (f" mov ${nr:#x}, %eax\n mov ${a0:#x}, %ebx\n mov ${a1:#x}, %ecx\n mov ${a2:#x}, %edx\n"
            f" mov ${a3:#x}, %esi\n vmcall\n{out(READY)}")


@machine
def pv_ipi(make):
    """KVM_HC_SEND_IPI to APIC ID 0 (itself) by bitmap, one from an ID past every LAPIC
    (none sent), a logical ICR (refused), and an unknown hypercall."""
    setup = (vmcall(10, a0=1, a3=PV_VEC) + vmcall(10, a0=0xFFFFFFFF, a2=0xFFFFFFFF)
             + vmcall(10, a0=1, a3=0x800 | PV_VEC) + vmcall(99))
    m = make(assemble(guest(setup, {PV_VEC: handler("V")}, 1)), vm_setup=create_irqchip)
    reports = _reports(m)
    return dict(console=m.console, reports=[hex(v) if isinstance(v, int) else v for v in reports])


# ------------------------------------------------------------------ the ioctls
def ioctls(sc):
    """KVM_GET_LAPIC after creation (the reset page), KVM_SET_LAPIC of a changed TPR and
    SPIV, KVM_SET_SREGS's CR8 as the TPR, and the errnos without an in-kernel LAPIC."""
    out_ = {}
    m = rawvmm._Vm(sc)
    try:
        kvm = m.open("/dev/kvm")
        vm = m.adopt(sc.ioctl(kvm, uapi.KVM_CREATE_VM, 0))
        vcpu = m.adopt(sc.ioctl(vm, uapi.KVM_CREATE_VCPU, 0))
        out_["get, no irqchip"] = errno_name(lambda: sc.ioctl(vcpu, uapi.KVM_GET_LAPIC, uapi.kvm_lapic_state()))
        vm2 = m.adopt(sc.ioctl(kvm, uapi.KVM_CREATE_VM, 0))
        sc.ioctl(vm2, uapi.KVM_CREATE_IRQCHIP, 0)
        bsp = m.adopt(sc.ioctl(vm2, uapi.KVM_CREATE_VCPU, 0))
        ap = m.adopt(sc.ioctl(vm2, uapi.KVM_CREATE_VCPU, 1))
        for name, fd in (("bsp", bsp), ("ap", ap)):
            s = uapi.kvm_lapic_state()
            sc.ioctl(fd, uapi.KVM_GET_LAPIC, s)
            regs = bytes(s)
            out_[name] = {hex(r): hex(int.from_bytes(regs[r:r + 4], "little"))
                          for r in range(0, 0x400, 0x10) if int.from_bytes(regs[r:r + 4], "little")}
            mp = uapi.kvm_mp_state()
            sc.ioctl(fd, uapi.KVM_GET_MP_STATE, mp)
            out_[name + " mp_state"] = mp.mp_state
        s = uapi.kvm_lapic_state()
        sc.ioctl(bsp, uapi.KVM_GET_LAPIC, s)
        raw = bytearray(bytes(s))
        raw[0x80:0x84] = (0x70).to_bytes(4, "little")
        raw[0xF0:0xF4] = (0x1FF).to_bytes(4, "little")
        sc.ioctl(bsp, uapi.KVM_SET_LAPIC, uapi.kvm_lapic_state.from_buffer_copy(bytes(raw)))
        sregs = uapi.kvm_sregs()
        sc.ioctl(bsp, uapi.KVM_GET_SREGS, sregs)
        out_["cr8 from tpr"] = sregs.cr8
        sregs.cr8 = 3
        sc.ioctl(bsp, uapi.KVM_SET_SREGS, sregs)
        sc.ioctl(bsp, uapi.KVM_GET_LAPIC, s)
        regs = bytes(s)
        out_["tpr from cr8, spiv"] = [hex(int.from_bytes(regs[r:r + 4], "little")) for r in (0x80, 0xF0, 0xA0)]
    finally:
        m.close()
    return out_


SCENARIOS = {"registers": registers, "pv_ipi": pv_ipi, "self_ipi": self_ipi, "timer_oneshot": timer_oneshot,
             "timer_periodic": timer_periodic, "timer_tscdeadline": timer_tscdeadline, "x2apic": x2apic,
             "ioctls": ioctls}


REGISTERS = dict(console="", reports=[
    "0x0", "0x50014", "0xff", "0x700", "0x10000", "0x10000", "0xffffffff", "0x0", "0x0", "0x0", "0x0", "0x0",
    "0x1ff", "0x5f", "0x5f", "0xff000000", "0xfffffff", "0x1f7ff", "0x110ff", "0x710ff", "0xb",
    "0x5000000", "0x50014", "0x10700", "0x1f7ff", "0x10700", "done"])
_H = 0x521          # apicguest.HANDLER
EXPECTED = {
    "registers": REGISTERS,
    # a self-IPI by bitmap (1 delivered), an ID past every LAPIC (0), a logical ICR
    # (-KVM_EINVAL), an unknown number (-KVM_ENOSYS), in 32 bits; then the interrupt
    "pv_ipi": dict(console="V", reports=["0x1", "0x0", "0xffffffea", "0xfffffc18", "0x0", [_H, 1], "done"]),
    "self_ipi": SELF_IPI,
    # the current count is below the initial one, 0 after the interrupt; TMICT stays
    "timer_oneshot": dict(console="T", reports=["0x1", "0x0", [_H, 1], "0x0", "0x1e8480", "done"]),
    "timer_periodic": dict(console="PPP", reports=["0x0", [_H, 1], "0x1", [_H, 2], "0x2", [_H, 3], "0x10046",
                                                   "done"]),
    "timer_tscdeadline": dict(console="D", reports=["0x40046", "0x0", "0x0", [_H, 1], "0x0", "done"]),
    # ID, version, LDR, SPIV, TPR, PPR, the self-IPI's count; ICR2, an EOI read, the ID write
    # and a high half are #GP (the G handler leaves 'G' in AL); the ICR's self-IPI; no window
    "x2apic": dict(console="XGGGGX", reports=["0x0", "0x50014", "0x1", "0x1ff", "0x20", "0x20", "0x1", "0x47",
                                              "0x47", "0x0", "0x2", "0xffffffff", "done"]),
    "ioctls": {"get, no irqchip": "EINVAL",
               "bsp": {"0x30": "0x50014", "0xe0": "0xffffffff", "0xf0": "0xff", "0x320": "0x10000",
                       "0x330": "0x10000", "0x340": "0x10000", "0x350": "0x700", "0x360": "0x10000",
                       "0x370": "0x10000"},
               "bsp mp_state": uapi.KVM_MP_STATE_RUNNABLE,
               "ap": {"0x20": "0x1000000", "0x30": "0x50014", "0xe0": "0xffffffff", "0xf0": "0xff",
                      "0x320": "0x10000", "0x330": "0x10000", "0x340": "0x10000", "0x350": "0x10000",
                      "0x360": "0x10000", "0x370": "0x10000"},
               "ap mp_state": uapi.KVM_MP_STATE_UNINITIALIZED,
               "cr8 from tpr": 7, "tpr from cr8, spiv": ["0x30", "0x1ff", "0x30"]},
}


# kvm_pvm (this host kind's KVM) never returns from a guest's VMCALL: KVM_RUN blocks (measured)
HOST_SKIP = ({"pv_ipi": "kvm_pvm does not return from a guest VMCALL"}
             if rawvmm.host_kvm_module() == "kvm_pvm" else {})
test_lapic_on_the_host, test_lapic_on_kvmpy = scenario_tests("tests.kernel.test_lapic", SCENARIOS, EXPECTED,
                                                             HOST_SKIP)
