"""x86.c's run path: KVM_RUN -> kvm_arch_vcpu_ioctl_run -> vcpu_run -> vcpu_enter_guest.

``vcpu_enter_guest`` injects pending events, enters the guest through the
vendor's ``vcpu_run`` (the processor runs until a VM exit) and hands the exit to
the vendor's handler table.  Handlers that the kernel resolves return 1 and the
loop re-enters; those that need user space fill ``kvm_run`` and return 0.
Exits that user space completes (PIO IN, MMIO reads) leave a
``complete_userspace_io`` callback that runs at the start of the next KVM_RUN.
"""

from __future__ import annotations

import contextlib
import errno
import signal

from kvmpy.hw.system import sysops as system, tasks
from ...hw.events import EXT_INTR, HW_EXC, NMI, Fault, Intercept
from kvmpy.hw.x86defs import IF, RAX, RBX, RCX, RDX, RSI, TF
from ...uapi import kvm as uapi, kvm_para
from .. import signals
from ..fs import kernel_error
from ..hrtimer import kvm_clock_idle, kvm_clock_run_expired
from ..iodev import KVM_PIO_BUS, kvm_io_bus_read, kvm_io_bus_write
from ..run_token import (CONTENDED_SLICE, kvm_run_token_acquire, kvm_run_token_busy, kvm_run_token_contended,
                         kvm_run_token_release, kvm_run_token_should_yield)
from ..kvm_host import gfn_to_memslot, kvm_check_request, kvm_guest_mode_run, kvm_make_request, kvm_vcpu_srcu_dropped
from ..trace import event, traced
from kvmpy.kernel.x86 import cpuid, irq, irq_comm, lapic, params, x86
from kvmpy.kernel.x86.mmu import mmu

KVM_SYNC_X86_VALID_FIELDS = uapi.KVM_SYNC_X86_REGS | uapi.KVM_SYNC_X86_SREGS | uapi.KVM_SYNC_X86_EVENTS


# ------------------------------------------------------------------ KVM_RUN
@traced
def kvm_arch_vcpu_ioctl_run(vcpu) -> int:
    run = vcpu.run
    arch = vcpu.arch
    if run.kvm_valid_regs & ~KVM_SYNC_X86_VALID_FIELDS or run.kvm_dirty_regs & ~KVM_SYNC_X86_VALID_FIELDS:
        raise kernel_error(errno.EINVAL)
    if run.kvm_dirty_regs:
        x86.sync_regs(vcpu)
    r = 1
    cui = arch.complete_userspace_io
    if cui is not None:
        arch.complete_userspace_io = None
        r = cui(vcpu)
    if r > 0:
        if run.immediate_exit:
            r = -errno.EINTR        # exit_reason is left as it was (the host does the same)
        elif arch.cpu.mp_state == uapi.KVM_MP_STATE_UNINITIALIZED:
            r = kvm_vcpu_wait_uninitialized(vcpu)
        else:
            r = vcpu_run(vcpu)
    if run.kvm_valid_regs:
        x86.store_regs(vcpu)
    post_kvm_run_save(vcpu)
    if r < 0:
        raise kernel_error(-r)
    return 0


def kvm_vcpu_wait_uninitialized(vcpu) -> int:
    """An AP that was never started: KVM_RUN waits for an INIT (or a signal), takes it and
    returns EAGAIN for user space to call again (EINTR after a signal), as KVM does."""
    kvm_vcpu_block(vcpu)
    lapic.kvm_apic_accept_events(vcpu)
    if signals.signal_pending(vcpu) or vcpu.run.immediate_exit:
        vcpu.run.exit_reason = uapi.KVM_EXIT_INTR
        vcpu.stat["signal_exits"] += 1
        return -errno.EINTR
    return -errno.EAGAIN


def post_kvm_run_save(vcpu) -> None:
    run, cpu = vcpu.run, vcpu.arch.cpu
    run.if_flag = 1 if cpu.flags & IF else 0
    run.cr8 = x86.kvm_get_cr8(vcpu)
    run.apic_base = cpu.apic_base
    run.ready_for_interrupt_injection = int(x86.pic_in_kernel(vcpu.kvm)
                                            or kvm_vcpu_ready_for_interrupt_injection(vcpu))


