"""The in-kernel 8254 programmable interval timer (arch/x86/kvm/i8254.c).

Three counters clocked at KVM_PIT_FREQ, on ports 0x40-0x43 of the VM's PIO bus, and the
speaker port 0x61 (channel 2's gate and output) when the VMM asks for it with
KVM_PIT_SPEAKER_DUMMY.  A counter does not tick: its value and output are computed from the
time elapsed since its count was loaded, on the VM clock (``kvm.clock``), so they are exact
on the virtual clock.  Channel 0 also drives IRQ 0: an HrTimer fires at each terminal count
and raises the line through ``kvm_set_irq``.

Lost ticks: with reinjection (the default), a tick the guest has not acknowledged yet (the
PIC/IOAPIC EOI, seen through an irq ack notifier) is kept and injected after the EOI, so the
guest sees every tick; with KVM_REINJECT_CONTROL pit_reinject=0 (QEMU's
``lost_tick_policy=discard``) every tick raises the line and the ones the guest missed merge.

Like KVM, the PIT needs the in-kernel PIC (KVM_CREATE_PIT2 is ENOENT without it) and runs
its timer only with the in-kernel IOAPIC.  Deliberately as in KVM (the host is the oracle
for what guests see; tests/guests/test_pit_guest.py shows it), where the chip's data sheet
says otherwise: a counter in BCD mode keeps the bit (the status byte shows it) but counts in
binary, a low gate does not pause counters in modes 0 and 4, and the status byte's
null-count bit is always 0.
"""

from __future__ import annotations

import ctypes
import errno
import threading

from ... import uapi
from .. import irq_hook
from ..eventfd import KvmIrqAckNotifier, kvm_register_irq_ack_notifier, kvm_unregister_irq_ack_notifier
from ..fs import copy_from_user, copy_to_user, kernel_error
from ..hrtimer import HrTimer
from ..iodev import KVM_PIO_BUS, KvmIoDevice, kvm_io_bus_register_dev
from . import x86

KVM_PIT_FREQ = 1193182                  # Hz
KVM_PIT_BASE_ADDRESS, KVM_PIT_MEM_LENGTH = 0x40, 4
KVM_SPEAKER_BASE_ADDRESS = 0x61
KVM_PIT_CHANNEL_MASK = 3
MIN_TIMER_PERIOD_NS = 200_000           # kvm's min_timer_period_us: the shortest periodic tick
NSEC_PER_SEC = 1_000_000_000

RW_STATE_LSB, RW_STATE_MSB, RW_STATE_WORD0, RW_STATE_WORD1 = 1, 2, 3, 4
_CHANNEL_FIELDS = [f[0] for f in uapi.kvm_pit_channel_state._fields_]


class KvmKpitChannelState:
    """struct kvm_kpit_channel_state: one counter, field for field as KVM_GET_PIT2 shows it.
    ``count`` is the initial count as loaded (0 is kept as 0x10000, the largest)."""

    def __init__(self):
        for name in _CHANNEL_FIELDS:
            setattr(self, name, 0)

    def to_uapi(self, out) -> None:
        for name in _CHANNEL_FIELDS:
            setattr(out, name, getattr(self, name))

    def from_uapi(self, src) -> None:
        for name in _CHANNEL_FIELDS:
            setattr(self, name, getattr(src, name))


class KvmKpitState:
    """struct kvm_kpit_state: the counters, the flags, and channel 0's timer."""

    def __init__(self, clock, timer_fn):
        self.channels = [KvmKpitChannelState() for _ in range(3)]
        self.flags = 0
        self.lock = threading.RLock()
        self.timer = HrTimer(clock, timer_fn)
        self.period = 0                 # ns between channel 0's ticks (0: no timer)
        self.is_periodic = False
        self.reinject = True
        self.pending = 0                # ticks not yet acknowledged (reinject)
        self.irq_ack = 1                # the last injected tick was acknowledged


class PitDevice(KvmIoDevice):
    """Ports 0x40-0x43."""

    def __init__(self, pit):
        self.pit = pit

    def write(self, vcpu, addr, length, data):
        return pit_ioport_write(self.pit, addr, data[0])

    def read(self, vcpu, addr, length, data):
        return _reply(data, length, pit_ioport_read(self.pit, addr))


