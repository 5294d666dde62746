"""The VM clock and its timers (kernel/hrtimer.py): virtual time made of retired instructions,
the skip-ahead of an idle machine, the host time base, and, through KVM_RUN, a timer that
fires at its exact instruction while the guest never exits."""

import threading
import time

import pytest

from kvmpy import syscalls
from kvmpy.api import GuestMemory, Kvm
from kvmpy.kernel import fs, hrtimer
from kvmpy.kernel.hrtimer import HrTimer, KvmClock, kvm_clock_idle, kvm_clock_run_expired
from kvmpy.kernel.x86 import params
from kvmpy.uapi import kvm as uapi
from tests.support import guestvm
from tests.support.smpguest import RAM


class FakeCpu:
    def __init__(self, icount=0):
        self.icount = icount


class FakeVm:
    def __init__(self, clock):
        self.clock = clock


def _virtual(*cpus):
    return KvmClock("virtual", lambda: cpus)


def test_virtual_time_is_the_instructions_every_vcpu_retired():
    a, b = FakeCpu(100), FakeCpu(50)
    clock = _virtual(a, b)
    assert clock.now_ns() == 150 * hrtimer.NS_PER_INSN
    a.icount += 10
    assert clock.now_ns() == 160 * hrtimer.NS_PER_INSN
    a.icount -= 5                       # a fault rolled an instruction back: time stands still
    assert clock.now_ns() == 160 * hrtimer.NS_PER_INSN


def test_timers_fire_in_expiry_order_and_cancel_disarms():
    cpu = FakeCpu()
    vm = FakeVm(_virtual(cpu))
    fired = []
    t1, t2, t3 = (HrTimer(vm.clock, lambda t, n=n: fired.append((n, vm.clock.now_ns()))) for n in (1, 2, 3))
    t1.start(300)
    t2.start(100)
    t3.start(200)
    assert (t1.active, vm.clock.next_deadline_ns()) == (True, 100)
    t3.cancel()
    assert not t3.active and vm.clock.next_deadline_ns() == 100
    cpu.icount = 99
    assert kvm_clock_run_expired(vm) == 0
    cpu.icount = 1000
    assert kvm_clock_run_expired(vm) == 2
    assert fired == [(2, 1000), (1, 1000)] and not t1.active
    assert vm.clock.next_deadline_ns() is None


def test_restart_moves_the_deadline_and_a_periodic_callback_rearms():
    cpu = FakeCpu()
    vm = FakeVm(_virtual(cpu))
    ticks = []

    def tick(t):
        ticks.append(t.expires_ns)
        t.start(t.expires_ns + 10)

    timer = HrTimer(vm.clock, tick)
    timer.start(500)
    timer.start(25)                     # re-arming replaces the old expiry
    cpu.icount = 60
    assert kvm_clock_run_expired(vm) == 4      # 25, 35, 45, 55: each re-armed into the past fires
    assert ticks == [25, 35, 45, 55] and timer.expires_ns == 65 and timer.remaining_ns() == 5


def test_a_timer_rearmed_at_the_same_time_cannot_hold_the_caller():
    vm = FakeVm(_virtual(FakeCpu()))
    timer = HrTimer(vm.clock, lambda t: t.start(0))
    timer.start(0)
    assert kvm_clock_run_expired(vm) == hrtimer.MAX_FIRES_PER_RUN


def test_an_idle_machine_skips_ahead_to_the_next_deadline():
    cpu = FakeCpu(10)
    vm = FakeVm(_virtual(cpu))
    assert not kvm_clock_idle(vm)                   # nothing armed: time alone wakes nothing
    fired = []
    HrTimer(vm.clock, lambda t: fired.append(vm.clock.now_ns())).start(5_000_000_000)
    before = time.monotonic()
    assert kvm_clock_idle(vm)
    assert fired == [5_000_000_000] and time.monotonic() - before < 1
    cpu.icount += 7                                 # and time goes on from there
    assert vm.clock.now_ns() == 5_000_000_000 + 7 * hrtimer.NS_PER_INSN


