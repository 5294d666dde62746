"""The PIT's ioctls against the host (errnos, the state KVM_GET_PIT2 shows), and channel 0's
tick on IRQ 0 with the reinject and discard lost-tick policies (watched at the irq hook)."""


import pytest

from kvmpy import syscalls
from kvmpy.kernel import fs, irq_hook
from kvmpy.kernel.eventfd import kvm_notify_acked_gsi
from kvmpy.kernel.hrtimer import kvm_clock_run_expired
from kvmpy.kernel.x86 import i8254
from kvmpy.uapi import kvm as uapi
from tests.support import guestvm
from tests.support.guestvm import BACKENDS, errno_name as _errno



@pytest.mark.parametrize("sc", BACKENDS)
def test_pit_ioctl_errnos_are_the_hosts(sc):
    m = guestvm.Machine(sc, mode=None, ram=0)
    try:
        vm = m.vm_fd
        config = uapi.kvm_pit_config(flags=0)
        got = {
            "pit2-without-irqchip": _errno(lambda: sc.ioctl(vm, uapi.KVM_CREATE_PIT2, config)),
            "pit-without-irqchip": _errno(lambda: sc.ioctl(vm, uapi.KVM_CREATE_PIT, 0)),
            "get-pit2-without-pit": _errno(lambda: sc.ioctl(vm, uapi.KVM_GET_PIT2, uapi.kvm_pit_state2())),
            "set-pit2-without-pit": _errno(lambda: sc.ioctl(vm, uapi.KVM_SET_PIT2, uapi.kvm_pit_state2())),
            "get-pit-without-pit": _errno(lambda: sc.ioctl(vm, uapi.KVM_GET_PIT, uapi.kvm_pit_state())),
            "reinject-without-pit": _errno(lambda: sc.ioctl(vm, uapi.KVM_REINJECT_CONTROL,
                                                            uapi.kvm_reinject_control())),
        }
        for cap in (uapi.KVM_CAP_PIT, uapi.KVM_CAP_PIT2, uapi.KVM_CAP_PIT_STATE2, uapi.KVM_CAP_REINJECT_CONTROL):
            got[cap] = sc.ioctl(vm, uapi.KVM_CHECK_EXTENSION, cap)
    finally:
        m.close()
    assert got == {"pit2-without-irqchip": "ENOENT", "pit-without-irqchip": "ENOENT",
                   "get-pit2-without-pit": "ENXIO", "set-pit2-without-pit": "ENXIO",
                   "get-pit-without-pit": "ENXIO", "reinject-without-pit": "ENXIO",
                   uapi.KVM_CAP_PIT: 1, uapi.KVM_CAP_PIT2: 1, uapi.KVM_CAP_PIT_STATE2: 1,
                   uapi.KVM_CAP_REINJECT_CONTROL: 1}


def _channels(state):
    return [{f: getattr(c, f) for f, _ in uapi.kvm_pit_channel_state._fields_ if f != "count_load_time"}
            for c in state.channels]


@pytest.mark.parametrize("sc", BACKENDS)
def test_pit_state_after_creation_and_a_set_is_the_hosts(sc):
    m = guestvm.Machine(sc, mode=None, vm_setup=guestvm.create_irqchip_and_pit)
    try:
        vm = m.vm_fd
        again = _errno(lambda: sc.ioctl(vm, uapi.KVM_CREATE_PIT2, uapi.kvm_pit_config()))
        state = uapi.kvm_pit_state2()
        sc.ioctl(vm, uapi.KVM_GET_PIT2, state)
        fresh = _channels(state), state.flags
        c = state.channels[1]
        c.mode, c.rw_mode, c.read_state, c.write_state, c.count, c.bcd = 2, 3, 3, 3, 1000, 1
        state.flags = uapi.KVM_PIT_FLAGS_SPEAKER_DATA_ON
        sc.ioctl(vm, uapi.KVM_SET_PIT2, state)
        back = uapi.kvm_pit_state2()
        sc.ioctl(vm, uapi.KVM_GET_PIT2, back)
        old = uapi.kvm_pit_state()
        sc.ioctl(vm, uapi.KVM_GET_PIT, old)
        reinject = _errno(lambda: sc.ioctl(vm, uapi.KVM_REINJECT_CONTROL, uapi.kvm_reinject_control(pit_reinject=0)))
    finally:
        m.close()
    idle = {"count": 65536, "latched_count": 0, "count_latched": 0, "status_latched": 0, "status": 0,
            "read_state": 0, "write_state": 0, "write_latch": 0, "rw_mode": 0, "mode": 255, "bcd": 0}
    assert again == "EEXIST" and reinject == 0
    assert fresh == ([dict(idle, gate=1), dict(idle, gate=1), dict(idle, gate=0)], 0)
    assert _channels(back)[1] == dict(idle, gate=1, mode=2, rw_mode=3, read_state=3, write_state=3,
                                      count=1000, bcd=1)
    assert back.flags == uapi.KVM_PIT_FLAGS_SPEAKER_DATA_ON
    assert _channels(old) == _channels(back)