def kvm_vcpu_ready_for_interrupt_injection(vcpu) -> bool:
    """May user space inject an interrupt now?  IF=1 without an STI/MOV SS shadow, no
    KVM_INTERRUPT vector still queued, and no event being (re)injected or exception pending:
    the VMM must find the vCPU at an instruction boundary with nothing half-injected."""
    cpu, arch = vcpu.arch.cpu, vcpu.arch
    return (bool(cpu.flags & IF) and not cpu.interrupt_shadow and arch.interrupt is None
            and arch.pending_external_vector is None and arch.exception is None and not arch.nmi_injected and cpu.pending_event is None)


def dm_request_for_irq_injection(vcpu) -> bool:
    """User space emulates the PIC and asked for an exit when it can inject."""
    return bool(vcpu.run.request_interrupt_window) and not x86.pic_in_kernel(vcpu.kvm)


@traced
def vcpu_run(vcpu) -> int:
    """Enter the guest until an exit needs user space; between two entries, a signal or
    ``immediate_exit`` ends KVM_RUN with -EINTR (xfer_to_guest_mode_handle_work)."""
    arch = vcpu.arch
    while True:
        kvm_clock_run_expired(vcpu.kvm)
        lapic.kvm_inject_apic_timer_irqs(vcpu)
        lapic.kvm_apic_accept_events(vcpu)
        cpu = arch.cpu
        if cpu.mp_state == 0 and not cpu.halted:          # KVM_MP_STATE_RUNNABLE
            r = vcpu_enter_guest(vcpu)
        else:
            r = vcpu_block(vcpu)
        if r <= 0:
            return r
        if dm_request_for_irq_injection(vcpu) and kvm_vcpu_ready_for_interrupt_injection(vcpu):
            vcpu.run.exit_reason = uapi.KVM_EXIT_IRQ_WINDOW_OPEN
            vcpu.stat["request_irq_exits"] += 1
            return 0
        if kvm_vcpu_interrupted(vcpu):
            vcpu.run.exit_reason = uapi.KVM_EXIT_INTR
            vcpu.stat["signal_exits"] += 1
            return -errno.EINTR


def kvm_vcpu_exit_request(vcpu) -> bool:
    """Must the running vCPU leave the guest for user space?  ``immediate_exit`` or a pending
    signal (kicks and requests from other threads reach the processor directly, through
    ``kvm_vcpu_kick``), or, on the host clock, a timer deadline gone by (the entry ends so
    that vcpu_run fires it; it goes on in the guest).  The processor asks this as its host
    interrupt line (see ``Processor.host_interrupt``), as it asks whether another vCPU waits
    for the run token past this one's slice: every few thousand instructions,
    before each translation and between REP chunks."""
    return bool(kvm_vcpu_interrupted(vcpu) or vcpu.kvm.clock.deadline_passed() or kvm_run_token_should_yield(vcpu))


def kvm_entry_budget(vcpu) -> int:
    """Instructions the next VM entry may retire: the preemption timer's ``max_insns``, cut
    to what is left of the vCPU's instruction limit and, on the virtual clock, to the next
    timer deadline (so the timer fires at its instruction) and, while another vCPU waits
    for the run token, to a contended slice: a guest spinning on memory another vCPU will
    write gives way within that many instructions, PAUSE or not."""
    budget = vcpu.kvm.clock.entry_insn_budget(params.max_insns)
    if kvm_run_token_contended(vcpu):
        budget = min(budget, CONTENDED_SLICE)
    limit = vcpu.arch.insn_limit
    if limit is None:
        return budget
    return max(0, min(budget, limit - vcpu.arch.cpu.icount))


def kvm_insn_limit_check(vcpu) -> None:
    """After an entry: once the vCPU has retired its ``params.insn_limit`` instructions,
    SIGXCPU goes to its thread, once, as a perf counter of guest instructions armed to
    signal on overflow would send it.  The signal is what ends KVM_RUN (-EINTR, as any
    pending signal does) and tells the VMM why; a VMM that sets the limit handles it (its
    default action, as for RLIMIT_CPU, ends the process)."""
    arch = vcpu.arch
    if arch.insn_limit is not None and arch.cpu.icount >= arch.insn_limit:
        arch.insn_limit = None
        signals.send_to_current_thread(signal.SIGXCPU)


def vcpu_block(vcpu) -> int:
    """A halted vCPU: with an in-kernel irqchip it waits (kvm_vcpu_block); without one, an
    event user space queued wakes it, else HLT goes to user space."""
    cpu = vcpu.arch.cpu
    if x86.irqchip_in_kernel(vcpu.kvm):
        return kvm_vcpu_block(vcpu)
    if vcpu.arch.interrupt is not None or vcpu.arch.exception is not None:
        cpu.halted = False
        return 1
    vcpu.run.exit_reason = uapi.KVM_EXIT_HLT
    return 0


