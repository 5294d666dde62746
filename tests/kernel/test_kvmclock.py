"""Time ioctls and MSRs (kernel/x86/kvmclock.py) against the host: the KVM CPUID leaves, the
MSR index list, KVM_GET/SET_CLOCK, KVM_GET/SET_TSC_KHZ and the host-initiated time MSRs;
then on kvmpy the TSC a guest reads (its frequency, TSC_ADJUST, a guest TSC write) and the
pvclock structure kvmclock writes into guest memory."""


import pytest

from kvmpy import syscalls
from kvmpy.kernel.x86 import cpuid as kcpuid, kvmclock
from kvmpy.uapi import kvm as uapi
from tests.support import guestvm
from tests.support.guestvm import BACKENDS, errno_name as _errno

TSC, TSC_ADJUST, TSC_DEADLINE = 0x10, 0x3B, 0x6E0
WALL_CLOCK_NEW, SYSTEM_TIME_NEW = 0x4B564D00, 0x4B564D01
WALL_CLOCK, SYSTEM_TIME = 0x11, 0x12           # the first numbers (QEMU writes both pairs)


@pytest.mark.parametrize("sc", BACKENDS)
def test_kvm_cpuid_leaves_and_msr_list_are_the_hosts(sc):
    m = guestvm.Machine(sc, mode=None, ram=0)
    try:
        cpuid = uapi.with_entries(uapi.kvm_cpuid2, 256)()
        cpuid.nent = 256
        sc.ioctl(m.kvm_fd, uapi.KVM_GET_SUPPORTED_CPUID, cpuid)
        # keyed by (leaf, subleaf): leaf 7 has several (7.1 on newer hosts), 0x4000000x one
        leaves = {(e.function, e.index): e for e in (cpuid.entries[i] for i in range(cpuid.nent))}
        buf = bytearray(4 + 4 * 1024)
        buf[:4] = (1024).to_bytes(4, "little")
        sc.ioctl(m.kvm_fd, uapi.KVM_GET_MSR_INDEX_LIST, buf)
        listed = {int.from_bytes(buf[4 + 4 * i:8 + 4 * i], "little") for i in range(int.from_bytes(buf[:4], "little"))}
        caps = [sc.ioctl(m.vm_fd, uapi.KVM_CHECK_EXTENSION, c) for c in (uapi.KVM_CAP_GET_TSC_KHZ,
                                                                        uapi.KVM_CAP_ADJUST_CLOCK)]
    finally:
        m.close()
    sig = leaves[0x40000000, 0]
    assert (sig.eax, sig.ebx, sig.ecx, sig.edx) == (0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D)
    features = leaves[0x40000001, 0].eax
    for bit in (kcpuid.KVM_FEATURE_NOP_IO_DELAY, kcpuid.KVM_FEATURE_CLOCKSOURCE2,
                kcpuid.KVM_FEATURE_CLOCKSOURCE_STABLE_BIT):
        assert features >> bit & 1
    assert leaves[7, 0].ebx >> 1 & 1                          # TSC_ADJUST
    assert {TSC, TSC_ADJUST, TSC_DEADLINE, WALL_CLOCK_NEW, SYSTEM_TIME_NEW, WALL_CLOCK, SYSTEM_TIME} <= listed
    assert caps == [1, kvmclock.KVM_CLOCK_VALID_FLAGS]


