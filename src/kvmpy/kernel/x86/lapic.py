"""The in-kernel local APIC (arch/x86/kvm/lapic.c).

Each vCPU of a VM with an in-kernel irqchip (full or split) has a ``KvmLapic``: the 1-KiB
register page of struct kvm_lapic_state (what KVM_GET/SET_LAPIC copy), reached by the guest
through the xAPIC MMIO window at IA32_APIC_BASE (an emulated MMIO access, served before the
MMIO bus) or, in x2APIC mode, through MSRs 0x800-0x8ff; the timer on the VM clock
(kernel/hrtimer.py) in one-shot, periodic and TSC-deadline modes; the ICR, whose writes send
IPIs through ``kvm_irq_delivery_to_apic`` (fixed, lowest priority with vector hashing, NMI,
INIT, SIPI; physical, logical flat/cluster and x2APIC destinations; shorthands).

Interrupts reach a vCPU as IRR bits; ``kvm_apic_has_interrupt`` gives the highest one above
the processor priority (PPR, from the TPR and the highest in-service vector), and
``kvm_get_apic_interrupt`` moves it to the ISR when the vCPU takes it.  The TPR is also CR8:
the run path copies it into the processor before each entry and back after each exit, and
intercepts CR8 writes while an interrupt waits behind the TPR, so that lowering CR8 delivers
it at once.  An EOI of a vector the IOAPIC sent runs the IOAPIC's EOI (or, split, an exit to
user space's IOAPIC).  INIT and SIPI are latched in ``pending_events`` and taken by the
target's own thread in ``kvm_apic_accept_events``.

Another vCPU's thread (an IPI), a device's (an MSI) or a timer callback on any vCPU thread
may set IRR bits, so the register page is changed under the LAPIC's lock; the target is
kicked.
"""

from __future__ import annotations

import errno
import threading

from ...hw import apicdef as A
from ...uapi import kvm as uapi, kvm_para
from ..fs import copy_from_user, copy_to_user, kernel_error
from ..hrtimer import HrTimer
from ..iodev import KvmIoDevice
from ..kvm_host import KvmLapicIrq, kvm_vcpu_kick
from . import cpuid as kcpuid, kvmclock, x86

KVM_APIC_INIT, KVM_APIC_SIPI = 1, 2     # pending_events bits
APIC_BUS_CYCLE_NS = 1                   # KVM's APIC bus: 1 GHz
MIN_TIMER_PERIOD_NS = 200_000           # kvm.min_timer_period_us: the shortest periodic tick
IOAPIC_EDGE_TRIG, IOAPIC_LEVEL_TRIG = 0, 1

LVT_REGS = (A.APIC_LVTT, A.APIC_LVTTHMR, A.APIC_LVTPC, A.APIC_LVT0, A.APIC_LVT1, A.APIC_LVTERR)
_LVT_MASK = A.APIC_LVT_MASKED | A.APIC_SEND_PENDING | A.APIC_VECTOR_MASK
_LINT_MASK = (_LVT_MASK | A.APIC_MODE_MASK | A.APIC_INPUT_POLARITY | A.APIC_LVT_REMOTE_IRR
              | A.APIC_LVT_LEVEL_TRIGGER)
# the writable bits of each LVT (the timer's mode bits are added by the guest's CPUID)
APIC_LVT_MASK = {A.APIC_LVTT: _LVT_MASK, A.APIC_LVTTHMR: _LVT_MASK | A.APIC_MODE_MASK,
                 A.APIC_LVTPC: _LVT_MASK | A.APIC_MODE_MASK, A.APIC_LVT0: _LINT_MASK,
                 A.APIC_LVT1: _LINT_MASK, A.APIC_LVTERR: _LVT_MASK}
X2APIC_ICR_RESERVED_BITS = (0xFFF << 20) | (3 << 16) | (1 << 13)

# the registers a read may name (kvm_lapic_reg_read's mask); ARBPRI and ICR2 xAPIC only
_READABLE = frozenset(
    [A.APIC_ID, A.APIC_LVR, A.APIC_TASKPRI, A.APIC_PROCPRI, A.APIC_LDR, A.APIC_DFR, A.APIC_SPIV,
     A.APIC_ESR, A.APIC_ICR, A.APIC_TMICT, A.APIC_TMCCT, A.APIC_TDCR, *LVT_REGS]
    + [base + 0x10 * i for base in (A.APIC_ISR, A.APIC_TMR, A.APIC_IRR) for i in range(8)])
_READABLE_XAPIC_ONLY = frozenset([A.APIC_ARBPRI, A.APIC_ICR2])


def kvm_lapic_irq_dest_mode(logical: bool) -> int:
    return A.APIC_DEST_LOGICAL if logical else A.APIC_DEST_PHYSICAL