KVM_HALT_POLL_S = 0.001     # longest wait of a blocked vCPU before it looks for signals again


def kvm_vcpu_has_events(vcpu) -> bool:
    """What ends a halt: a queued exception or NMI, an injected interrupt, or one the
    irqchip has for the vCPU while it accepts interrupts (IF=1)."""
    a = vcpu.arch
    if lapic.kvm_apic_has_events(vcpu):
        return True                     # INIT, SIPI, or an expired LAPIC timer to deliver
    if a.cpu.mp_state != uapi.KVM_MP_STATE_RUNNABLE:
        return False                    # waiting for INIT/SIPI: interrupts do not wake it
    if (a.exception is not None or a.nmi_queued or x86.kvm_get_nr_pending_nmis(vcpu) or a.nmi_injected
            or a.interrupt is not None):
        return True
    return bool(a.cpu.flags & IF) and irq.kvm_cpu_has_interrupt(vcpu)


def kvm_vcpus_all_idle(kvm) -> bool:
    """Is every vCPU halted or waiting for INIT/SIPI?  Only then may the virtual clock jump
    to the next deadline: while one runs, its instructions make the time, and a jump would
    fire its timers early (a waiting AP would turn the BSP's PIT into an interrupt storm)."""
    for v in list(kvm.vcpus):           # a vCPU may be added meanwhile
        cpu = getattr(v.arch, "cpu", None)
        if cpu is not None and cpu.mp_state == uapi.KVM_MP_STATE_RUNNABLE and not cpu.halted:
            return False
    return True


def kvm_vcpu_block(vcpu) -> int:
    """Wait until the halted vCPU has an event; meanwhile time goes on (a halted machine
    lets its clock reach the next timer, whose callback may raise the interrupt; while
    another vCPU runs, its instructions move the clock and its run loop fires the timers).
    A signal or immediate_exit ends the wait (vcpu_run then returns -EINTR); another
    thread's interrupt wakes it through kvm_vcpu_kick."""
    wait = vcpu.wait
    with kvm_vcpu_srcu_dropped(vcpu):
        while True:
            if kvm_vcpu_has_events(vcpu):
                if vcpu.arch.cpu.mp_state == uapi.KVM_MP_STATE_RUNNABLE:
                    vcpu.arch.cpu.halted = False
                return 1
            if kvm_vcpu_exit_request(vcpu):
                return 1
            if not kvm_vcpus_all_idle(vcpu.kvm) or not kvm_clock_idle(vcpu.kvm):
                wait.wait(KVM_HALT_POLL_S)
                wait.clear()


def kvm_vcpu_interrupted(vcpu) -> bool:
    """Must KVM_RUN end with EINTR?  ``immediate_exit`` or a signal that is not blocked."""
    return bool(vcpu.run.immediate_exit or signals.signal_pending(vcpu))


@traced
def vcpu_enter_guest(vcpu) -> int:
    """One entry and the handling of its exit, holding the VM's run token (run_token.py):
    one vCPU at a time executes guest code or emulates an instruction of it.  Waiting for
    the token ends early for a signal or immediate_exit (vcpu_run then returns -EINTR)."""
    # a wait for the token is out of the SRCU read section: memslot updates go on meanwhile
    waits = kvm_run_token_busy(vcpu.kvm.run_token)
    with kvm_vcpu_srcu_dropped(vcpu) if waits else contextlib.nullcontext():
        acquired = kvm_run_token_acquire(vcpu, lambda: kvm_vcpu_interrupted(vcpu))
    if not acquired:
        return 1
    try:
        return _enter_guest(vcpu)
    finally:
        kvm_run_token_release(vcpu)