class SpeakerDevice(KvmIoDevice):
    """Port 0x61 (the range is 4 ports long, as in KVM; only 0x61 is served)."""

    def __init__(self, pit):
        self.pit = pit

    def write(self, vcpu, addr, length, data):
        return addr == KVM_SPEAKER_BASE_ADDRESS and speaker_ioport_write(self.pit, data[0])

    def read(self, vcpu, addr, length, data):
        return addr == KVM_SPEAKER_BASE_ADDRESS and _reply(data, length, speaker_ioport_read(self.pit))


def _reply(data, length, value) -> bool:
    data[:length] = value.to_bytes(4, "little")[:length].ljust(length, b"\0")
    return True


class KvmPit:
    """struct kvm_pit."""

    def __init__(self, kvm):
        self.kvm = kvm
        self.pit_state = KvmKpitState(kvm.clock, lambda timer: pit_timer_fn(self))
        self.irq_source_id = irq_hook.KVM_PIT_IRQ_SOURCE_ID
        self.irq_ack_notifier = KvmIrqAckNotifier(0, lambda kian: kvm_pit_ack_irq(self))
        self.dev = PitDevice(self)
        self.speaker_dev = SpeakerDevice(self)
        self.speaker_data_on = 0


# ------------------------------------------------------------------ counting
def _now(pit) -> int:
    return pit.kvm.clock.now_ns()


def _elapsed_ticks(pit, c) -> int:
    return max(0, _now(pit) - c.count_load_time) * KVM_PIT_FREQ // NSEC_PER_SEC


def pit_get_count(pit, channel: int) -> int:
    """The counter's current value."""
    c = pit.pit_state.channels[channel]
    d, n = _elapsed_ticks(pit, c), c.count
    if c.mode in (0, 1, 4, 5):
        return (n - d) & 0xFFFF         # these modes wrap around and go on
    if c.mode == 3:
        return (n - (2 * d) % n) & 0xFFFF
    return (n - d % n) & 0xFFFF


def pit_get_out(pit, channel: int) -> int:
    """The counter's OUT pin."""
    c = pit.pit_state.channels[channel]
    d, n = _elapsed_ticks(pit, c), c.count
    if c.mode == 1:
        return int(d < n)
    if c.mode == 2:
        return int(d % n == 0 and d != 0)
    if c.mode == 3:
        return int(d % n < (n + 1) >> 1)
    if c.mode in (4, 5):
        return int(d == n)
    return int(d >= n)                  # mode 0 (and a counter never programmed)


def pit_get_gate(pit, channel: int) -> int:
    return pit.pit_state.channels[channel].gate


def pit_set_gate(pit, channel: int, val: int) -> None:
    """A rising gate restarts the count in modes 1, 2, 3 and 5."""
    c = pit.pit_state.channels[channel]
    if c.mode in (1, 2, 3, 5) and c.gate < val:
        c.count_load_time = _now(pit)
    c.gate = val


def pit_latch_count(pit, channel: int) -> None:
    c = pit.pit_state.channels[channel]
    if not c.count_latched:
        c.latched_count = pit_get_count(pit, channel)
        c.count_latched = c.rw_mode


def pit_latch_status(pit, channel: int) -> None:
    c = pit.pit_state.channels[channel]
    if not c.status_latched:
        c.status = pit_get_out(pit, channel) << 7 | c.rw_mode << 4 | c.mode << 1 | c.bcd
        c.status_latched = 1


# ------------------------------------------------------------------ channel 0's timer
def destroy_pit_timer(pit) -> None:
    pit.pit_state.timer.cancel()
    pit.pit_state.period = 0