class KvmLapic(KvmIoDevice):
    """struct kvm_lapic: the register page, the timer, the latched INIT/SIPI."""

    def __init__(self, vcpu):
        self.vcpu = vcpu
        self.lock = threading.RLock()
        self.regs = bytearray(uapi.KVM_APIC_REG_SIZE)
        self.base_address = A.APIC_DEFAULT_PHYS_BASE
        self.sw_enabled = False
        self.divide_count = 1
        self.pending_events = 0
        self.sipi_vector = 0
        self.arb_prio = 0                   # vcpu->arch.apic_arb_prio
        # struct kvm_timer
        self.timer = HrTimer(vcpu.kvm.clock, self._timer_fn)
        self.timer_mode = A.APIC_LVT_TIMER_ONESHOT
        self.timer_mode_mask = 1 << 17
        self.period = 0
        self.target_expiration = 0
        self.tscdeadline = 0
        self.timer_pending = 0
        self.deferred = []                  # (function, args) to run once the lock is dropped

    # ---- the register page
    def get_reg(self, reg: int) -> int:
        return int.from_bytes(self.regs[reg:reg + 4], "little")

    def set_reg(self, reg: int, val: int) -> None:
        self.regs[reg:reg + 4] = (val & 0xFFFFFFFF).to_bytes(4, "little")

    def _test_vector(self, base: int, vec: int) -> bool:
        return bool(self.regs[base + (vec >> 5) * 0x10 + ((vec >> 3) & 3)] >> (vec & 7) & 1)

    def _set_vector(self, base: int, vec: int, on: bool) -> None:
        i = base + (vec >> 5) * 0x10 + ((vec >> 3) & 3)
        if on:
            self.regs[i] |= 1 << (vec & 7)
        else:
            self.regs[i] &= ~(1 << (vec & 7))

    def _find_highest(self, base: int) -> int:
        for i in range(7, -1, -1):
            word = self.get_reg(base + 0x10 * i)
            if word:
                return i * 32 + word.bit_length() - 1
        return -1

    # ---- state
    @property
    def hw_enabled(self) -> bool:
        return bool(self.vcpu.arch.cpu.apic_base & A.MSR_IA32_APICBASE_ENABLE)

    @property
    def x2apic_mode(self) -> bool:
        return bool(self.vcpu.arch.cpu.apic_base & A.MSR_IA32_APICBASE_EXTD)

    @property
    def enabled(self) -> bool:
        return self.hw_enabled and self.sw_enabled

    def xapic_id(self) -> int:
        return self.get_reg(A.APIC_ID) >> 24

    def x2apic_id(self) -> int:
        return self.get_reg(A.APIC_ID) if self.x2apic_mode else self.xapic_id()

    # ---- the interface x86.py uses (it sits below this module)
    def reset(self, init_event: bool) -> None:
        kvm_lapic_reset(self.vcpu, init_event)

    def set_base(self, value: int) -> None:
        kvm_lapic_set_base(self.vcpu, value)

    def get_cr8(self) -> int:
        return kvm_lapic_get_cr8(self.vcpu)

    def set_cr8(self, cr8: int) -> None:
        kvm_lapic_set_tpr(self.vcpu, cr8)

    def set_sipi_pending(self) -> None:
        """KVM_SET_MP_STATE(SIPI_RECEIVED): INIT_RECEIVED with the SIPI latched."""
        with self.lock:
            self.pending_events |= KVM_APIC_SIPI

    # ---- the MMIO window (apic_mmio_read / apic_mmio_write), kvm_io_device ops
    def in_range(self, addr: int) -> bool:
        return self.base_address <= addr < self.base_address + A.LAPIC_MMIO_LENGTH

    def read(self, vcpu, addr, length, data) -> bool:
        if not self.in_range(addr):
            return False
        with self.lock:
            if not self.hw_enabled or self.x2apic_mode:
                data[:length] = b"\xff" * length            # KVM_X86_QUIRK_LAPIC_MMIO_HOLE
                return True
            value = kvm_lapic_reg_read(self, addr - self.base_address, length)
            data[:length] = (value or 0).to_bytes(4, "little")[:length] if value is not None else bytes(length)
        return True

    def write(self, vcpu, addr, length, data) -> bool:
        if not self.in_range(addr):
            return False
        offset = addr - self.base_address
        if not self.hw_enabled or self.x2apic_mode or length != 4 or offset & 0xF:
            return True                         # dropped (SDM: 32-bit aligned accesses only)
        kvm_lapic_reg_write(self, offset & 0xFF0, int.from_bytes(data[:4], "little"))
        return True

    # ---- the timer's callback (apic_timer_fn), on whichever vCPU thread fires timers
    def _timer_fn(self, timer) -> None:
        apic_timer_expired(self)
        if self.timer_mode == A.APIC_LVT_TIMER_PERIODIC and self.period:
            self.target_expiration += self.period
            self.timer.start(self.target_expiration)


# ------------------------------------------------------------------ creation and reset
def kvm_create_lapic(vcpu) -> None:
    vcpu.arch.apic = KvmLapic(vcpu)


def kvm_lapic_set_base(vcpu, value: int) -> None:
    """IA32_APIC_BASE changed (validated by the caller): enabling sets the xAPIC ID again,
    entering x2APIC mode sets the x2APIC ID and LDR; the MMIO window moves with the base."""
    cpu = vcpu.arch.cpu
    old, cpu.apic_base = cpu.apic_base, value
    apic = vcpu.arch.apic
    if apic is None:
        return
    with apic.lock:
        if (old ^ value) & A.MSR_IA32_APICBASE_ENABLE and value & A.MSR_IA32_APICBASE_ENABLE:
            kvm_apic_set_xapic_id(apic, vcpu.vcpu_id)
        if (old ^ value) & A.MSR_IA32_APICBASE_EXTD and value & A.MSR_IA32_APICBASE_EXTD:
            kvm_apic_set_x2apic_id(apic, vcpu.vcpu_id)
        apic.base_address = value & A.MSR_IA32_APICBASE_BASE


def kvm_apic_set_xapic_id(apic, id_: int) -> None:
    apic.set_reg(A.APIC_ID, (id_ & 0xFF) << 24)


def kvm_apic_calc_x2apic_ldr(id_: int) -> int:
    """x2APIC logical ID: cluster id_ >> 4 in bits 16-31, one bit of 16 for the member."""
    return ((id_ >> 4) << 16) | (1 << (id_ & 0xF))


def kvm_apic_set_x2apic_id(apic, id_: int) -> None:
    apic.set_reg(A.APIC_ID, id_)
    apic.set_reg(A.APIC_LDR, kvm_apic_calc_x2apic_ldr(id_))


