"""The vCPU state ioctls: round trips through kvmpy's kernel, and a fresh vCPU's state equal to
the host KVM's fresh vCPU (the reset state)."""

import pytest

from kvmpy import syscalls as S
from kvmpy import uapi as K
from tests.support.vcpu import Vcpu, host_vcpu


@pytest.fixture
def vcpu(soft_kvm):
    v = Vcpu(S.open, S.ioctl, S.close)
    yield v
    v.close()


def test_regs_round_trip(vcpu):
    r = K.kvm_regs(*range(1, 17), 0x1234, 0x202)
    vcpu.ioctl(vcpu.fd, K.KVM_SET_REGS, r)
    back = vcpu.get(K.KVM_GET_REGS, K.kvm_regs)
    assert bytes(back) == bytes(r)


def test_regs_rflags_fixed_bit(vcpu):
    vcpu.ioctl(vcpu.fd, K.KVM_SET_REGS, K.kvm_regs(rflags=0x200))
    assert vcpu.get(K.KVM_GET_REGS, K.kvm_regs).rflags == 0x202


def _protected_mode_sregs(vcpu):
    s = vcpu.get(K.KVM_GET_SREGS, K.kvm_sregs)
    for name in ("ds", "es", "fs", "gs", "ss"):
        seg = getattr(s, name)
        seg.base, seg.limit, seg.selector, seg.type, seg.db, seg.g = 0x1000, 0xFFFFFFFF, 0x10, 3, 1, 1
    s.cs.base, s.cs.limit, s.cs.selector, s.cs.type, s.cs.db, s.cs.g = 0, 0xFFFFFFFF, 8, 0xB, 1, 1
    s.gdt.base, s.gdt.limit = 0x5000, 0x27
    s.idt.base, s.idt.limit = 0x6000, 0x7FF
    s.cr0, s.cr3, s.cr4, s.cr2 = 0x80000011, 0x9000, 0x20, 0xDEAD000
    s.efer = 0x500 | 1
    s.cs.l, s.cs.db = 1, 0
    return s


def test_sregs_round_trip(vcpu):
    s = _protected_mode_sregs(vcpu)
    vcpu.ioctl(vcpu.fd, K.KVM_SET_SREGS, s)
    assert bytes(vcpu.get(K.KVM_GET_SREGS, K.kvm_sregs)) == bytes(s)


def test_sregs_interrupt_bitmap_queues_interrupt(vcpu):
    vcpu.ioctl(vcpu.fd, K.KVM_INTERRUPT, K.kvm_interrupt(0x31))
    s = vcpu.get(K.KVM_GET_SREGS, K.kvm_sregs)
    assert list(s.interrupt_bitmap) == [1 << 0x31, 0, 0, 0]
    ev = vcpu.get(K.KVM_GET_VCPU_EVENTS, K.kvm_vcpu_events)
    assert ev.interrupt.injected == 1 and ev.interrupt.nr == 0x31


def test_fpu_round_trip(vcpu):
    f = K.kvm_fpu()
    for i in range(8):
        f.fpr[i][:] = bytes([i + 1] * 10) + bytes(6)
    for i in range(16):
        f.xmm[i][:] = bytes([0x10 + i] * 16)
    f.fcw, f.fsw, f.ftwx, f.last_opcode, f.last_ip, f.last_dp, f.mxcsr = 0x27F, 0x3800 | 1, 0xFF, 0x55, 0x1234, 0x5678, 0x1F80
    vcpu.ioctl(vcpu.fd, K.KVM_SET_FPU, f)
    assert bytes(vcpu.get(K.KVM_GET_FPU, K.kvm_fpu)) == bytes(f)