def create_pit_timer(pit, ticks: int, is_period: bool) -> None:
    """Arm channel 0's timer for ``ticks`` counts, once or periodically (a periodic period is
    at least MIN_TIMER_PERIOD_NS: a guest may not make the host fire without pause)."""
    ps, kvm = pit.pit_state, pit.kvm
    if kvm.arch.irqchip_mode != x86.KVM_IRQCHIP_KERNEL or ps.flags & uapi.KVM_PIT_FLAGS_HPET_LEGACY:
        return
    interval = ticks * NSEC_PER_SEC // KVM_PIT_FREQ
    ps.timer.cancel()
    ps.period = max(interval, MIN_TIMER_PERIOD_NS) if is_period else interval
    ps.is_periodic = is_period
    kvm_pit_reset_reinject(pit)
    ps.timer.start(_now(pit) + interval)


def pit_timer_fn(pit) -> None:
    """Channel 0 reached its terminal count (HrTimer callback, on a vCPU thread)."""
    ps = pit.pit_state
    with ps.lock:
        if ps.reinject:
            ps.pending += 1
        pit_do_work(pit)
        if ps.is_periodic:
            ps.timer.start(ps.timer.expires_ns + ps.period)


def pit_do_work(pit) -> None:
    """Pulse IRQ 0, unless reinjection waits for the guest to acknowledge the last tick."""
    ps = pit.pit_state
    if ps.reinject:
        if not ps.irq_ack:
            return
        ps.irq_ack = 0
    irq_hook.kvm_set_irq(pit.kvm, pit.irq_source_id, 0, 1, False)
    irq_hook.kvm_set_irq(pit.kvm, pit.irq_source_id, 0, 0, False)


def kvm_pit_ack_irq(pit) -> None:
    """The guest acknowledged IRQ 0 (irq ack notifier): inject a tick it has still to see."""
    ps = pit.pit_state
    with ps.lock:
        ps.irq_ack = 1
        if ps.pending > 0:
            ps.pending -= 1
            if ps.pending > 0:
                pit_do_work(pit)


def kvm_pit_reset_reinject(pit) -> None:
    pit.pit_state.pending = 0
    pit.pit_state.irq_ack = 1


def kvm_pit_set_reinject(pit, reinject: bool) -> None:
    """Reinjection listens for the guest's acknowledgements of IRQ 0; discard does not."""
    ps = pit.pit_state
    if ps.reinject == reinject:
        return
    if reinject:
        kvm_pit_reset_reinject(pit)
        kvm_register_irq_ack_notifier(pit.kvm, pit.irq_ack_notifier)
    else:
        kvm_unregister_irq_ack_notifier(pit.kvm, pit.irq_ack_notifier)
    ps.reinject = reinject


def pit_load_count(pit, channel: int, val: int) -> None:
    """Load a counter: it restarts from ``val`` (0 is the largest count); for channel 0 the
    mode says whether IRQ 0 ticks once (0, 1, 4), periodically (2, 3) or not at all."""
    c = pit.pit_state.channels[channel]
    c.count = val if val else 0x10000
    c.count_load_time = _now(pit)
    if channel != 0:
        return
    if c.mode in (0, 1, 4):
        create_pit_timer(pit, c.count, False)
    elif c.mode in (2, 3):
        create_pit_timer(pit, c.count, True)
    else:
        destroy_pit_timer(pit)


def kvm_pit_load_count(pit, channel: int, val: int, hpet_legacy_start: bool) -> None:
    """Load a count from KVM_SET_PIT(2): when HPET legacy routing just started, channel 0's
    timer is stopped (the HPET drives IRQ 0 instead)."""
    c = pit.pit_state.channels[channel]
    if hpet_legacy_start:
        mode, c.mode = c.mode, 0xFF
        pit_load_count(pit, channel, val)
        c.mode = mode
    else:
        pit_load_count(pit, channel, val)