def _enter_guest(vcpu) -> int:
    arch = vcpu.arch
    cpu = arch.cpu
    run = vcpu.run
    # after a memslot change the processor's TLB may still point into memory the VMM has
    # since unmapped: it goes before anything, the failure exit's instruction bytes included
    mmu.kvm_mmu_check_generation(vcpu)
    if not vcpu.kvm.memslots:
        return kvm_prepare_emulation_failure_exit(vcpu)     # nothing to fetch from, as on VMX
    if kvm_check_request(x86.KVM_REQ_TRIPLE_FAULT, vcpu):
        return kvm_handle_triple_fault(vcpu)
    if kvm_check_request(x86.KVM_REQ_SCAN_IOAPIC, vcpu):
        vcpu_scan_ioapic(vcpu)
    if kvm_check_request(x86.KVM_REQ_IOAPIC_EOI_EXIT, vcpu):
        run.exit_reason = uapi.KVM_EXIT_IOAPIC_EOI          # split irqchip: user space's IOAPIC
        run.eoi.vector, arch.pending_ioapic_eoi = arch.pending_ioapic_eoi, 0
        return 0
    req_int_win = dm_request_for_irq_injection(vcpu) and arch.interrupt is None  # kvm_cpu_accept_dm_intr
    cpu.intr_window_exiting = inject_pending_event(vcpu) or req_int_win
    lapic.sync_lapic_to_cr8(vcpu)
    event("kvm_entry", vcpu=vcpu.vcpu_id, rip=cpu.rip)
    arch.has_run = True
    ops = x86.kvm_x86_ops()
    exit_info = kvm_guest_mode_run(vcpu, ops.vcpu_run)
    lapic.sync_cr8_to_lapic(vcpu)
    vcpu.stat["exits"] += 1
    return ops.handle_exit(vcpu, exit_info)


def vcpu_scan_ioapic(vcpu) -> None:
    """Which vectors' EOIs on this vCPU the IOAPIC must see (``ioapic_handled_vectors``):
    the in-kernel IOAPIC's pins that send here, or with a split irqchip the level-triggered
    MSI routes of user space's IOAPIC."""
    kvm = vcpu.kvm
    vectors: set = set()
    if x86.irqchip_split(kvm):
        irq_comm.kvm_scan_ioapic_routes(vcpu, vectors)
    elif kvm.arch.vioapic is not None:
        kvm.arch.vioapic.scan_entry(vcpu, vectors)
    vcpu.arch.ioapic_handled_vectors = vectors


def inject_pending_event(vcpu) -> bool:
    """Program the entry's event injection: KVM's queued exception, then NMI, then interrupt.
    An event whose delivery the last exit interrupted is among them again, put back by the
    vendor's complete_interrupts.

    An interrupt of the in-kernel irqchip is acknowledged (taken from the chip) only when the
    guest can take it (IF=1, no STI/MOV SS shadow); until then the entry asks for an
    interrupt-window exit, and True says so.

    An NMI that user space restored as injected (KVM_SET_VCPU_EVENTS) is re-injected before
    new events. A new NMI waits while NMIs are blocked -- by the processor's NMI blocking,
    set on delivery and cleared by IRET, or by the STI/MOV SS shadow; the vendor's
    ``enable_nmi_window`` then has it go in as soon as the block lifts, right after the
    handler's IRET as on hardware: VMX's NMI-window exiting ends the entry there, SVM's
    vNMI has the processor take the NMI there itself.  KVM_GUESTDBG_BLOCKIRQ takes an NMI
    handed to the processor back.
    """
    arch = vcpu.arch
    cpu = arch.cpu
    if arch.exception is not None:
        vector, error_code, cr2 = arch.exception
        arch.exception = None
        if cr2 is not None:
            cpu.cr2 = cr2
        cpu.pending_event = (HW_EXC, vector, error_code)
        event("kvm_inj_exception", vector=vector, error_code=error_code)
        if arch.nmi_pending:
            x86.kvm_x86_ops().enable_nmi_window(vcpu)
        return False
    x86.process_nmi(vcpu)
    reinject_nmi = arch.nmi_injected
    # KVM_GUESTDBG_BLOCKIRQ: no new NMI or interrupt goes in (what was injected goes on)
    blocked = vcpu.guest_debug & uapi.KVM_GUESTDBG_BLOCKIRQ
    if blocked and cpu.vnmi_pending:
        cpu.vnmi_pending = False
        arch.nmi_pending += 1
    if reinject_nmi or (arch.interrupt is None and arch.nmi_pending and not blocked and x86.kvm_nmi_allowed(vcpu)):
        if not reinject_nmi:
            arch.nmi_pending -= 1
            vcpu.stat["nmi_injections"] += 1
        arch.nmi_injected = False       # from here on the processor carries it (pending_event)
        cpu.pending_event = (NMI, uapi.NMI_VECTOR, None)
        cpu.halted = False
        if arch.nmi_pending:            # the next waits for this one's IRET
            x86.kvm_x86_ops().enable_nmi_window(vcpu)
        return False
    if arch.nmi_pending and not blocked:
        x86.kvm_x86_ops().enable_nmi_window(vcpu)
    if arch.interrupt is None and not blocked and irq.kvm_cpu_has_interrupt(vcpu):
        if not cpu.flags & IF or cpu.interrupt_shadow:
            return True                 # the window exit comes back here when IF=1
        arch.interrupt = irq.kvm_cpu_get_interrupt(vcpu)      # kvm_queue_interrupt
    if arch.interrupt is not None:      # injected (KVM_INTERRUPT or the irqchip): goes in whatever IF says
        vec, arch.interrupt = arch.interrupt, None
        cpu.pending_event = (EXT_INTR, vec, None)
        cpu.halted = False
        vcpu.stat["irq_injections"] += 1
        event("kvm_inj_virq", vector=vec)
    return False


