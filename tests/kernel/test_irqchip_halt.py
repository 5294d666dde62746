"""HLT with an in-kernel irqchip, host /dev/kvm versus kvmpy: the vCPU blocks in the kernel
(kvm_vcpu_block) instead of exiting; KVM_GET_MP_STATE says HALTED meanwhile; a signal or
immediate_exit ends the wait with EINTR (KVM_EXIT_INTR), and an interrupt that another thread
raises with KVM_IRQ_LINE wakes it into the guest's handler."""

import signal
import threading
import time

import pytest

from kvmpy.uapi import kvm as uapi
from tests.support.guestvm import BACKENDS, Machine, assemble, create_irqchip, real16

PIC_SETUP = "".join(f" mov ${v:#x}, %al\n out %al, ${p:#x}\n" for p, v in
                    ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFD)))
GUEST = real16(" movw $h, 0x84\n movw $0, 0x86\n" + PIC_SETUP + " out %al, $0x81\n cli\n hlt\n"
               " out %al, $0x82\n sti\n hlt\nh:\n out %al, $0x80\n cli\n hlt\n")


def _mp_state(m):
    return m.get(uapi.KVM_GET_MP_STATE, uapi.kvm_mp_state).mp_state


@pytest.mark.parametrize("sc", BACKENDS)
def test_halt_blocks_until_signal_or_interrupt(sc):
    m = Machine(sc, assemble(GUEST), mode="real", vm_setup=create_irqchip)
    old = signal.signal(signal.SIGALRM, lambda *a: None)
    try:
        assert m.kvm_run()["port"] == "0x81"
        # HLT with IF=0: only a signal ends the wait
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        t0 = time.monotonic()
        rec = m.kvm_run()
        assert (rec["errno"], rec["reason"]) == ("EINTR", "INTR") and time.monotonic() - t0 >= 0.15
        assert _mp_state(m) == uapi.KVM_MP_STATE_HALTED
        m.run.immediate_exit = 1
        assert m.kvm_run()["errno"] == "EINTR"
        m.run.immediate_exit = 0
        # the VMM moves the halted guest on (RUNNABLE, RIP past the HLT): the second HLT,
        # with IF=1, waits until another thread raises IRQ 1
        m.sc.ioctl(m.vcpu_fd, uapi.KVM_SET_MP_STATE, uapi.kvm_mp_state(uapi.KVM_MP_STATE_RUNNABLE))
        assert m.kvm_run()["port"] == "0x82"

        def raise_irq1():
            time.sleep(0.3)
            for level in (1, 0):
                m.sc.ioctl(m.vm_fd, uapi.KVM_IRQ_LINE, uapi.kvm_irq_level(irq=1, level=level))
        thread = threading.Thread(target=raise_irq1)
        t0 = time.monotonic()
        thread.start()
        rec = m.kvm_run()
        thread.join()
        assert rec["port"] == "0x80" and time.monotonic() - t0 >= 0.25
        assert _mp_state(m) == uapi.KVM_MP_STATE_RUNNABLE
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        m.close()