def kvm_apic_set_version(vcpu) -> None:
    """LVR: version 0x14 with six LVTs; directed EOI where the guest has x2APIC and no
    in-kernel IOAPIC would lose its EOI broadcast (a split irqchip)."""
    apic = vcpu.arch.apic
    v = A.APIC_VERSION | ((len(LVT_REGS) - 1) << 16)
    if kcpuid.guest_cpuid_has(vcpu, "x2apic") and vcpu.kvm.arch.vioapic is None:
        v |= A.APIC_LVR_DIRECTED_EOI
    apic.set_reg(A.APIC_LVR, v)


def kvm_apic_update_timer_mode_mask(vcpu) -> None:
    """The LVT timer's mode bits: periodic always, TSC-deadline where the guest's CPUID has
    it (kvm_apic_set_version's sibling, run at KVM_SET_CPUID2 and reset)."""
    apic = vcpu.arch.apic
    apic.timer_mode_mask = (3 << 17) if kcpuid.guest_cpuid_has(vcpu, "tsc_deadline_timer") else (1 << 17)


def kvm_lapic_reset(vcpu, init_event: bool) -> None:
    """Power-on or INIT state (SDM 11.4.7.1): all LVTs masked (the boot CPU's LINT0 in
    ExtINT mode, KVM's LINT0_REENABLED quirk, so the PIC reaches it), SPIV 0xff with the
    APIC software-disabled, flat DFR, empty IRR/ISR/TMR, the timer stopped."""
    if not init_event:
        base = A.APIC_DEFAULT_PHYS_BASE | A.MSR_IA32_APICBASE_ENABLE
        if x86.kvm_vcpu_is_bsp(vcpu):
            base |= A.MSR_IA32_APICBASE_BSP
        kvm_lapic_set_base(vcpu, base)
    apic = vcpu.arch.apic
    if apic is None:
        return
    with apic.lock:
        apic.timer.cancel()
        if not init_event:
            kvm_apic_set_xapic_id(apic, vcpu.vcpu_id)
        kvm_apic_set_version(vcpu)
        kvm_apic_update_timer_mode_mask(vcpu)
        for reg in LVT_REGS:
            apic.set_reg(reg, A.APIC_LVT_MASKED)
        apic_update_lvtt(apic)
        if x86.kvm_vcpu_is_bsp(vcpu):
            apic.set_reg(A.APIC_LVT0, A.APIC_DM_EXTINT)
        apic.set_reg(A.APIC_DFR, A.APIC_DFR_FLAT)
        apic_set_spiv(apic, 0xFF)
        apic.set_reg(A.APIC_TASKPRI, 0)
        if not apic.x2apic_mode:
            apic.set_reg(A.APIC_LDR, 0)
        for reg in (A.APIC_ESR, A.APIC_ICR, A.APIC_ICR2, A.APIC_TDCR, A.APIC_TMICT):
            apic.set_reg(reg, 0)
        for i in range(8):
            for base in (A.APIC_IRR, A.APIC_ISR, A.APIC_TMR):
                apic.set_reg(base + 0x10 * i, 0)
        update_divide_count(apic)
        apic.timer_pending = 0
        apic.period = apic.tscdeadline = apic.target_expiration = 0
        apic_update_ppr(apic)
        apic.arb_prio = 0


# ------------------------------------------------------------------ registers
def apic_set_spiv(apic, val: int) -> None:
    apic.set_reg(A.APIC_SPIV, val)
    apic.sw_enabled = bool(val & A.APIC_SPIV_APIC_ENABLED)


def apic_set_tpr(apic, tpr: int) -> None:
    apic.set_reg(A.APIC_TASKPRI, tpr)
    apic_update_ppr(apic)


def __apic_update_ppr(apic) -> bool:
    """PPR = TPR if its class is at least the highest in-service vector's, else that
    vector's class; True when it went down (an interrupt may now be deliverable)."""
    old = apic.get_reg(A.APIC_PROCPRI)
    tpr = apic.get_reg(A.APIC_TASKPRI)
    isrv = max(apic._find_highest(A.APIC_ISR), 0)
    ppr = tpr & 0xFF if (tpr & 0xF0) >= (isrv & 0xF0) else isrv & 0xF0
    if ppr != old:
        apic.set_reg(A.APIC_PROCPRI, ppr)
    return ppr < old


def apic_update_ppr(apic) -> None:
    if __apic_update_ppr(apic) and apic_has_interrupt_for_ppr(apic, apic.get_reg(A.APIC_PROCPRI)) != -1:
        kvm_vcpu_kick(apic.vcpu)


def apic_has_interrupt_for_ppr(apic, ppr: int) -> int:
    vec = apic._find_highest(A.APIC_IRR)
    if vec == -1 or (vec & 0xF0) <= ppr:
        return -1
    return vec


def kvm_apic_set_ldr(apic, ldr: int) -> None:
    apic.set_reg(A.APIC_LDR, ldr)


def update_divide_count(apic) -> None:
    """TDCR bits 0, 1 and 3 code the divider 2, 4, ... 128, or 1 (0b1011)."""
    tdcr = apic.get_reg(A.APIC_TDCR)
    shift = ((tdcr & 3) | ((tdcr & 8) >> 1)) + 1
    apic.divide_count = 1 << (shift & 7)


def apic_update_lvtt(apic) -> None:
    """The guest changed the timer mode: leaving or entering TSC-deadline mode stops the
    timer and clears the initial count and the deadline."""
    mode = apic.get_reg(A.APIC_LVTT) & apic.timer_mode_mask
    if mode != apic.timer_mode:
        if (apic.timer_mode == A.APIC_LVT_TIMER_TSCDEADLINE) != (mode == A.APIC_LVT_TIMER_TSCDEADLINE):
            apic.timer.cancel()
            apic.set_reg(A.APIC_TMICT, 0)
            apic.period = apic.tscdeadline = 0
        apic.timer_mode = mode