def kvm_skip_emulated_instruction(vcpu, length: int) -> int:
    """Retire the intercepted instruction KVM carried out in the guest's place; it counts
    among the guest's retired instructions (kvm_pmu_instruction_retired).  If it started
    with TF set, its single-step trap follows (0: a KVM_EXIT_DEBUG for user space)."""
    cpu = vcpu.arch.cpu
    tf = cpu.flags & TF
    cpu.rip = (cpu.rip + length) & (0xFFFFFFFFFFFFFFFF if cpu.mode.code == 8 else 0xFFFFFFFF)
    cpu.icount += 1
    cpu.interrupt_shadow = 0
    if tf:
        return x86.kvm_vcpu_do_singlestep(vcpu)
    return 1


def _internal_error(vcpu, suberror, data) -> int:
    run = vcpu.run
    run.exit_reason = uapi.KVM_EXIT_INTERNAL_ERROR
    run.internal.suberror = suberror
    run.internal.ndata = len(data)
    for i, d in enumerate(data[:16]):
        run.internal.data[i] = d & 0xFFFFFFFFFFFFFFFF
    return 0


def kvm_internal_error(vcpu, suberror, *data) -> int:
    return _internal_error(vcpu, suberror, list(data))


KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1


def kvm_prepare_emulation_failure_exit(vcpu) -> int:
    """KVM_EXIT_INTERNAL_ERROR / KVM_INTERNAL_ERROR_EMULATION in the kernel's layout.

    ``run->emulation_failure``: data[0] flags; with INSTRUCTION_BYTES, data[1..2] hold
    insn_size and the (up to 15) bytes at CS:RIP that could be fetched; then the five
    get_exit_info values of the last VM exit (reason, info1, info2, intr_info, error code).
    ndata is 6 without instruction bytes, 8 with them, as on the host.
    """
    cpu = vcpu.arch.cpu
    insn = bytearray()
    for i in range(15):
        try:
            insn.append(cpu.fetch_byte(cpu.sbase[1] + cpu.rip + i))
        except Exception:       # Fault or Intercept: the byte is not in guest RAM
            break
    data = [KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES if insn else 0]
    if insn:
        raw = bytes([len(insn)]) + bytes(insn).ljust(15, b"\x90")
        data += [int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")]
    data += list(x86.kvm_x86_ops().get_exit_info(vcpu))
    return _internal_error(vcpu, uapi.KVM_INTERNAL_ERROR_EMULATION, data)


# ------------------------------------------------------------------ port I/O
def _linear_rip(cpu):
    return cpu.sbase[1] + cpu.rip


def kvm_prepare_pio_exit(vcpu, port, size, is_in, count) -> None:
    """Hand a port access to user space as KVM_EXIT_IO (emulator_pio_in_out, x86.c): the data
    is in the run area's second page, for the fast-PIO path and the emulator alike."""
    run = vcpu.run
    run.exit_reason = uapi.KVM_EXIT_IO
    run.io.direction = uapi.KVM_EXIT_IO_IN if is_in else uapi.KVM_EXIT_IO_OUT
    run.io.size = size
    run.io.port = port
    run.io.count = count
    run.io.data_offset = 4096
    vcpu.stat["io_exits"] += 1
    event("kvm_pio", vcpu=vcpu.vcpu_id, rw="read" if is_in else "write", port=port, size=size, count=count)
    event("kvm_userspace_exit", reason="KVM_EXIT_IO")


def kernel_pio(vcpu, port, size, is_in, data: bytearray) -> bool:
    """Serve the access from an in-kernel device on the PIO bus, if one handles the port
    (an IN fills ``data``); False sends it to user space."""
    if is_in:
        return kvm_io_bus_read(vcpu, KVM_PIO_BUS, port, size, data)
    return kvm_io_bus_write(vcpu, KVM_PIO_BUS, port, size, bytes(data))


@traced
def kvm_fast_pio(vcpu, size: int, port: int, is_in: bool, insn_len: int) -> int:
    cpu = vcpu.arch.cpu
    if is_in:
        data = bytearray(size)
        if kernel_pio(vcpu, port, size, True, data):
            _complete_in(cpu, size, int.from_bytes(data, "little"))
            return kvm_skip_emulated_instruction(vcpu, insn_len)
        kvm_prepare_pio_exit(vcpu, port, size, True, 1)
        lrip = _linear_rip(cpu)

        def complete_fast_pio_in(v):
            if _linear_rip(v.arch.cpu) != lrip:
                return 1            # user space moved RIP: drop the completion
            val = int.from_bytes(bytes(v.pio_data[:size]), "little")
            _complete_in(v.arch.cpu, size, val)
            return kvm_skip_emulated_instruction(v, insn_len)

        vcpu.arch.complete_userspace_io = complete_fast_pio_in
        return 0
    val = cpu.regs[RAX] & ((1 << (8 * size)) - 1)
    data = bytearray(val.to_bytes(size, "little"))
    if kernel_pio(vcpu, port, size, False, data):
        return kvm_skip_emulated_instruction(vcpu, insn_len)
    vcpu.pio_data[:size] = data
    kvm_prepare_pio_exit(vcpu, port, size, False, 1)
    lrip = _linear_rip(cpu)

    def complete_fast_pio_out(v):
        if _linear_rip(v.arch.cpu) != lrip:
            return 1
        return kvm_skip_emulated_instruction(v, insn_len)

    vcpu.arch.complete_userspace_io = complete_fast_pio_out
    return 0


def _complete_in(cpu, size, val):
    if size == 4:
        cpu.regs[RAX] = val
    else:
        m = (1 << (8 * size)) - 1
        cpu.regs[RAX] = (cpu.regs[RAX] & ~m) | val


# ------------------------------------------------------------------ simple exits
@traced
def kvm_emulate_halt(vcpu, insn_len: int) -> int:
    """HLT: the vCPU blocks in the kernel (in-kernel irqchip), else KVM_EXIT_HLT -- which
    replaces the KVM_EXIT_DEBUG of a single-step trap on the HLT, as in Linux."""
    r = kvm_skip_emulated_instruction(vcpu, insn_len)
    vcpu.stat["halt_exits"] += 1
    if x86.irqchip_in_kernel(vcpu.kvm):
        vcpu.arch.cpu.halted = True
        vcpu.arch.ap_reset_hold = False
        return r
    vcpu.run.exit_reason = uapi.KVM_EXIT_HLT
    event("kvm_userspace_exit", reason="KVM_EXIT_HLT")
    return 0


@traced
def kvm_emulate_cpuid(vcpu, insn_len: int) -> int:
    cpu = vcpu.arch.cpu
    eax, ecx = cpu.regs[RAX] & 0xFFFFFFFF, cpu.regs[RCX] & 0xFFFFFFFF
    a, b, c, d = cpuid.kvm_cpuid(vcpu, eax, ecx)
    cpu.regs[RAX], cpu.regs[RBX], cpu.regs[RCX], cpu.regs[RDX] = a, b, c, d
    event("kvm_cpuid", function=eax, index=ecx, rax=a, rbx=b, rcx=c, rdx=d)
    return kvm_skip_emulated_instruction(vcpu, insn_len)


@traced
def kvm_emulate_rdmsr(vcpu, insn_len: int) -> int:
    cpu = vcpu.arch.cpu
    ecx = cpu.regs[RCX] & 0xFFFFFFFF
    r, data = x86.kvm_get_msr_common(vcpu, ecx, False)
    event("kvm_msr", write=0, ecx=ecx, data=data, failed=bool(r))
    if r:
        x86.kvm_inject_gp(vcpu, 0)
        return 1
    cpu.regs[RAX] = data & 0xFFFFFFFF
    cpu.regs[RDX] = data >> 32
    return kvm_skip_emulated_instruction(vcpu, insn_len)


@traced
def kvm_emulate_wrmsr(vcpu, insn_len: int) -> int:
    cpu = vcpu.arch.cpu
    ecx = cpu.regs[RCX] & 0xFFFFFFFF
    data = (cpu.regs[RAX] & 0xFFFFFFFF) | ((cpu.regs[RDX] & 0xFFFFFFFF) << 32)
    r = x86.kvm_set_msr_common(vcpu, ecx, data, False)
    event("kvm_msr", write=1, ecx=ecx, data=data, failed=bool(r))
    if r:
        x86.kvm_inject_gp(vcpu, 0)
        return 1
    cpu.refresh()
    return kvm_skip_emulated_instruction(vcpu, insn_len)


@traced
def kvm_set_cr(vcpu, cr: int, value: int, insn_len: int) -> int:
    """MOV to CR that the vendor intercepted (shadow paging): apply it, then fix the MMU."""
    cpu = vcpu.arch.cpu
    saved = cpu.intercept_cr3, cpu.intercept_cr0_cr4, cpu.intercept_cr8
    cpu.intercept_cr3 = cpu.intercept_cr0_cr4 = cpu.intercept_cr8 = False
    try:
        system.write_cr(cpu, cr, value)
    except Fault as f:
        x86.kvm_queue_exception(vcpu, f.vector, f.error_code)
        return 1
    finally:
        cpu.intercept_cr3, cpu.intercept_cr0_cr4, cpu.intercept_cr8 = saved
    event("kvm_cr", rw="write", cr=cr, val=value)
    if cr == 8:
        if vcpu.arch.apic is not None:
            lapic.kvm_lapic_set_tpr(vcpu, cpu.cr8)      # the next entry delivers what it unmasked
    elif cr == 3:
        mmu.kvm_mmu_new_pgd(vcpu)
    else:
        mmu.kvm_mmu_reset_context(vcpu)
    return kvm_skip_emulated_instruction(vcpu, insn_len)


def kvm_emulate_hypercall(vcpu, insn_len: int) -> int:
    """VMCALL/VMMCALL: the hypercall number in RAX, arguments in RBX, RCX, RDX, RSI (cut to
    32 bits outside 64-bit mode), the answer in RAX.  kvmpy has KVM_HC_SEND_IPI; any other
    number gets -KVM_ENOSYS, and a call from CPL > 0 -KVM_EPERM."""
    vcpu.stat["hypercalls"] += 1
    cpu = vcpu.arch.cpu
    op_64_bit = cpu.mode.code == 8
    mask = 0xFFFFFFFFFFFFFFFF if op_64_bit else 0xFFFFFFFF
    nr, a0, a1, a2, a3 = (cpu.regs[r] & mask for r in (RAX, RBX, RCX, RDX, RSI))
    if cpu.mode.cpl:
        ret = -kvm_para.KVM_EPERM
    elif nr == kvm_para.KVM_HC_SEND_IPI:
        ret = lapic.kvm_pv_send_ipi(vcpu.kvm, a0, a1, a2 & 0xFFFFFFFF, a3, op_64_bit)
    else:
        ret = -kvm_para.KVM_ENOSYS
    cpu.regs[RAX] = ret & mask
    return kvm_skip_emulated_instruction(vcpu, insn_len)


def kvm_emulate_xsetbv(vcpu, insn_len: int) -> int:
    """XSETBV (__kvm_set_xcr): XCR0 only, x87 always on, AVX only with SSE, nothing the guest's
    CPUID leaf 0xD does not offer (kvmpy's processor: x87 and SSE); else #GP(0)."""
    cpu = vcpu.arch.cpu
    value = (cpu.regs[RAX] & 0xFFFFFFFF) | ((cpu.regs[RDX] & 0xFFFFFFFF) << 32)
    if (cpu.regs[RCX] & 0xFFFFFFFF or not value & 1 or (value & 4 and not value & 2)
            or value & ~(x86.guest_supported_xcr0(vcpu) | 1)):
        x86.kvm_inject_gp(vcpu, 0)
        return 1
    cpu.xcr0 = value
    return kvm_skip_emulated_instruction(vcpu, insn_len)


@traced
def kvm_task_switch(vcpu, selector: int, source: str, error_code: int | None, insn_len: int,
                    event_kind: int | None = None) -> int:
    """Emulate the task switch of a TASK_SWITCH exit (x86.c's kvm_task_switch).

    The processor's own task switch does the work, with the intercept off and its memory
    accesses going through the guest's page tables and the memslots (the emulator's guest
    virtual accesses), not through KVM's shadow or TDP table.  The old task saves the EIP
    after the instruction (``insn_len``, 0 for a hardware event); a fault is queued for the
    guest, in the old task or, past the commit point, in the new one.  A new CR3 is a new
    root for the MMU.  Through an IDT task gate the switch delivers the event itself, so
    the event the exit interrupted (of kind ``event_kind``) is not injected again once the
    switch has reached its commit point (the new TR); a fault before it is a fault while
    delivering that event, merged with it (#DF, or a triple fault on a #DF).
    """
    cpu = vcpu.arch.cpu
    next_ip = (cpu.rip + insn_len) & 0xFFFFFFFF
    old_cr3, old_tr = cpu.cr3, cpu.tr
    cpu.intercept_task_switch = False
    try:
        with _guest_virtual_access(vcpu):
            tasks.task_switch(cpu, selector, source, next_ip, error_code=error_code,
                              ext=int(source == tasks.INT and not insn_len), deliver_faults=False)
    except Fault as f:
        if source == tasks.INT and cpu.tr is not old_tr:
            kvm_clear_vectoring_event(vcpu, event_kind)
        x86.kvm_queue_exception(vcpu, f.vector, f.error_code, f.cr2)
    except Intercept:           # a TSS or descriptor table outside RAM
        return kvm_internal_error(vcpu, uapi.KVM_INTERNAL_ERROR_EMULATION, cpu.rip)
    else:
        if source == tasks.INT:
            kvm_clear_vectoring_event(vcpu, event_kind)
    finally:
        cpu.intercept_task_switch = True
        if cpu.cr3 != old_cr3:
            mmu.kvm_mmu_new_pgd(vcpu)
    return 1


def kvm_clear_vectoring_event(vcpu, kind: int) -> None:
    """Drop the event of ``kind`` that complete_interrupts put back, as handle_task_switch
    and task_switch_interception clear the NMI, interrupt or exception queue: the task
    switch through the IDT's task gate delivers it."""
    arch = vcpu.arch
    if kind == NMI:
        arch.nmi_injected = False
        arch.cpu.nmi_masked = True
    elif kind == EXT_INTR:
        arch.interrupt = None
    elif kind == HW_EXC:
        arch.exception = None


class _GuestRam:
    """gfn -> host page from the memslots, as the processor's second-level table is read:
    what the emulator reaches with kvm_read_guest/kvm_write_guest."""

    def __init__(self, kvm):
        self.kvm = kvm

    def get(self, gfn):
        return mmu.gpa_to_host(self.kvm, gfn << 12, False)


class _ReadOnlyGfns:
    """gfns of read-only memslots (``gfn in``), the second level's read-only set."""

    def __init__(self, kvm):
        self.kvm = kvm

    def __contains__(self, gfn):
        slot = gfn_to_memslot(self.kvm, gfn)
        return slot is not None and bool(slot.flags & uapi.KVM_MEM_READONLY)


@contextlib.contextmanager
def _guest_virtual_access(vcpu):
    """Make the processor translate through the guest's page tables and the memslots for a
    while (its TLB emptied on both sides), instead of KVM's shadow or TDP table."""
    cpu = vcpu.arch.cpu
    saved = cpu.tdp, cpu.ept, cpu.ept_ro
    cpu.tdp, cpu.ept, cpu.ept_ro = True, _GuestRam(vcpu.kvm), _ReadOnlyGfns(vcpu.kvm)
    cpu.flush_tlb()
    try:
        yield
    finally:
        cpu.tdp, cpu.ept, cpu.ept_ro = saved
        cpu.flush_tlb()


def kvm_prepare_event_vectoring_exit(vcpu) -> int:
    """The exit interrupted the delivery of an event and asks for the instruction to be
    emulated (the delivery touched MMIO: a stack, IDT or GDT outside RAM).  Emulating the
    instruction at RIP would not deliver the event, and the VM exit would come back at
    once.  Recent Linux on silicon reports KVM_INTERNAL_ERROR_DELIVERY_EV; the reference host
    (kvm_pvm, whose delivery cannot reach such memory either) shuts the guest down, and
    kvmpy follows it: the event cannot be delivered, a triple fault."""
    kvm_make_request(x86.KVM_REQ_TRIPLE_FAULT, vcpu)
    return 1


def kvm_handle_triple_fault(vcpu) -> int:
    vcpu.run.exit_reason = uapi.KVM_EXIT_SHUTDOWN
    event("kvm_userspace_exit", reason="KVM_EXIT_SHUTDOWN")
    return 0


def handle_preemption(vcpu) -> int:
    """The host interrupted the entry (its instruction budget ran out, or
    kvm_vcpu_exit_request said so): vcpu_run looks for signals, then goes on."""
    vcpu.stat["irq_exits"] += 1            # the host interrupt that ends a time slice
    return 1


def handle_interrupt_window(vcpu) -> int:
    vcpu.stat["irq_window_exits"] += 1
    vcpu.arch.cpu.intr_window_exiting = False
    return 1                            # vcpu_run reports KVM_EXIT_IRQ_WINDOW_OPEN


__all__ = ["kvm_arch_vcpu_ioctl_run", "vcpu_run", "vcpu_enter_guest", "kvm_fast_pio", "params"]
