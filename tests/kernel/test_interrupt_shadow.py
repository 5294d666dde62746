"""The STI interrupt shadow across an exit: an entry that ends right after STI (here the
soft kernel's instruction limit, as a host interrupt or the entry budget would end it)
leaves the shadow in force for the next instruction: KVM_GET_VCPU_EVENTS reports it, and
an interrupt raised meanwhile is taken only after the shadowed instruction.

Found by tests/kernel/test_irqfd_guest.py, whose level interrupt, raised from another
thread, sometimes landed between an STI and the JMP that its shadow covers: the handler's
IRET-less return then jumped to itself.
"""

import signal

import pytest

from kvmpy import syscalls
from kvmpy.kernel import fs
from kvmpy.uapi import kvm as uapi
from tests.support.apicguest import DONE, PRELUDE, out, redirect
from tests.support.guestvm import Machine, assemble, create_irqchip, prot32

PIN, VEC, MARK = 9, 0x49, 0x80
# The guest reports the address after the shadowed instruction, then sets IF; the
# handler reports the address it interrupted.
BODY = f"""{PRELUDE}{redirect(PIN, VEC)}
 mov $after, %eax
 out %eax, ${MARK:#x}
 sti
 inc %ebx
after:
 inc %ebx
1: jmp 1b
"""
HANDLER = f" mov (%esp), %eax\n{out(DONE)} hlt\n"


def _kernel_vcpu(m):
    return fs.fdget(m.vcpu_fd).private_data


def _stop_after_sti(m):
    """Run to the report before STI, then one more instruction (the STI) in an entry that
    the instruction limit ends: KVM_RUN returns EINTR with the shadow in force."""
    rec = m.step()
    assert (rec["reason"], rec["port"]) == ("IO", hex(MARK)), rec
    after = int.from_bytes(bytes.fromhex(rec["data"]), "little")
    arch = _kernel_vcpu(m).arch
    arch.insn_limit = arch.cpu.icount + 2     # the OUT, retired as KVM_RUN completes it, and STI
    seen = []
    old = signal.signal(signal.SIGXCPU, lambda *a: seen.append(1))
    try:
        rec = m.kvm_run()
    finally:
        signal.signal(signal.SIGXCPU, old)
    assert (rec.get("errno"), seen) == ("EINTR", [1]), rec
    assert int(rec["rip"], 16) == after - 1, "the entry ended after the STI, before the shadowed INC"
    return after


@pytest.fixture
def machine(soft_kvm, soft_mmu):
    m = Machine(syscalls, assemble(prot32(BODY, {VEC: HANDLER}, VEC + 1)), vm_setup=create_irqchip)
    yield m
    m.close()


def test_the_shadow_is_reported_after_the_exit(machine):
    _stop_after_sti(machine)
    ev = machine.get(uapi.KVM_GET_VCPU_EVENTS, uapi.kvm_vcpu_events)
    assert ev.interrupt.shadow == uapi.KVM_X86_SHADOW_INT_STI
    assert machine.run.if_flag == 1


def test_an_interrupt_raised_in_the_shadow_waits_for_the_shadowed_instruction(machine):
    after = _stop_after_sti(machine)
    syscalls.ioctl(machine.vm_fd, uapi.KVM_IRQ_LINE, uapi.kvm_irq_level(irq=PIN, level=1))
    rec = machine.step()
    assert (rec["reason"], rec["port"]) == ("IO", hex(DONE)), rec
    assert int.from_bytes(bytes.fromhex(rec["data"]), "little") == after