def _program_channel0(m, kvm, mode, count):
    pit = kvm.arch.vpit
    i8254.pit_ioport_write(pit, 0x43, 0x30 | mode << 1)
    i8254.pit_ioport_write(pit, 0x40, count & 0xFF)
    i8254.pit_ioport_write(pit, 0x40, count >> 8)


@pytest.fixture
def pit_vm(monkeypatch):
    """A soft VM with a PIT, and the IRQ 0 edges channel 0 raises, as (time, level)."""
    lines = []
    m = guestvm.Machine(syscalls, mode=None, vm_setup=guestvm.create_irqchip_and_pit)
    kvm = fs.fdget(m.vm_fd).private_data
    monkeypatch.setattr(irq_hook, "kvm_set_irq",
                        lambda k, src, gsi, level, ls=False: lines.append((src, gsi, level)) or 1)
    yield m, kvm, lines
    m.close()


def _advance(kvm, ns):
    """Let ``ns`` of virtual time pass as an idle machine does, firing the timers on the way."""
    end = kvm.clock.now_ns() + ns
    while kvm.clock.next_deadline_ns() is not None and kvm.clock.next_deadline_ns() <= end:
        kvm.clock.idle_advance()
        kvm_clock_run_expired(kvm)


PERIOD_TICKS = 1193                     # about 1 ms


def test_periodic_ticks_with_reinject_wait_for_the_guests_ack(pit_vm):
    m, kvm, lines = pit_vm
    _program_channel0(m, kvm, 2, PERIOD_TICKS)
    _advance(kvm, 5_000_000)                                # five ticks, none acknowledged
    pulse = [(irq_hook.KVM_PIT_IRQ_SOURCE_ID, 0, 1), (irq_hook.KVM_PIT_IRQ_SOURCE_ID, 0, 0)]
    assert lines == pulse                                   # only the first went in
    assert kvm.arch.vpit.pit_state.pending == 5
    for _ in range(4):
        kvm_notify_acked_gsi(kvm, 0)                        # each EOI lets one lost tick in
    assert lines == pulse * 5
    kvm_notify_acked_gsi(kvm, 0)
    assert lines == pulse * 5 and kvm.arch.vpit.pit_state.pending == 0


def test_periodic_ticks_with_discard_raise_every_tick(pit_vm):
    m, kvm, lines = pit_vm
    syscalls.ioctl(m.vm_fd, uapi.KVM_REINJECT_CONTROL, uapi.kvm_reinject_control(pit_reinject=0))
    _program_channel0(m, kvm, 2, PERIOD_TICKS)
    _advance(kvm, 5_000_000)
    assert len(lines) == 2 * 5 and kvm.arch.vpit.pit_state.pending == 0


def test_one_shot_mode_ticks_once(pit_vm):
    m, kvm, lines = pit_vm
    _program_channel0(m, kvm, 0, PERIOD_TICKS)
    _advance(kvm, 5_000_000)
    assert len(lines) == 2 and kvm.clock.next_deadline_ns() is None


def test_a_too_short_period_is_stretched(pit_vm):
    m, kvm, lines = pit_vm
    syscalls.ioctl(m.vm_fd, uapi.KVM_REINJECT_CONTROL, uapi.kvm_reinject_control(pit_reinject=0))
    _program_channel0(m, kvm, 2, 2)                         # 1.7 us asked; 200 us given
    _advance(kvm, 1_000_000)
    assert len(lines) == 2 * 5