@pytest.mark.parametrize("sc", BACKENDS)
def test_time_ioctls_and_host_initiated_msrs_are_the_hosts(sc):
    m = guestvm.Machine(sc, mode=None)
    try:
        vm, vcpu = m.vm_fd, m.vcpu_fd
        got = {
            "vm-set-khz-after-vcpu": _errno(lambda: sc.ioctl(vm, uapi.KVM_SET_TSC_KHZ, 1000)),
            "vcpu-set-khz-0": _errno(lambda: sc.ioctl(vcpu, uapi.KVM_SET_TSC_KHZ, 0)),
            "khz-equal": sc.ioctl(vcpu, uapi.KVM_GET_TSC_KHZ, 0) == sc.ioctl(vm, uapi.KVM_GET_TSC_KHZ, 0),
            "set-clock-bad-flag": _errno(lambda: sc.ioctl(vm, uapi.KVM_SET_CLOCK, uapi.kvm_clock_data(flags=1 << 4))),
            "set-clock": _errno(lambda: sc.ioctl(vm, uapi.KVM_SET_CLOCK, uapi.kvm_clock_data(clock=10**12))),
            "adjust": (m.msrs(5, TSC_ADJUST), m.msrs(None, TSC_ADJUST)),
            "deadline-without-lapic": (m.msrs(5, TSC_DEADLINE), m.msrs(None, TSC_DEADLINE)),
            "system-time": (m.msrs(0x1001, SYSTEM_TIME_NEW), m.msrs(None, SYSTEM_TIME_NEW)),
            "wall-clock": (m.msrs(0x2000, WALL_CLOCK_NEW), m.msrs(None, WALL_CLOCK_NEW)),
            "system-time-old": (m.msrs(0x3001, SYSTEM_TIME), m.msrs(None, SYSTEM_TIME)),
            "wall-clock-old": (m.msrs(0x4000, WALL_CLOCK), m.msrs(None, WALL_CLOCK, WALL_CLOCK_NEW)),
            "tsc": (m.msrs(10**15, TSC), m.msrs(None, TSC)[1][0] - 10**15 < 10**11),
        }
        clock = uapi.kvm_clock_data()
        sc.ioctl(vm, uapi.KVM_GET_CLOCK, clock)
    finally:
        m.close()
    assert got == {"vm-set-khz-after-vcpu": "EINVAL", "vcpu-set-khz-0": 0, "khz-equal": True,
                   "set-clock-bad-flag": "EINVAL", "set-clock": 0,
                   "adjust": ((1, [5]), (1, [5])), "deadline-without-lapic": ((1, [5]), (1, [0])),
                   "system-time": ((1, [0x1001]), (1, [0x1001])), "wall-clock": ((1, [0x2000]), (1, [0x2000])),
                   "system-time-old": ((1, [0x3001]), (1, [0x3001])),
                   "wall-clock-old": ((1, [0x4000]), (2, [0x4000, 0x4000])),
                   "tsc": ((1, [10**15]), True)}
    assert 10**12 <= clock.clock < 10**12 + 10 * 10**9


RDTSC_TWICE = guestvm.prot32("""
 rdtsc
 mov %eax, %esi
 rdtsc
 sub %esi, %eax
 mov %eax, %ebx
 hlt
""")


@pytest.mark.parametrize("khz,delta", [(1_000_000, 2), (2_000_000, 4), (500_000, 1)])
def test_the_guest_tsc_runs_at_the_set_frequency(soft_kvm, khz, delta):
    """On the virtual clock: two RDTSCs two instructions apart read 2 ticks at 1 GHz."""
    m = guestvm.Machine(syscalls, guestvm.assemble(RDTSC_TWICE))
    try:
        syscalls.ioctl(m.vcpu_fd, uapi.KVM_SET_TSC_KHZ, khz)
        assert syscalls.ioctl(m.vcpu_fd, uapi.KVM_GET_TSC_KHZ, 0) == khz
        assert m.step()["reason"] == "HLT"
        assert int(m.regs("rbx")["rbx"], 16) == delta
    finally:
        m.close()


ADJUST_GUEST = guestvm.prot32(f"""
 mov ${TSC_ADJUST}, %ecx
 xor %edx, %edx
 mov $0x40000000, %eax
 wrmsr
 rdtsc
 mov %edx, %esi
 mov ${TSC}, %ecx
 xor %edx, %edx
 xor %eax, %eax
 wrmsr
 mov ${TSC_ADJUST}, %ecx
 rdmsr
 mov %eax, %edi
 mov %edx, %ebp
 hlt
""")


