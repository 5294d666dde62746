"""KVM_GET_MP_STATE / KVM_SET_MP_STATE, host /dev/kvm versus kvmpy: the states after vCPU
creation (an AP of a VM with an in-kernel irqchip waits UNINITIALIZED), which states each
configuration accepts and what reads back (a latched SIPI is taken by the read), and a
vCPU that user space set HALTED: KVM_RUN blocks until a signal (EINTR, still HALTED) or an
interrupt, which wakes it into its handler."""

import signal
import threading
import time

import pytest

from kvmpy.uapi import kvm as uapi
from tests.support import rawvmm
from tests.support.guestvm import BACKENDS, Machine, assemble, create_irqchip, errno_name, real16

STATES = range(12)      # RUNNABLE .. SUSPENDED, and one past the last


def _get(sc, fd):
    mp = uapi.kvm_mp_state()
    sc.ioctl(fd, uapi.KVM_GET_MP_STATE, mp)
    return mp.mp_state


def _table(sc, irqchip):
    vm = rawvmm._Vm(sc)
    try:
        kvm = vm.open("/dev/kvm")
        vm_fd = vm.adopt(sc.ioctl(kvm, uapi.KVM_CREATE_VM, 0))
        if irqchip:
            sc.ioctl(vm_fd, uapi.KVM_CREATE_IRQCHIP, 0)
        bsp, ap = (vm.adopt(sc.ioctl(vm_fd, uapi.KVM_CREATE_VCPU, i)) for i in (0, 1))
        out = {"created": (_get(sc, bsp), _get(sc, ap))}
        for s in STATES:
            result = errno_name(lambda: sc.ioctl(ap, uapi.KVM_SET_MP_STATE, uapi.kvm_mp_state(s)))
            out[s] = (result, _get(sc, ap))
        return out
    finally:
        vm.close()


@pytest.mark.host
@pytest.mark.parametrize("irqchip", [False, True], ids=["no-irqchip", "irqchip"])
def test_mp_states_as_on_the_host(irqchip):
    from kvmpy import syscalls
    assert _table(syscalls, irqchip) == _table(rawvmm.HOST, irqchip)


@pytest.mark.parametrize("irqchip", [False, True], ids=["no-irqchip", "irqchip"])
def test_mp_states(irqchip):
    """What the host answers (Intel and AMD alike: the code is x86.c's), for a machine
    without /dev/kvm."""
    from kvmpy import syscalls
    t = _table(syscalls, irqchip)
    if not irqchip:
        assert t["created"] == (0, 0)
        assert t[0] == (0, 0) and all(t[s] == ("EINVAL", 0) for s in STATES if s)
        return
    assert t["created"] == (uapi.KVM_MP_STATE_RUNNABLE, uapi.KVM_MP_STATE_UNINITIALIZED)
    assert [t[s] for s in range(5)] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 0)]    # SIPI taken at once
    assert t[uapi.KVM_MP_STATE_AP_RESET_HOLD] == (0, uapi.KVM_MP_STATE_AP_RESET_HOLD)
    assert all(t[s][0] == "EINVAL" for s in (5, 6, 7, 8, 10, 11))   # s390 states, SUSPENDED


PIC_SETUP = "".join(f" mov ${v:#x}, %al\n out %al, ${p:#x}\n" for p, v in
                    ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFD)))
# IRQ 1 -> vector 0x21 (IVT entry at 0x84); interrupts on, report, spin
GUEST = real16(" movw $h, 0x84\n movw $0, 0x86\n" + PIC_SETUP + " sti\n out %al, $0x81\n1: jmp 1b\n"
               "h:\n out %al, $0x80\n cli\n hlt\n")


@pytest.mark.parametrize("sc", BACKENDS)
def test_halted_by_user_space_blocks_until_signal_or_interrupt(sc):
    m = Machine(sc, assemble(GUEST), mode="real", vm_setup=create_irqchip)
    old = signal.signal(signal.SIGALRM, lambda *a: None)
    try:
        assert m.kvm_run()["port"] == "0x81"
        m.sc.ioctl(m.vcpu_fd, uapi.KVM_SET_MP_STATE, uapi.kvm_mp_state(uapi.KVM_MP_STATE_HALTED))
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        t0 = time.monotonic()
        rec = m.kvm_run()           # the guest spins with IF=1, but the vCPU is halted
        assert (rec["errno"], rec["reason"]) == ("EINTR", "INTR") and time.monotonic() - t0 >= 0.15
        assert _get(m.sc, m.vcpu_fd) == uapi.KVM_MP_STATE_HALTED

        def raise_irq1():
            time.sleep(0.3)
            for level in (1, 0):
                m.sc.ioctl(m.vm_fd, uapi.KVM_IRQ_LINE, uapi.kvm_irq_level(irq=1, level=level))
        thread = threading.Thread(target=raise_irq1)
        t0 = time.monotonic()
        thread.start()
        signal.setitimer(signal.ITIMER_REAL, 10)            # fail, not hang
        rec = m.kvm_run()
        signal.setitimer(signal.ITIMER_REAL, 0)
        thread.join()
        assert rec.get("port") == "0x80" and time.monotonic() - t0 >= 0.25
        assert _get(m.sc, m.vcpu_fd) == uapi.KVM_MP_STATE_RUNNABLE
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        m.close()