def kvm_lapic_reg_read(apic, offset: int, length: int = 4):
    """The value of the register containing ``offset``, shifted to the access (None for an
    access that is not within one register's 32 bits, or a reserved register)."""
    alignment = offset & 0xF
    reg = offset & ~0xF
    if alignment + length > 4 or offset > 0x3F0:
        return None
    if reg not in _READABLE and (apic.x2apic_mode or reg not in _READABLE_XAPIC_ONLY):
        return None
    value = __apic_read(apic, reg)
    return (value >> (8 * alignment)) & ((1 << (8 * length)) - 1)


def __apic_read(apic, reg: int) -> int:
    if reg == A.APIC_ARBPRI:
        return 0
    if reg == A.APIC_TMCCT:
        return 0 if apic.timer_mode == A.APIC_LVT_TIMER_TSCDEADLINE else apic_get_tmcct(apic)
    if reg == A.APIC_PROCPRI:
        apic_update_ppr(apic)
    return apic.get_reg(reg)


def kvm_lapic_reg_write(apic, reg: int, val: int) -> int:
    """A write to register ``reg``: 0, or 1 for a write the register refuses (#GP in x2APIC
    mode; MMIO writes ignore it).  What the write sends -- an IPI, an EOI to the IOAPIC --
    goes out after the LAPIC's lock is dropped: the receiver may be sending to this LAPIC
    at the same time."""
    with apic.lock:
        ret = _reg_write(apic, reg, val)
        work, apic.deferred = apic.deferred, []
    for fn, args in work:
        fn(*args)
    return ret


def _reg_write(apic, reg: int, val: int) -> int:
    x2 = apic.x2apic_mode
    if reg == A.APIC_ID:
        if x2:
            return 1
        kvm_apic_set_xapic_id(apic, val >> 24)
    elif reg == A.APIC_TASKPRI:
        apic_set_tpr(apic, val & 0xFF)
    elif reg == A.APIC_EOI:
        apic_set_eoi(apic)
    elif reg == A.APIC_LDR:
        if x2:
            return 1
        kvm_apic_set_ldr(apic, val & 0xFF000000)
    elif reg == A.APIC_DFR:
        if x2:
            return 1
        apic.set_reg(A.APIC_DFR, val | 0x0FFFFFFF)
    elif reg == A.APIC_SPIV:
        mask = 0x3FF
        if apic.get_reg(A.APIC_LVR) & A.APIC_LVR_DIRECTED_EOI:
            mask |= A.APIC_SPIV_DIRECTED_EOI
        apic_set_spiv(apic, val & mask)
        if not val & A.APIC_SPIV_APIC_ENABLED:
            for lvt in LVT_REGS:
                apic.set_reg(lvt, apic.get_reg(lvt) | A.APIC_LVT_MASKED)
            apic_update_lvtt(apic)
            apic.timer_pending = 0
    elif reg == A.APIC_ICR:
        val &= ~A.APIC_ICR_BUSY
        apic.set_reg(A.APIC_ICR, val)
        apic.deferred.append((kvm_apic_send_ipi, (apic, val, apic.get_reg(A.APIC_ICR2))))
    elif reg == A.APIC_ICR2:
        if x2:
            return 1
        apic.set_reg(A.APIC_ICR2, val & 0xFF000000)
    elif reg in (A.APIC_LVT0, A.APIC_LVTTHMR, A.APIC_LVTPC, A.APIC_LVT1, A.APIC_LVTERR):
        if not apic.sw_enabled:
            val |= A.APIC_LVT_MASKED
        apic.set_reg(reg, val & APIC_LVT_MASK[reg])
    elif reg == A.APIC_LVTT:
        if not apic.sw_enabled:
            val |= A.APIC_LVT_MASKED
        apic.set_reg(A.APIC_LVTT, val & (APIC_LVT_MASK[A.APIC_LVTT] | apic.timer_mode_mask))
        apic_update_lvtt(apic)
    elif reg == A.APIC_TMICT:
        if apic.timer_mode != A.APIC_LVT_TIMER_TSCDEADLINE:
            apic.timer.cancel()
            apic.set_reg(A.APIC_TMICT, val)
            start_apic_timer(apic)
    elif reg == A.APIC_TDCR:
        old_divisor = apic.divide_count
        apic.set_reg(A.APIC_TDCR, val & 0xB)
        update_divide_count(apic)
        if apic.divide_count != old_divisor and apic.period:
            update_target_expiration(apic, old_divisor)
    elif reg == A.APIC_ESR:
        if x2 and val:
            return 1
    elif reg == A.APIC_SELF_IPI:
        if not x2 or val & ~A.APIC_VECTOR_MASK:
            return 1
        apic.deferred.append((kvm_apic_send_ipi, (apic, A.APIC_DEST_SELF | val, 0)))
    else:
        return 1
    return 0


# ------------------------------------------------------------------ x2APIC MSRs
def kvm_x2apic_msr_read(vcpu, msr: int, host_initiated: bool):
    apic = vcpu.arch.apic
    if apic is None or not apic.x2apic_mode:
        return 1, 0
    reg = (msr - A.APIC_BASE_MSR) << 4
    with apic.lock:
        if reg == A.APIC_ICR:
            return 0, apic.get_reg(A.APIC_ICR) | apic.get_reg(A.APIC_ICR2) << 32
        value = kvm_lapic_reg_read(apic, reg, 4)
    return (1, 0) if value is None else (0, value)


def kvm_x2apic_msr_write(vcpu, msr: int, data: int, host_initiated: bool) -> int:
    apic = vcpu.arch.apic
    if apic is None or not apic.x2apic_mode:
        return 1
    reg = (msr - A.APIC_BASE_MSR) << 4
    if reg == A.APIC_ICR:
        if data & X2APIC_ICR_RESERVED_BITS:
            return 1
        data &= ~A.APIC_ICR_BUSY
        with apic.lock:
            apic.set_reg(A.APIC_ICR, data)
            apic.set_reg(A.APIC_ICR2, data >> 32)
        kvm_apic_send_ipi(apic, data & 0xFFFFFFFF, data >> 32)
        return 0
    if data >> 32:
        return 1                    # bits 63:32 are reserved in every other register
    return kvm_lapic_reg_write(apic, reg, data)