# ------------------------------------------------------------------ the ports
def pit_ioport_write(pit, addr: int, val: int) -> bool:
    ps = pit.pit_state
    addr &= KVM_PIT_CHANNEL_MASK
    with ps.lock:
        if addr == 3:
            channel = val >> 6
            if channel == 3:                        # read-back command
                for ch in range(3):
                    if val & (2 << ch):
                        if not val & 0x20:
                            pit_latch_count(pit, ch)
                        if not val & 0x10:
                            pit_latch_status(pit, ch)
                return True
            c = ps.channels[channel]
            access = (val >> 4) & 3
            if access == 0:                         # counter latch command
                pit_latch_count(pit, channel)
                return True
            c.rw_mode = c.read_state = c.write_state = access
            c.mode = (val >> 1) & 7
            if c.mode > 5:
                c.mode -= 4                         # 6 and 7 are modes 2 and 3
            c.bcd = val & 1
            return True
        c = ps.channels[addr]
        if c.write_state == RW_STATE_LSB:
            pit_load_count(pit, addr, val)
        elif c.write_state == RW_STATE_MSB:
            pit_load_count(pit, addr, val << 8)
        elif c.write_state == RW_STATE_WORD0:
            c.write_latch = val
            c.write_state = RW_STATE_WORD1
        elif c.write_state == RW_STATE_WORD1:
            pit_load_count(pit, addr, c.write_latch | val << 8)
            c.write_state = RW_STATE_WORD0
        return True


def pit_ioport_read(pit, addr: int) -> int:
    ps = pit.pit_state
    addr &= KVM_PIT_CHANNEL_MASK
    if addr == 3:
        return 0                                    # the control word cannot be read
    with ps.lock:
        c = ps.channels[addr]
        if c.status_latched:
            c.status_latched = 0
            return c.status
        if c.count_latched:
            state, value = c.count_latched, c.latched_count
            if state == RW_STATE_WORD0:
                c.count_latched = RW_STATE_MSB
                return value & 0xFF
            c.count_latched = 0
            return value >> 8 if state == RW_STATE_MSB else value & 0xFF
        count = pit_get_count(pit, addr)
        if c.read_state == RW_STATE_WORD0:
            c.read_state = RW_STATE_WORD1
            return count & 0xFF
        if c.read_state == RW_STATE_WORD1:
            c.read_state = RW_STATE_WORD0
            return count >> 8
        return count >> 8 if c.read_state == RW_STATE_MSB else count & 0xFF


def speaker_ioport_write(pit, val: int) -> bool:
    with pit.pit_state.lock:
        pit.speaker_data_on = (val >> 1) & 1
        pit_set_gate(pit, 2, val & 1)
    return True


def speaker_ioport_read(pit) -> int:
    """Gate 2, speaker data, the refresh clock (bit 4, toggling every 2^14 ns, about the
    chipset's 15 us) and channel 2's OUT (bit 5)."""
    with pit.pit_state.lock:
        refresh_clock = (_now(pit) >> 14) & 1
        return (pit_get_gate(pit, 2) | pit.speaker_data_on << 1 | refresh_clock << 4
                | pit_get_out(pit, 2) << 5)


# ------------------------------------------------------------------ creation and the ioctls
def kvm_pit_reset(pit) -> None:
    ps = pit.pit_state
    ps.flags = 0
    for i, c in enumerate(ps.channels):
        c.mode = 0xFF
        c.gate = int(i != 2)
        pit_load_count(pit, i, 0)
    kvm_pit_reset_reinject(pit)


def kvm_create_pit(kvm, flags: int) -> KvmPit:
    pit = KvmPit(kvm)
    pit.pit_state.reinject = False
    kvm_pit_set_reinject(pit, True)
    kvm_pit_reset(pit)
    kvm_io_bus_register_dev(kvm, KVM_PIO_BUS, KVM_PIT_BASE_ADDRESS, KVM_PIT_MEM_LENGTH, pit.dev)
    if flags & uapi.KVM_PIT_SPEAKER_DUMMY:
        kvm_io_bus_register_dev(kvm, KVM_PIO_BUS, KVM_SPEAKER_BASE_ADDRESS, 4, pit.speaker_dev)
    return pit


def _create_pit(kvm, flags: int) -> int:
    with kvm.lock:
        if kvm.arch.vpit is not None:
            raise kernel_error(errno.EEXIST)
        if kvm.arch.irqchip_mode != x86.KVM_IRQCHIP_KERNEL:     # pic_in_kernel
            raise kernel_error(errno.ENOENT)
        kvm.arch.vpit = kvm_create_pit(kvm, flags)
    return 0