def test_msrs_round_trip(vcpu):
    pairs = [(0xC0000081, 0x0023001000000000), (0xC0000082, 0xFFFFFFFF81000000), (0xC0000084, 0x47700),
             (0x174, 0x10), (0x175, 0x8000), (0x176, 0xFFFFFFFF81001000), (0xC0000100, 0x7000),
             (0xC0000102, 0xFFFF888000000000), (0x277, 0x0007010600070106), (0x2FF, 0xC06),
             (0x250, 0x0606060606060606), (0x200, 0x80000006), (0x201, 0xFFF800800),
             (0xC0000080, 0x501), (0x1A0, 0x1)]
    t = K.with_entries(K.kvm_msrs, len(pairs))(nmsrs=len(pairs))
    for i, (index, data) in enumerate(pairs):
        t.entries[i].index, t.entries[i].data = index, data
    assert vcpu.ioctl(vcpu.fd, K.KVM_SET_MSRS, t) == len(pairs)
    for e in t.entries:
        e.data = 0
    assert vcpu.ioctl(vcpu.fd, K.KVM_GET_MSRS, t) == len(pairs)
    # EFER.LMA is not set by an MSR write; everything else reads back
    expect = [(i, d & ~0x400 if i == 0xC0000080 else d) for i, d in pairs]
    assert [(e.index, e.data) for e in t.entries] == expect


def test_cpuid2_round_trip_and_lookup(vcpu):
    sup = K.with_entries(K.kvm_cpuid2, 64)(nent=64)
    vcpu.ioctl(vcpu.kvm, K.KVM_GET_SUPPORTED_CPUID, sup)
    vcpu.ioctl(vcpu.fd, K.KVM_SET_CPUID2, sup)
    back = K.with_entries(K.kvm_cpuid2, 64)(nent=64)
    vcpu.ioctl(vcpu.fd, K.KVM_GET_CPUID2, back)
    assert back.nent == sup.nent
    assert bytes(back)[8:8 + 40 * back.nent] == bytes(sup)[8:8 + 40 * sup.nent]
    # the guest's CPUID answers from that table, KVM's rules for missing leaves
    from kvmpy.kernel import fs
    from kvmpy.kernel.x86 import cpuid
    v = fs.fdget(vcpu.fd).private_data
    assert cpuid.guest_cpuid_has(v, "lm") and not cpuid.guest_cpuid_has(v, "avx")
    max_basic = cpuid.kvm_cpuid(v, 0, 0)[0]
    assert cpuid.kvm_cpuid(v, 0x20, 0) == cpuid.kvm_cpuid(v, max_basic, 0)   # Intel: highest basic leaf
    assert cpuid.kvm_cpuid(v, 0x40000000, 0)[1:] == (0x4B4D564B, 0x564B4D56, 0x4D)   # "KVMKVMKVM"
    assert cpuid.kvm_cpuid(v, 0x40000100, 0) == (0, 0, 0, 0)     # hypervisor range, no entry
    present = {sup.entries[i].function for i in range(sup.nent)}
    hole = min(f for f in range(1, max_basic) if f not in present)
    assert cpuid.kvm_cpuid(v, hole, 0) == (0, 0, 0, 0)                       # in range, no entry


def test_efer_lme_needs_long_mode_in_guest_cpuid(vcpu):
    from kvmpy.kernel import fs
    from kvmpy.kernel.x86 import x86
    v = fs.fdget(vcpu.fd).private_data
    assert x86.kvm_set_msr_common(v, 0xC0000080, 0x100, False) == 1       # guest WRMSR: no LM yet
    sup = K.with_entries(K.kvm_cpuid2, 64)(nent=64)
    vcpu.ioctl(vcpu.kvm, K.KVM_GET_SUPPORTED_CPUID, sup)
    vcpu.ioctl(vcpu.fd, K.KVM_SET_CPUID2, sup)
    assert x86.kvm_set_msr_common(v, 0xC0000080, 0x100, False) == 0
    assert x86.kvm_get_msr_common(v, 0xC0000080, False) == (0, 0x100)