# ------------------------------------------------------------------ accepting interrupts
def __apic_accept_irq(apic, delivery_mode: int, vector: int, level, trig_mode, dest_map=None) -> int:
    """Deliver one message to this LAPIC; 1 if it took it."""
    vcpu = apic.vcpu
    if delivery_mode in (A.APIC_DM_FIXED, A.APIC_DM_LOWEST):
        if delivery_mode == A.APIC_DM_LOWEST:
            apic.arb_prio += 1
        if trig_mode and not level:
            return 0                    # a level interrupt's de-assert message
        with apic.lock:
            if not apic.enabled:
                return 0
            if dest_map is not None:
                dest_map.add(vcpu.vcpu_id)
            apic._set_vector(A.APIC_TMR, vector, bool(trig_mode))
            apic._set_vector(A.APIC_IRR, vector, True)
        kvm_vcpu_kick(vcpu)
        return 1
    if delivery_mode == A.APIC_DM_NMI:
        x86.kvm_inject_nmi(vcpu)
        return 1
    if delivery_mode == A.APIC_DM_INIT:
        if not trig_mode or level:
            with apic.lock:
                apic.pending_events = KVM_APIC_INIT
            kvm_vcpu_kick(vcpu)
            return 1
        return 0
    if delivery_mode == A.APIC_DM_STARTUP:
        with apic.lock:
            apic.sipi_vector = vector
            apic.pending_events |= KVM_APIC_SIPI
        kvm_vcpu_kick(vcpu)
        return 1
    if delivery_mode == A.APIC_DM_SMI:
        return 1                        # kvmpy has no SMM: taken, and dropped
    return 0                            # ExtINT comes from the PIC (kvm_apic_accept_pic_intr)


def kvm_apic_set_irq(vcpu, irq: KvmLapicIrq, dest_map=None) -> int:
    return __apic_accept_irq(vcpu.arch.apic, irq.delivery_mode, irq.vector, irq.level, irq.trig_mode, dest_map)


def kvm_apic_local_deliver(apic, lvt: int) -> int:
    reg = apic.get_reg(lvt)
    if apic.hw_enabled and not reg & A.APIC_LVT_MASKED:
        return __apic_accept_irq(apic, reg & A.APIC_MODE_MASK, reg & A.APIC_VECTOR_MASK, 1,
                                 reg & A.APIC_LVT_LEVEL_TRIGGER)
    return 0


def kvm_apic_has_interrupt(vcpu) -> int:
    """The highest requested vector above the PPR, or -1."""
    apic = vcpu.arch.apic
    if apic is None or not apic.enabled:
        return -1
    with apic.lock:
        __apic_update_ppr(apic)
        return apic_has_interrupt_for_ppr(apic, apic.get_reg(A.APIC_PROCPRI))


def kvm_get_apic_interrupt(vcpu) -> int:
    """The interrupt-acknowledge cycle: the vector moves from the IRR to the ISR."""
    apic = vcpu.arch.apic
    with apic.lock:
        vector = kvm_apic_has_interrupt(vcpu)
        if vector == -1:
            return -1
        apic._set_vector(A.APIC_IRR, vector, False)
        apic._set_vector(A.APIC_ISR, vector, True)
        __apic_update_ppr(apic)
    return vector


def kvm_apic_accept_pic_intr(vcpu) -> bool:
    """Does this vCPU take the PIC's ExtINT?  Without an in-kernel LAPIC (a VM without
    KVM_CREATE_IRQCHIP has no PIC either) the boot processor; with one, when the LAPIC is
    hardware-disabled or LINT0 is unmasked in ExtINT mode -- at reset the boot processor's
    only (kvm_lapic_reset)."""
    apic = vcpu.arch.apic
    if apic is None:
        return vcpu.vcpu_id == vcpu.kvm.arch.bsp_vcpu_id
    lvt0 = apic.get_reg(A.APIC_LVT0)
    if not apic.hw_enabled:
        return True
    return not lvt0 & A.APIC_LVT_MASKED and lvt0 & A.APIC_MODE_MASK == A.APIC_DM_EXTINT


def apic_set_eoi(apic) -> int:
    vector = apic._find_highest(A.APIC_ISR)
    if vector == -1:
        return -1
    apic._set_vector(A.APIC_ISR, vector, False)
    apic_update_ppr(apic)
    kvm_ioapic_send_eoi(apic, vector)
    return vector


def kvm_ioapic_send_eoi(apic, vector: int) -> None:
    """The EOI of a vector the IOAPIC (or, split, user space's IOAPIC) sent here goes to it,
    level or edge (an edge pin's ack notifiers too: the PIT's reinjection waits for them)."""
    vcpu = apic.vcpu
    if vector not in vcpu.arch.ioapic_handled_vectors:
        return
    if x86.irqchip_split(vcpu.kvm):
        vcpu.arch.pending_ioapic_eoi = vector
        x86.kvm_make_request(x86.KVM_REQ_IOAPIC_EOI_EXIT, vcpu)
        return
    trigger = IOAPIC_LEVEL_TRIG if apic._test_vector(A.APIC_TMR, vector) else IOAPIC_EDGE_TRIG
    ioapic = vcpu.kvm.arch.vioapic
    if ioapic is not None:                  # the IOAPIC may send again: after the lock
        apic.deferred.append((ioapic.update_eoi, (vcpu, vector, trigger)))


# ------------------------------------------------------------------ destinations and IPIs
def kvm_apic_broadcast(apic, mda: int) -> bool:
    return mda == (A.X2APIC_BROADCAST if apic.x2apic_mode else A.APIC_BROADCAST)