def test_the_entry_budget_ends_at_the_deadline():
    cpu = FakeCpu(1000)
    clock = _virtual(cpu)
    assert clock.entry_insn_budget(200_000) == 200_000
    HrTimer(clock, lambda t: None).start(1000 + 37 * hrtimer.NS_PER_INSN)
    assert clock.entry_insn_budget(200_000) == 37
    assert clock.entry_insn_budget(10) == 10
    assert not clock.deadline_passed()              # virtual mode never needs asking


def test_host_mode_follows_the_monotonic_clock():
    clock = KvmClock("host")
    t0 = clock.now_ns()
    time.sleep(0.01)
    assert clock.now_ns() - t0 >= 10_000_000
    timer = HrTimer(clock, lambda t: None)
    timer.start(clock.now_ns() + 2_000_000)
    assert not clock.deadline_passed()
    assert clock.entry_insn_budget(123) == 123
    time.sleep(0.003)
    assert clock.deadline_passed()


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        KvmClock("sundial")
    with pytest.raises(ValueError):
        params.set(clock="sundial")


# ------------------------------------------------------------------ through KVM_RUN
COUNT_LOOP = guestvm.prot32("1: inc %eax\n jmp 1b\n")      # never exits on its own


@pytest.mark.parametrize("insns,late", [(1_000_000, 0), (1_000_001, 1)])
def test_a_timer_fires_at_its_instruction_in_a_guest_that_never_exits(soft_mmu, insns, late):
    """The timer's callback sets immediate_exit; the guest's EAX then counts exactly the
    loop iterations that fit in the time: the entry budget ended the entry at the deadline.
    The processor stops between blocks, so a deadline inside the two-instruction loop body
    fires at the end of that iteration (``late``)."""
    m = guestvm.Machine(syscalls, guestvm.assemble(COUNT_LOOP))
    try:
        kvm = fs.fdget(m.vm_fd).private_data
        assert kvm.clock.mode == "virtual"
        seen = {}

        def expire(timer):
            seen["at"] = kvm.clock.now_ns()
            m.run.immediate_exit = 1

        start = kvm.clock.now_ns()
        HrTimer(kvm.clock, expire).start(start + insns * hrtimer.NS_PER_INSN)
        rec = m.kvm_run()
        assert (rec["reason"], rec["errno"]) == ("INTR", "EINTR")
        assert seen["at"] == start + (insns + late) * hrtimer.NS_PER_INSN
        eax = int(m.regs("rax")["rax"], 16)
        assert eax == (insns + late - 2) // 2       # lidt and the jmp to main come first
    finally:
        m.close()


def test_host_clock_mode_is_a_module_parameter(monkeypatch):
    monkeypatch.setattr(params, "clock", "host")
    m = guestvm.Machine(syscalls, guestvm.assemble(COUNT_LOOP))
    try:
        kvm = fs.fdget(m.vm_fd).private_data
        assert kvm.clock.mode == "host"
        HrTimer(kvm.clock, lambda t: setattr(m.run, "immediate_exit", 1)).start(kvm.clock.now_ns() + 20_000_000)
        t0 = time.monotonic()
        rec = m.kvm_run()
        assert rec["errno"] == "EINTR" and 0.015 <= time.monotonic() - t0 < 5
    finally:
        m.close()


SPIN = 100_000
TWO_VCPUS = guestvm.real16(f"""
 cmp $0, %si
 jne 2f
1: cmpb $0, 0x6000                      /* vCPU 0: wait until vCPU 1 is about to halt */
 je 1b
 rdtsc
 mov %eax, %edi
 mov ${SPIN}, %ecx
3: dec %ecx
 jnz 3b
 rdtsc
 sub %edi, %eax
 mov %eax, 0x6004                       /* the TSC ticks of the 2 * SPIN instructions */
 out %al, $0x80
2: cli                                  /* vCPU 1: halt for good */
 movb $1, 0x6000
 hlt
""")