def test_guest_writes_of_tsc_adjust_and_tsc(soft_kvm):
    """A TSC_ADJUST write moves the TSC by the difference; a TSC write moves TSC_ADJUST by as
    much as the TSC moved (the TSC was 2^30 and a few ticks, TSC_ADJUST ends a few below 0)."""
    m = guestvm.Machine(syscalls, guestvm.assemble(ADJUST_GUEST))
    try:
        assert m.step()["reason"] == "HLT"
        r = {k: int(v, 16) for k, v in m.regs("rsi", "rdi", "rbp").items()}
    finally:
        m.close()
    assert r["rsi"] == 0                                    # high half of the TSC: 2^30 + small
    adjust = (r["rbp"] << 32 | r["rdi"]) - (1 << 64)
    assert -100 < adjust < 0                                # 2^30 - (2^30 + the ticks so far)


def test_kvmclock_writes_a_pvclock_that_tells_the_kvmclock(soft_kvm):
    m = guestvm.Machine(syscalls, guestvm.assemble(RDTSC_TWICE))
    try:
        syscalls.ioctl(m.vm_fd, uapi.KVM_SET_CLOCK, uapi.kvm_clock_data(clock=5 * 10**9))
        syscalls.ioctl(m.vcpu_fd, uapi.KVM_SET_TSC_KHZ, 3_000_000)
        m.msrs(0x3001, SYSTEM_TIME_NEW)
        m.msrs(0x3100, WALL_CLOCK_NEW)
        info = kvmclock.PvclockVcpuTimeInfo.from_buffer_copy(bytes(m.ram[0x3000:0x3020]))
        wall = kvmclock.PvclockWallClock.from_buffer_copy(bytes(m.ram[0x3100:0x310C]))
        tsc = m.msrs(None, TSC)[1][0]
        clock = uapi.kvm_clock_data()
        syscalls.ioctl(m.vm_fd, uapi.KVM_GET_CLOCK, clock)
    finally:
        m.close()
    assert info.version % 2 == 0 and info.flags == kvmclock.PVCLOCK_TSC_STABLE_BIT
    delta = tsc - info.tsc_timestamp
    delta = delta << info.tsc_shift if info.tsc_shift >= 0 else delta >> -info.tsc_shift
    guest_ns = info.system_time + (delta * info.tsc_to_system_mul >> 32)
    assert abs(guest_ns - clock.clock) <= 1 and clock.clock >= 5 * 10**9
    assert (wall.version, wall.sec, wall.nsec) == (2, 0, 0)     # the virtual clock's epoch


@pytest.mark.parametrize("sc", BACKENDS)
def test_tsc_deadline_msr_follows_the_lapic_timer_mode(sc):
    """IA32_TSC_DEADLINE belongs to the LAPIC timer: with the timer in one-shot mode (as at
    reset) a write is taken and dropped (it reads 0); in TSC-deadline mode it is kept."""
    m = guestvm.Machine(sc, mode=None, vm_setup=guestvm.create_irqchip)
    try:
        oneshot = (m.msrs(12345, TSC_DEADLINE), m.msrs(None, TSC_DEADLINE))
        state = uapi.kvm_lapic_state()
        sc.ioctl(m.vcpu_fd, uapi.KVM_GET_LAPIC, state)
        raw = bytearray(bytes(state))
        raw[0x320:0x324] = (0x50000 | 0x40).to_bytes(4, "little")      # masked, TSC-deadline mode
        sc.ioctl(m.vcpu_fd, uapi.KVM_SET_LAPIC, uapi.kvm_lapic_state.from_buffer_copy(bytes(raw)))
        deadline = (m.msrs(1 << 62, TSC_DEADLINE), m.msrs(None, TSC_DEADLINE))
    finally:
        m.close()
    assert oneshot == ((1, [12345]), (1, [0]))
    assert deadline == ((1, [1 << 62]), (1, [1 << 62]))


def test_time_scale_is_exact_at_one_ghz():
    assert kvmclock.kvm_get_time_scale(10**9) == (1 << 31, 1)
    mul, shift = kvmclock.kvm_get_time_scale(2_445_404_000)
    assert mul < 1 << 32 and abs((10**9 << shift if shift >= 0 else 10**9 >> -shift) * mul / 2**32 - 10**9 / 2.445404) < 1