def kvm_apic_match_physical_addr(apic, mda: int) -> bool:
    if kvm_apic_broadcast(apic, mda):
        return True
    if apic.x2apic_mode:
        return mda == apic.x2apic_id()
    return mda == apic.xapic_id()


def kvm_apic_match_logical_addr(apic, mda: int) -> bool:
    if kvm_apic_broadcast(apic, mda):
        return True
    ldr = apic.get_reg(A.APIC_LDR)
    if apic.x2apic_mode:
        return ldr >> 16 == mda >> 16 and bool(ldr & mda & 0xFFFF)
    logical_id = ldr >> 24
    mda &= 0xFF
    dfr = apic.get_reg(A.APIC_DFR)
    if dfr == A.APIC_DFR_FLAT:
        return bool(logical_id & mda)
    if dfr == A.APIC_DFR_CLUSTER:
        return logical_id >> 4 == mda >> 4 and bool(logical_id & mda & 0xF)
    return False


def kvm_apic_mda(vcpu, dest_id: int, source, target) -> int:
    """An IOAPIC's or MSI's broadcast 0xff reaches x2APIC-mode LAPICs as 0xffffffff."""
    if source is None and dest_id == A.APIC_BROADCAST and target.x2apic_mode:
        return A.X2APIC_BROADCAST
    return dest_id


def kvm_apic_match_dest(vcpu, source, shorthand: int, dest: int, dest_mode: int) -> bool:
    """Is ``vcpu``'s LAPIC among a message's destinations (``source``: the sending LAPIC,
    None for the IOAPIC or an MSI)?"""
    target = vcpu.arch.apic
    if target is None:
        return False
    if shorthand == A.APIC_DEST_NOSHORT:
        mda = kvm_apic_mda(vcpu, dest, source, target)
        if dest_mode == A.APIC_DEST_PHYSICAL:
            return kvm_apic_match_physical_addr(target, mda)
        return kvm_apic_match_logical_addr(target, mda)
    if shorthand == A.APIC_DEST_SELF:
        return target is source
    if shorthand == A.APIC_DEST_ALLINC:
        return True
    return target is not source                     # APIC_DEST_ALLBUT


def kvm_irq_delivery_to_apic(kvm, src, irq: KvmLapicIrq, dest_map=None) -> int:
    """Deliver ``irq`` from LAPIC ``src`` (None: the IOAPIC or an MSI) to the LAPICs it
    names; the number that took it, -1 for none.  Lowest priority goes to one of the
    software-enabled destinations, chosen by KVM's vector hashing (the vector modulo their
    number); a physical broadcast cannot be lowest priority, and becomes fixed."""
    if irq.dest_mode == A.APIC_DEST_PHYSICAL and irq.dest_id == 0xFF and irq.delivery_mode == A.APIC_DM_LOWEST:
        irq.delivery_mode = A.APIC_DM_FIXED
    r = -1
    lowest = []
    for vcpu in list(kvm.vcpus):
        if vcpu.arch is None or vcpu.arch.apic is None:
            continue
        if not kvm_apic_match_dest(vcpu, src, irq.shorthand, irq.dest_id, irq.dest_mode):
            continue
        if irq.delivery_mode != A.APIC_DM_LOWEST:
            r = max(r, 0) + kvm_apic_set_irq(vcpu, irq, dest_map)
        elif vcpu.arch.apic.sw_enabled:
            lowest.append(vcpu)
    if lowest:
        r = kvm_apic_set_irq(lowest[irq.vector % len(lowest)], irq, dest_map)
    return r


def kvm_apic_send_ipi(apic, icr_low: int, icr_high: int) -> None:
    """An ICR write: the message, with the destination from ICR2 (bits 24-31 in xAPIC mode,
    all 32 in x2APIC mode).  Not under the sender's lock: delivery takes the targets'."""
    irq = KvmLapicIrq(vector=icr_low & A.APIC_VECTOR_MASK, delivery_mode=icr_low & A.APIC_MODE_MASK,
                      dest_mode=icr_low & A.APIC_DEST_MASK, level=bool(icr_low & A.APIC_INT_ASSERT),
                      trig_mode=int(bool(icr_low & A.APIC_INT_LEVELTRIG)),
                      shorthand=icr_low & A.APIC_SHORT_MASK,
                      dest_id=icr_high if apic.x2apic_mode else icr_high >> 24)
    kvm_irq_delivery_to_apic(apic.vcpu.kvm, apic, irq)


def kvm_pv_send_ipi(kvm, bitmap_low: int, bitmap_high: int, min_id: int, icr: int, op_64_bit: bool) -> int:
    """KVM_HC_SEND_IPI: one ICR-style message to each LAPIC whose APIC ID is ``min_id`` plus
    a set bit of the two bitmaps (32 or 64 IDs each); the number delivered, -KVM_EINVAL for a
    logical or shorthand ICR, -EOPNOTSUPP without in-kernel LAPICs."""
    if icr & (A.APIC_DEST_MASK | A.APIC_SHORT_MASK):
        return -kvm_para.KVM_EINVAL
    by_id = {v.arch.apic.x2apic_id(): v for v in list(kvm.vcpus) if v.arch is not None and v.arch.apic is not None}
    if not by_id:
        return -errno.EOPNOTSUPP
    irq = KvmLapicIrq(vector=icr & A.APIC_VECTOR_MASK, delivery_mode=icr & A.APIC_MODE_MASK,
                      level=bool(icr & A.APIC_INT_ASSERT), trig_mode=icr & A.APIC_INT_LEVELTRIG)
    cluster = 64 if op_64_bit else 32
    count = 0
    for base, bitmap in ((min_id, bitmap_low), (min_id + cluster, bitmap_high)):
        for i in range(cluster):
            if bitmap >> i & 1 and base + i in by_id:
                count += kvm_apic_set_irq(by_id[base + i], irq)
    return count