def test_one_halted_vcpu_does_not_skip_time_while_another_runs(soft_kvm):
    """With a periodic timer armed (the PIT, every 84 us) and vCPU 1 halted, virtual time
    is vCPU 0's instructions: the halted vCPU does not jump the clock to each deadline
    (which made a guest that times out on the TSC see its timeouts run out at once)."""
    kvm = Kvm("soft")
    vm = kvm.create_vm()
    mem = GuestMemory(RAM)
    vcpus = []
    try:
        vm.set_user_memory_region(0, 0, RAM, mem.host_addr)
        mem.write(guestvm.LOAD, guestvm.assemble(TWO_VCPUS))
        vm.create_irqchip()
        vm.create_pit2()
        pit = vm.get_pit2()
        pit.channels[0].mode, pit.channels[0].count = 2, 100
        vm.set_pit2(pit)
        cpuid = kvm.get_supported_cpuid()
        vcpus += [vm.create_vcpu(i) for i in range(2)]
        for i, vcpu in enumerate(vcpus):
            vcpu.set_cpuid2(cpuid)
            vcpu.set_mp_state(uapi.KVM_MP_STATE_RUNNABLE)
            sregs = vcpu.get_sregs()
            sregs.cs.base, sregs.cs.selector = 0, 0
            vcpu.set_sregs(sregs)
            regs = vcpu.get_regs()
            regs.rip, regs.rflags, regs.rsi = guestvm.LOAD, 2, i
            vcpu.set_regs(regs)
        halted = threading.Thread(target=lambda: _run_until_intr(vcpus[1]))
        halted.start()
        try:
            exit_ = vcpus[0].run()
        finally:
            vcpus[1].immediate_exit = True
            halted.join(10)
        assert type(exit_).__name__ == "Io"
        ticks = int.from_bytes(mem.read(0x6004, 4), "little")
        ns = ticks * 1_000_000 // vcpus[0].get_tsc_khz()
        assert 2 * SPIN <= ns < 3 * SPIN * hrtimer.NS_PER_INSN
    finally:
        for obj in (*vcpus, vm, kvm):
            obj.close()
        mem.close()


def _run_until_intr(vcpu):
    try:
        vcpu.run()
    except InterruptedError:
        pass


AFTER_STI = guestvm.real16(" cli\n sti\n nop\n hlt\n")
STI_INSNS = 6                           # the prologue's four, CLI, STI


def test_an_entry_ending_right_after_sti_keeps_the_shadow(soft_mmu):
    """A timer whose deadline falls right after STI ends the entry there (STI ends its
    block): the exit keeps the STI shadow for the NOP, as the VMCS's interruptibility state
    does, so that no NMI or interrupt goes in before it.  The next entry runs the NOP in the
    shadow, which then ends."""
    m = guestvm.Machine(syscalls, guestvm.assemble(AFTER_STI), mode="real")
    try:
        kvm = fs.fdget(m.vm_fd).private_data
        HrTimer(kvm.clock, lambda t: setattr(m.run, "immediate_exit", 1)).start(kvm.clock.now_ns() + STI_INSNS)
        assert m.kvm_run()["errno"] == "EINTR"
        events = m.get(uapi.KVM_GET_VCPU_EVENTS, uapi.kvm_vcpu_events)
        assert (m.regs("rip")["rip"], events.interrupt.shadow) == (hex(guestvm.LOAD + 11), uapi.KVM_X86_SHADOW_INT_STI)
        m.run.immediate_exit = 0
        assert m.kvm_run()["reason"] == "HLT"
        assert m.get(uapi.KVM_GET_VCPU_EVENTS, uapi.kvm_vcpu_events).interrupt.shadow == 0
    finally:
        m.close()