def _read(arg, ctype):
    return ctype.from_buffer_copy(copy_from_user(arg, ctypes.sizeof(ctype)))


def _vpit(kvm) -> KvmPit:
    if kvm.arch.vpit is None:
        raise kernel_error(errno.ENXIO)
    return kvm.arch.vpit


def kvm_vm_ioctl_create_pit2(kvm, arg) -> int:
    return _create_pit(kvm, _read(arg, uapi.kvm_pit_config).flags)


def kvm_vm_ioctl_create_pit(kvm, arg) -> int:
    """The original KVM_CREATE_PIT: a PIT2 with the speaker port in the kernel."""
    return _create_pit(kvm, uapi.KVM_PIT_SPEAKER_DUMMY)


def _get_channels(pit, out) -> None:
    with pit.pit_state.lock:
        for c, o in zip(pit.pit_state.channels, out.channels):
            c.to_uapi(o)


def _set_channels(pit, src, hpet_legacy_start: bool) -> None:
    for c, s in zip(pit.pit_state.channels, src.channels):
        c.from_uapi(s)
    for i, c in enumerate(pit.pit_state.channels):
        kvm_pit_load_count(pit, i, c.count, hpet_legacy_start)


def kvm_vm_ioctl_get_pit(kvm, arg) -> int:
    _read(arg, uapi.kvm_pit_state)
    state = uapi.kvm_pit_state()
    _get_channels(_vpit(kvm), state)
    copy_to_user(arg, state)
    return 0


def kvm_vm_ioctl_set_pit(kvm, arg) -> int:
    state = _read(arg, uapi.kvm_pit_state)
    pit = _vpit(kvm)
    with pit.pit_state.lock:
        _set_channels(pit, state, False)
    return 0


def kvm_vm_ioctl_get_pit2(kvm, arg) -> int:
    pit = _vpit(kvm)
    state = uapi.kvm_pit_state2()
    _get_channels(pit, state)
    with pit.pit_state.lock:
        state.flags = pit.pit_state.flags
        if pit.speaker_data_on:
            state.flags |= uapi.KVM_PIT_FLAGS_SPEAKER_DATA_ON
    copy_to_user(arg, state)
    return 0


def kvm_vm_ioctl_set_pit2(kvm, arg) -> int:
    state = _read(arg, uapi.kvm_pit_state2)
    pit = _vpit(kvm)
    ps = pit.pit_state
    with ps.lock:
        start = not ps.flags & uapi.KVM_PIT_FLAGS_HPET_LEGACY and bool(state.flags & uapi.KVM_PIT_FLAGS_HPET_LEGACY)
        ps.flags = state.flags & ~uapi.KVM_PIT_FLAGS_SPEAKER_DATA_ON
        pit.speaker_data_on = int(bool(state.flags & uapi.KVM_PIT_FLAGS_SPEAKER_DATA_ON))
        _set_channels(pit, state, start)
    return 0


def kvm_vm_ioctl_reinject(kvm, arg) -> int:
    control = _read(arg, uapi.kvm_reinject_control)
    pit = _vpit(kvm)
    with pit.pit_state.lock:
        kvm_pit_set_reinject(pit, bool(control.pit_reinject))
    return 0


x86.vm_ioctl_handlers.update({
    uapi.KVM_CREATE_PIT: kvm_vm_ioctl_create_pit,
    uapi.KVM_CREATE_PIT2: kvm_vm_ioctl_create_pit2,
    uapi.KVM_GET_PIT: kvm_vm_ioctl_get_pit,
    uapi.KVM_SET_PIT: kvm_vm_ioctl_set_pit,
    uapi.KVM_GET_PIT2: kvm_vm_ioctl_get_pit2,
    uapi.KVM_SET_PIT2: kvm_vm_ioctl_set_pit2,
    uapi.KVM_REINJECT_CONTROL: kvm_vm_ioctl_reinject,
})
x86.supported_caps.update({uapi.KVM_CAP_PIT: 1, uapi.KVM_CAP_PIT2: 1, uapi.KVM_CAP_PIT_STATE2: 1,
                           uapi.KVM_CAP_REINJECT_CONTROL: 1})