# ------------------------------------------------------------------ INIT and SIPI
def kvm_apic_has_events(vcpu) -> bool:
    apic = vcpu.arch.apic
    return apic is not None and bool(apic.pending_events or apic.timer_pending)


def kvm_vcpu_deliver_sipi_vector(vcpu, vector: int) -> None:
    """The start-up IPI's vector names the real-mode page the AP starts at: CS = vector << 8,
    base vector << 12, IP 0."""
    cpu = vcpu.arch.cpu
    cs = cpu.seg[1]
    cs.selector, cs.base = vector << 8, vector << 12
    cpu.rip = 0
    x86._state_changed(vcpu)


def kvm_apic_accept_events(vcpu) -> None:
    """On the vCPU's own thread: a latched INIT resets it (an AP then waits for SIPI in
    INIT_RECEIVED, the BSP runs on); a SIPI starts a vCPU waiting in INIT_RECEIVED (one
    in any other state drops it)."""
    apic = vcpu.arch.apic
    if apic is None or not apic.pending_events:
        return
    with apic.lock:
        events, apic.pending_events = apic.pending_events, 0
        vector = apic.sipi_vector
    cpu = vcpu.arch.cpu
    if events & KVM_APIC_INIT:
        x86.kvm_vcpu_reset(vcpu, True)
        cpu.mp_state = uapi.KVM_MP_STATE_RUNNABLE if x86.kvm_vcpu_is_bsp(vcpu) else uapi.KVM_MP_STATE_INIT_RECEIVED
    if events & KVM_APIC_SIPI and cpu.mp_state == uapi.KVM_MP_STATE_INIT_RECEIVED:
        kvm_vcpu_deliver_sipi_vector(vcpu, vector)
        cpu.mp_state = uapi.KVM_MP_STATE_RUNNABLE
        cpu.halted = False


# ------------------------------------------------------------------ the timer
def tmict_to_ns(apic, count: int) -> int:
    return count * APIC_BUS_CYCLE_NS * apic.divide_count


def start_apic_timer(apic, tmcct=None) -> None:
    """TMICT written (or the deadline MSR, or a restored state): arm for the count's end --
    or, restoring a saved state (``tmcct``, __start_apic_timer(apic, APIC_TMCCT)), for what
    its current count had left."""
    apic.timer.cancel()
    if apic.timer_mode == A.APIC_LVT_TIMER_TSCDEADLINE:
        start_sw_tscdeadline(apic)
        return
    apic.period = tmict_to_ns(apic, apic.get_reg(A.APIC_TMICT))
    if not apic.period:
        return
    periodic = apic.timer_mode == A.APIC_LVT_TIMER_PERIODIC
    if periodic:
        apic.period = max(apic.period, MIN_TIMER_PERIOD_NS)
    left = apic.period
    if tmcct is not None:
        left = tmict_to_ns(apic, tmcct)
        if left > apic.period or (left <= 0 and periodic):
            left = apic.period
    apic.target_expiration = apic.vcpu.kvm.clock.now_ns() + max(left, 0)
    apic.timer.start(apic.target_expiration)


def update_target_expiration(apic, old_divisor: int) -> None:
    """TDCR changed mid-count: the rest of the count runs at the new rate."""
    now = apic.vcpu.kvm.clock.now_ns()
    remaining = max(0, apic.target_expiration - now)
    apic.period = apic.period * apic.divide_count // old_divisor
    apic.target_expiration = now + remaining * apic.divide_count // old_divisor
    apic.timer.start(apic.target_expiration)


def apic_get_tmcct(apic) -> int:
    """The current count: what remains of the period, in bus cycles / divider."""
    if not apic.get_reg(A.APIC_TMICT) or not apic.period:
        return 0
    remaining = max(0, apic.target_expiration - apic.vcpu.kvm.clock.now_ns())
    return (remaining % apic.period) // (APIC_BUS_CYCLE_NS * apic.divide_count)


def start_sw_tscdeadline(apic) -> None:
    vcpu = apic.vcpu
    deadline = apic.tscdeadline
    khz = kvmclock.vcpu_time(vcpu).virtual_tsc_khz
    if not deadline or not khz:
        return
    guest_tsc = kvmclock.kvm_read_l1_tsc(vcpu)
    if deadline > guest_tsc:
        ns = (deadline - guest_tsc) * 1_000_000 // khz
        apic.timer.start(vcpu.kvm.clock.now_ns() + max(1, ns))
    else:
        apic_timer_expired(apic)


def apic_timer_expired(apic) -> None:
    """The count (or deadline) ran out: one timer interrupt waits for the vCPU's thread
    (a second expiry before it is taken is lost, as in KVM)."""
    if apic.timer_pending:
        return
    apic.timer_pending = 1
    kvm_vcpu_kick(apic.vcpu)


def kvm_inject_apic_timer_irqs(vcpu) -> None:
    """On the vCPU's thread, before it runs: the expired timer's LVT interrupt."""
    apic = vcpu.arch.apic
    if apic is None or not apic.timer_pending:
        return
    with apic.lock:
        apic.timer_pending = 0
        kvm_apic_local_deliver(apic, A.APIC_LVTT)
        if apic.timer_mode == A.APIC_LVT_TIMER_TSCDEADLINE:
            apic.tscdeadline = 0
        elif apic.timer_mode == A.APIC_LVT_TIMER_ONESHOT:
            apic.tscdeadline = 0
            apic.target_expiration = 0


def kvm_get_lapic_tscdeadline_msr(vcpu, index: int, host_initiated: bool):
    apic = vcpu.arch.apic
    if apic is None or apic.timer_mode != A.APIC_LVT_TIMER_TSCDEADLINE:
        return 0, 0
    return 0, apic.tscdeadline