def test_mp_state_and_events_round_trip(vcpu):
    vcpu.ioctl(vcpu.fd, K.KVM_SET_MP_STATE, K.kvm_mp_state(K.KVM_MP_STATE_RUNNABLE))
    assert vcpu.get(K.KVM_GET_MP_STATE, K.kvm_mp_state).mp_state == K.KVM_MP_STATE_RUNNABLE
    ev = K.kvm_vcpu_events()
    ev.exception.injected, ev.exception.nr, ev.exception.has_error_code, ev.exception.error_code = 1, 13, 1, 0x18
    ev.interrupt.injected, ev.interrupt.nr = 1, 0x40
    ev.interrupt.shadow = K.KVM_X86_SHADOW_INT_MOV_SS
    ev.nmi.pending, ev.nmi.masked = 1, 1
    ev.flags = K.KVM_VCPUEVENT_VALID_NMI_PENDING | K.KVM_VCPUEVENT_VALID_SHADOW
    vcpu.ioctl(vcpu.fd, K.KVM_SET_VCPU_EVENTS, ev)
    back = vcpu.get(K.KVM_GET_VCPU_EVENTS, K.kvm_vcpu_events)
    assert (back.exception.injected, back.exception.nr, back.exception.has_error_code,
            back.exception.error_code) == (1, 13, 1, 0x18)
    assert (back.interrupt.injected, back.interrupt.nr, back.interrupt.shadow) == (1, 0x40, K.KVM_X86_SHADOW_INT_MOV_SS)
    assert (back.nmi.pending, back.nmi.masked) == (1, 1)


def test_debugregs_round_trip(vcpu):
    d = K.kvm_debugregs()
    d.db[:] = [0x1000, 0x2000, 0x3000, 0x4000]
    d.dr6, d.dr7 = 0xFFFF0FF1, 0x401
    vcpu.ioctl(vcpu.fd, K.KVM_SET_DEBUGREGS, d)
    assert bytes(vcpu.get(K.KVM_GET_DEBUGREGS, K.kvm_debugregs)) == bytes(d)


def test_sync_regs(vcpu):
    """kvm_run's sync area: store_regs/sync_regs move state through run.s.regs."""
    from kvmpy.kernel import fs
    from kvmpy.kernel.x86 import x86
    v = fs.fdget(vcpu.fd).private_data
    v.run.kvm_valid_regs = K.KVM_SYNC_X86_REGS | K.KVM_SYNC_X86_SREGS
    x86.store_regs(v)
    assert v.run.s.regs.regs.rip == 0xFFF0 and v.run.s.regs.sregs.cs.selector == 0xF000
    v.run.s.regs.regs.rax = 0x77
    v.run.kvm_dirty_regs = K.KVM_SYNC_X86_REGS
    x86.sync_regs(v)
    assert vcpu.get(K.KVM_GET_REGS, K.kvm_regs).rax == 0x77 and v.run.kvm_dirty_regs == 0


# --- reset state: kvmpy's fresh vCPU equals the host's -----------------------------------------
RESET_CHECKS = [
    (K.KVM_GET_REGS, K.kvm_regs),
    (K.KVM_GET_SREGS, K.kvm_sregs),         # incl. GDTR.limit 0xffff (SDM table 9-1)
    (K.KVM_GET_MP_STATE, K.kvm_mp_state),
    (K.KVM_GET_VCPU_EVENTS, K.kvm_vcpu_events),
    (K.KVM_GET_DEBUGREGS, K.kvm_debugregs),
]


@pytest.mark.parametrize("vcpu_id", [0, 1])
@pytest.mark.parametrize("req,ctype", RESET_CHECKS, ids=["regs", "sregs", "mp_state", "events", "debugregs"])
def test_reset_state_matches_host(soft_kvm, vcpu_id, req, ctype):
    host = host_vcpu(vcpu_id=vcpu_id, ids=(0, 1))
    soft = Vcpu(S.open, S.ioctl, S.close, vcpu_id=vcpu_id, ids=(0, 1))
    try:
        assert bytes(soft.get(req, ctype)) == bytes(host.get(req, ctype))
    finally:
        host.close()
        soft.close()


def test_reset_msrs_match_host(soft_kvm):
    indices = [0x1B, 0x277, 0xFE, 0x2FF, 0x1A0, 0x174, 0xCE, 0xC0000080, 0xC0000081, 0xC0000103, 0x250, 0x200]

    def read(v):
        t = K.with_entries(K.kvm_msrs, len(indices))(nmsrs=len(indices))
        for i, index in enumerate(indices):
            t.entries[i].index = index
        assert v.ioctl(v.fd, K.KVM_GET_MSRS, t) == len(indices)
        return [(e.index, e.data) for e in t.entries]

    host = host_vcpu()
    soft = Vcpu(S.open, S.ioctl, S.close)
    try:
        assert read(soft) == read(host)
    finally:
        host.close()
        soft.close()