def kvm_set_lapic_tscdeadline_msr(vcpu, index: int, data: int, host_initiated: bool) -> int:
    """IA32_TSC_DEADLINE: arms the timer in TSC-deadline mode, is ignored in the others
    and without an in-kernel LAPIC (0 cancels)."""
    apic = vcpu.arch.apic
    if apic is None or apic.timer_mode != A.APIC_LVT_TIMER_TSCDEADLINE:
        return 0
    with apic.lock:
        apic.timer.cancel()
        apic.tscdeadline = data
        start_apic_timer(apic)
    return 0


# ------------------------------------------------------------------ TPR and CR8
def kvm_lapic_get_cr8(vcpu) -> int:
    return vcpu.arch.apic.get_reg(A.APIC_TASKPRI) >> 4 & 0xF


def kvm_lapic_set_tpr(vcpu, cr8: int) -> None:
    apic = vcpu.arch.apic
    with apic.lock:
        apic_set_tpr(apic, ((cr8 & 0xF) << 4) | (apic.get_reg(A.APIC_TASKPRI) & 4))


def sync_lapic_to_cr8(vcpu) -> None:
    """Before an entry: CR8 is the TPR's class; CR8 writes exit while an interrupt waits
    behind the TPR (update_cr8_intercept), so that lowering it delivers at once."""
    apic = vcpu.arch.apic
    if apic is None:
        return
    cpu = vcpu.arch.cpu
    cr8 = kvm_lapic_get_cr8(vcpu)
    cpu.cr8 = cr8
    irr = apic._find_highest(A.APIC_IRR) if apic.enabled else -1
    cpu.intercept_cr8 = irr != -1 and cr8 >= irr >> 4


def sync_cr8_to_lapic(vcpu) -> None:
    """After an exit: a CR8 the guest wrote without an exit becomes the TPR."""
    apic = vcpu.arch.apic
    if apic is not None and vcpu.arch.cpu.cr8 != kvm_lapic_get_cr8(vcpu):
        kvm_lapic_set_tpr(vcpu, vcpu.arch.cpu.cr8)


# ------------------------------------------------------------------ KVM_GET/SET_LAPIC
def kvm_apic_get_state(vcpu) -> uapi.kvm_lapic_state:
    apic = vcpu.arch.apic
    with apic.lock:
        regs = bytearray(apic.regs)
        regs[A.APIC_TMCCT:A.APIC_TMCCT + 4] = __apic_read(apic, A.APIC_TMCCT).to_bytes(4, "little")
        if apic.x2apic_mode:
            regs[A.APIC_ID:A.APIC_ID + 4] = ((apic.get_reg(A.APIC_ID) << 24) & 0xFFFFFFFF).to_bytes(4, "little")
    return uapi.kvm_lapic_state.from_buffer_copy(bytes(regs))


def kvm_apic_set_state(vcpu, state: uapi.kvm_lapic_state) -> None:
    """Restore the register page: the derived state (software enable, PPR, timer mode and
    divider) follows it, and the timer restarts from the saved current count."""
    apic = vcpu.arch.apic
    regs = bytearray(bytes(state))
    with apic.lock:
        apic_set_spiv(apic, int.from_bytes(regs[A.APIC_SPIV:A.APIC_SPIV + 4], "little"))
        if apic.x2apic_mode:
            id_ = int.from_bytes(regs[A.APIC_ID:A.APIC_ID + 4], "little") >> 24
            regs[A.APIC_ID:A.APIC_ID + 4] = id_.to_bytes(4, "little")
            regs[A.APIC_LDR:A.APIC_LDR + 4] = kvm_apic_calc_x2apic_ldr(id_).to_bytes(4, "little")
        tmcct = int.from_bytes(regs[A.APIC_TMCCT:A.APIC_TMCCT + 4], "little")
        apic.regs[:] = regs
        kvm_apic_set_version(vcpu)
        apic_update_ppr(apic)
        apic.timer.cancel()
        apic_update_lvtt(apic)
        update_divide_count(apic)
        apic.timer_pending = 0
        start_apic_timer(apic, tmcct)
        apic.set_reg(A.APIC_TMCCT, 0)
        apic.arb_prio = 0
    kvm_vcpu_kick(vcpu)


def _need_lapic(vcpu):
    if vcpu.arch.apic is None:
        raise kernel_error(errno.EINVAL)


def _get_lapic(vcpu, arg) -> int:
    _need_lapic(vcpu)
    copy_to_user(arg, kvm_apic_get_state(vcpu))
    return 0


def _set_lapic(vcpu, arg) -> int:
    _need_lapic(vcpu)
    state = uapi.kvm_lapic_state.from_buffer_copy(copy_from_user(arg, uapi.KVM_APIC_REG_SIZE))
    kvm_apic_set_state(vcpu, state)
    return 0


def kvm_lapic_after_set_cpuid(vcpu) -> None:
    """KVM_SET_CPUID2: the version register (directed EOI) and the timer modes follow the
    guest's x2APIC and TSC-deadline bits."""
    if vcpu.arch.apic is not None:
        kvm_apic_set_version(vcpu)
        kvm_apic_update_timer_mode_mask(vcpu)


x86.lapic_factory = kvm_create_lapic
kcpuid.after_set_cpuid_hooks.append(kvm_lapic_after_set_cpuid)
x86.msr_handlers.update({A.APIC_BASE_MSR + i: (kvm_x2apic_msr_read, kvm_x2apic_msr_write)
                         for i in range(A.X2APIC_MSR_COUNT)})
x86.msr_handlers[kvmclock.MSR_IA32_TSC_DEADLINE] = (kvm_get_lapic_tscdeadline_msr, kvm_set_lapic_tscdeadline_msr)
x86.vcpu_ioctl_handlers.update({uapi.KVM_GET_LAPIC: _get_lapic, uapi.KVM_SET_LAPIC: _set_lapic})
