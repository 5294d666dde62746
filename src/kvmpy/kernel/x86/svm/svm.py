"""The SVM vendor module (arch/x86/kvm/svm/svm.c, "kvm_amd").

``svm_init`` registers ``svm_x86_ops`` with ``kvm_init``, as ``vmx_init`` does for Intel;
a process loads one of the two, like the kernel.  A vCPU's "VMCB" is its software
processor with the SVM exit format (``kvmpy.hw.virt.svm``); ``svm_vcpu_run`` enters it and
``svm_handle_exit`` dispatches the exit code through ``svm_exit_handlers``.  Instruction
intercepts retire through ``next_rip`` (NRIPS), as ``svm_skip_emulated_instruction`` does.
"""

from __future__ import annotations

from kvmpy.hw.virt import svm as hwsvm
from kvmpy.hw.events import EXT_INTR, HAS_ERROR_CODE, HW_EXC, NMI, SW_EXC, SW_INT
from kvmpy.hw.x86defs import DR6_ACTIVE_LOW
from kvmpy.uapi import kvm as uapi
from kvmpy.kernel import kvm_main
from kvmpy.kernel.trace import event, traced
from kvmpy.kernel.x86 import emulate, run, vendor, x86
from kvmpy.kernel.x86.mmu import mmu


def svm_insn_len(vcpu, x) -> int:
    """Length of the intercepted instruction: next_rip - rip (RIP is unchanged since the exit)."""
    return (x.next_rip - vcpu.arch.cpu.rip) & 0xFFFFFFFFFFFFFFFF


# ------------------------------------------------------------------ exit handlers
def io_interception(vcpu, x) -> int:
    io_info = x.exit_info_1
    if io_info & hwsvm.SVM_IOIO_STR_MASK:
        return emulate.kvm_emulate_instruction(vcpu)
    size = (io_info & hwsvm.SVM_IOIO_SIZE_MASK) >> hwsvm.SVM_IOIO_SIZE_SHIFT
    port = io_info >> hwsvm.SVM_IOIO_PORT_SHIFT
    is_in = bool(io_info & hwsvm.SVM_IOIO_TYPE_MASK)
    return run.kvm_fast_pio(vcpu, size, port, is_in, svm_insn_len(vcpu, x))   # exit_info_2 == next_rip


def npf_interception(vcpu, x) -> int:
    error_code = x.exit_info_1
    return vendor.kvm_mmu_page_fault(vcpu, x.exit_info_2, bool(error_code & hwsvm.PFERR_WRITE),
                                     bool(error_code & hwsvm.PFERR_FETCH))


def pf_interception(vcpu, x) -> int:
    return vendor.kvm_handle_page_fault(vcpu, x.exit_info_1, x.exit_info_2)


def exception_interception(vcpu, x) -> int:
    """Any other intercepted exception: the guest's own, reflected back into it."""
    vector = x.exit_code - hwsvm.SVM_EXIT_EXCP_BASE
    x86.kvm_queue_exception(vcpu, vector, x.exit_info_1 if vector in HAS_ERROR_CODE else None)
    return 1


def db_interception(vcpu, x) -> int:
    """#DB, intercepted while user space single-steps or has hardware breakpoints: a
    KVM_EXIT_DEBUG with the save area's DR6 and DR7 (else the guest's own #DB)."""
    if not vcpu.guest_debug & (uapi.KVM_GUESTDBG_SINGLESTEP | uapi.KVM_GUESTDBG_USE_HW_BP):
        x86.kvm_queue_exception_p(vcpu, uapi.DB_VECTOR, x.dr6 ^ DR6_ACTIVE_LOW)
        return 1
    return x86.kvm_prepare_debug_exit(vcpu, uapi.DB_VECTOR, dr6=x.dr6, dr7=vcpu.arch.cpu.dr[7])


def bp_interception(vcpu, x) -> int:
    """#BP (INT3), intercepted with KVM_GUESTDBG_USE_SW_BP: KVM_EXIT_DEBUG at the INT3."""
    return x86.kvm_prepare_debug_exit(vcpu, uapi.BP_VECTOR)


def cr_interception(vcpu, x) -> int:
    cr = x.exit_code - hwsvm.SVM_EXIT_WRITE_CR0
    reg = x.exit_info_1 & hwsvm.SVM_EXITINFO_REG_MASK
    return run.kvm_set_cr(vcpu, cr, vcpu.arch.cpu.regs[reg], svm_insn_len(vcpu, x))


def dr_interception(vcpu, x) -> int:
    """MOV DR, intercepted while user space's breakpoints are in the debug registers."""
    dr = x.exit_code - hwsvm.SVM_EXIT_READ_DR0
    return vendor.kvm_handle_dr_access(vcpu, dr & 15, dr >= 16, x.exit_info_1 & hwsvm.SVM_EXITINFO_REG_MASK,
                                       svm_insn_len(vcpu, x))


def invlpg_interception(vcpu, x) -> int:
    mmu.kvm_mmu_invlpg(vcpu, x.exit_info_1)
    return run.kvm_skip_emulated_instruction(vcpu, svm_insn_len(vcpu, x))


def msr_interception(vcpu, x) -> int:
    emulate_msr = run.kvm_emulate_wrmsr if x.exit_info_1 else run.kvm_emulate_rdmsr
    return emulate_msr(vcpu, svm_insn_len(vcpu, x))


def cpuid_interception(vcpu, x) -> int:
    return run.kvm_emulate_cpuid(vcpu, svm_insn_len(vcpu, x))


def halt_interception(vcpu, x) -> int:
    return run.kvm_emulate_halt(vcpu, svm_insn_len(vcpu, x))


def vmmcall_interception(vcpu, x) -> int:
    return run.kvm_emulate_hypercall(vcpu, svm_insn_len(vcpu, x))


def xsetbv_interception(vcpu, x) -> int:
    return run.kvm_emulate_xsetbv(vcpu, svm_insn_len(vcpu, x))


def task_switch_interception(vcpu, x) -> int:
    """TASK_SWITCH: IRET and JMP are flagged in exit_info_2, a task gate in the IDT by a valid
    EXITINTINFO, anything else is a CALL.  Only a software interrupt (INT n, INT3, INTO)
    through a gate is an instruction to retire."""
    info2, int_info = x.exit_info_2, x.exit_int_info
    int_type, int_vec = int_info & hwsvm.SVM_EXITINTINFO_TYPE_MASK, int_info & hwsvm.SVM_EXITINTINFO_VEC_MASK
    if info2 >> hwsvm.SVM_EXITINFOSHIFT_TS_REASON_IRET & 1:
        source = "iret"
    elif info2 >> hwsvm.SVM_EXITINFOSHIFT_TS_REASON_JMP & 1:
        source = "jmp"
    elif int_info & hwsvm.SVM_EXITINTINFO_VALID:
        source = "gate"
    else:
        source = "call"
    error_code = info2 & 0xFFFFFFFF if info2 >> hwsvm.SVM_EXITINFOSHIFT_TS_HAS_ERROR_CODE & 1 else None
    soft = int_type == hwsvm.SVM_EXITINTINFO_TYPE_SOFT or (int_type == hwsvm.SVM_EXITINTINFO_TYPE_EXEPT and
                                                           int_vec in (3, 4))
    insn_len = svm_insn_len(vcpu, x) if source != "gate" or soft else 0
    kind = svm_event_kind(int_info) if int_info & hwsvm.SVM_EXITINTINFO_VALID else None
    return run.kvm_task_switch(vcpu, x.exit_info_1 & 0xFFFF, source, error_code, insn_len, kind)


def shutdown_interception(vcpu, x) -> int:
    """SHUTDOWN (a triple fault in the guest): KVM_EXIT_SHUTDOWN."""
    return run.kvm_handle_triple_fault(vcpu)


def interrupt_window_interception(vcpu, x) -> int:
    """VINTR: the guest can take an interrupt now."""
    return run.handle_interrupt_window(vcpu)


def intr_interception(vcpu, x) -> int:
    """A host interrupt ended the run (kvmpy: the entry's instruction budget)."""
    return run.handle_preemption(vcpu)


def invalid_state_interception(vcpu, x) -> int:
    """SVM_EXIT_ERR from kvmpy's processor failing internally (a failed VMRUN is turned into
    KVM_EXIT_FAIL_ENTRY before the table, see ``SvmExit.failed_vmrun``)."""
    return vendor.handle_processor_error(vcpu)


def pause_interception(vcpu, x) -> int:
    """PAUSE filtering: give way to the vCPU that holds what this one spins on."""
    kvm_main.kvm_vcpu_on_spin(vcpu)
    return run.kvm_skip_emulated_instruction(vcpu, svm_insn_len(vcpu, x))


svm_exit_handlers = {
    **{hwsvm.SVM_EXIT_WRITE_CR0 + cr: cr_interception for cr in (0, 3, 4, 8)},
    **{hwsvm.SVM_EXIT_EXCP_BASE + vector: exception_interception for vector in range(32)},
    **{hwsvm.SVM_EXIT_READ_DR0 + n: dr_interception for n in range(32)},      # reads, then writes
    hwsvm.SVM_EXIT_EXCP_BASE + uapi.PF_VECTOR: pf_interception,
    hwsvm.SVM_EXIT_EXCP_BASE + uapi.DB_VECTOR: db_interception,
    hwsvm.SVM_EXIT_EXCP_BASE + uapi.BP_VECTOR: bp_interception,
    hwsvm.SVM_EXIT_INTR: intr_interception,
    hwsvm.SVM_EXIT_PAUSE: pause_interception,
    hwsvm.SVM_EXIT_VINTR: interrupt_window_interception,
    hwsvm.SVM_EXIT_CPUID: cpuid_interception,
    hwsvm.SVM_EXIT_HLT: halt_interception,
    hwsvm.SVM_EXIT_INVLPG: invlpg_interception,
    hwsvm.SVM_EXIT_IOIO: io_interception,
    hwsvm.SVM_EXIT_MSR: msr_interception,
    hwsvm.SVM_EXIT_TASK_SWITCH: task_switch_interception,
    hwsvm.SVM_EXIT_SHUTDOWN: shutdown_interception,
    hwsvm.SVM_EXIT_VMMCALL: vmmcall_interception,
    hwsvm.SVM_EXIT_XSETBV: xsetbv_interception,
    hwsvm.SVM_EXIT_NPF: npf_interception,
    hwsvm.SVM_EXIT_ERR: invalid_state_interception,
}

def svm_vcpu_create(vcpu) -> None:
    """The vCPU's "VMCB": a processor that reports exits in the SVM format."""
    vendor.kvm_create_processor(vcpu, hwsvm.SvmExitFormat(), "svm")


@traced
def svm_vcpu_run(vcpu):
    """VMRUN: run the processor until it reports a #VMEXIT, then take back the event whose
    delivery the exit interrupted (svm_complete_interrupts)."""
    cpu = vcpu.arch.cpu
    injected = cpu.pending_event                    # the entry's EVENTINJ
    vnmi = cpu.vnmi_pending
    x = vendor.kvm_run_processor(vcpu)
    event("kvm_exit", vcpu=vcpu.vcpu_id, reason=x.exit_code, rip=cpu.rip)
    if vnmi and not cpu.vnmi_pending:
        vcpu.stat["nmi_injections"] += 1            # the processor took the virtual NMI
    svm_complete_interrupts(vcpu, x, injected)
    return x


def svm_enable_nmi_window(vcpu) -> None:
    """A pending NMI is blocked: with vNMI, hand it to the processor (V_NMI_PENDING), which
    delivers it itself as soon as NMIs are unblocked (the IRET of the handler running), with
    no exit; it holds one at a time.  It counts as injected when the processor takes it."""
    arch = vcpu.arch
    if not arch.cpu.vnmi_pending:
        arch.cpu.vnmi_pending = True
        arch.nmi_pending -= 1


def svm_event_kind(int_info: int) -> int:
    """The event kind of an EXITINTINFO: INT3 and INTO are software exceptions, though SVM
    types them as exceptions (kvm_exception_is_soft)."""
    int_type, vector = int_info & hwsvm.SVM_EXITINTINFO_TYPE_MASK, int_info & hwsvm.SVM_EXITINTINFO_VEC_MASK
    if int_type == hwsvm.SVM_EXITINTINFO_TYPE_EXEPT:
        return SW_EXC if vector in (uapi.BP_VECTOR, uapi.OF_VECTOR) else HW_EXC
    return {hwsvm.SVM_EXITINTINFO_TYPE_INTR: EXT_INTR, hwsvm.SVM_EXITINTINFO_TYPE_NMI: NMI,
            hwsvm.SVM_EXITINTINFO_TYPE_SOFT: SW_INT}.get(int_type, SW_INT)


def svm_complete_interrupts(vcpu, x, injected) -> None:
    """EXITINTINFO of #VMEXIT ``x``: the event being delivered, requeued.  A #BP or #OF that
    KVM itself injected at the entry (``injected``: KVM_SET_GUEST_DEBUG's INJECT_BP, a
    queued exception) has no instruction to raise it again: it is requeued as an exception,
    as Linux's soft_int_injected bookkeeping does."""
    info = x.exit_int_info
    if info & hwsvm.SVM_EXITINTINFO_VALID:
        error_code = x.exit_int_info_err if info & hwsvm.SVM_EXITINTINFO_VALID_ERR else None
        kind, vector = svm_event_kind(info), info & hwsvm.SVM_EXITINTINFO_VEC_MASK
        if kind == SW_EXC and injected is not None and injected[:2] == (HW_EXC, vector):
            kind = HW_EXC
        vendor.kvm_complete_interrupts(vcpu, kind, vector, error_code)


def svm_check_emulate_instruction(vcpu) -> int:
    """An exit during the delivery of a hardware event cannot be handled by emulating the
    instruction at RIP (see ``vendor.kvm_check_vectoring``)."""
    info = vcpu.arch.last_exit.exit_int_info
    if info & hwsvm.SVM_EXITINTINFO_VALID:
        return vendor.kvm_check_vectoring(svm_event_kind(info))
    return emulate.X86EMUL_CONTINUE


@traced
def svm_handle_exit(vcpu, x) -> int:
    """A failed VMRUN first (KVM_EXIT_FAIL_ENTRY), then svm_exit_handlers[exit_code]."""
    vcpu.arch.last_exit = x
    if x.failed_vmrun():
        return vendor.kvm_handle_failed_vmentry(vcpu, x.exit_code)
    return vendor.kvm_dispatch_exit(vcpu, x.exit_code, svm_exit_handlers, x)


def svm_get_exit_info(vcpu) -> tuple:
    """The last #VMEXIT's exit code, EXITINFO1, EXITINFO2, EXITINTINFO and its error code
    (all 0 before the first exit)."""
    x = vcpu.arch.last_exit
    if x is None:
        return (0, 0, 0, 0, 0)
    err = x.exit_int_info_err if x.exit_int_info & hwsvm.SVM_EXITINTINFO_VALID_ERR else 0
    return (x.exit_code, x.exit_info_1, x.exit_info_2, x.exit_int_info, err)


svm_x86_ops = vendor.KvmX86Ops("svm", vcpu_create=svm_vcpu_create, vcpu_run=svm_vcpu_run,
                               handle_exit=svm_handle_exit, get_exit_info=svm_get_exit_info,
                               check_emulate_instruction=svm_check_emulate_instruction,
                               enable_nmi_window=svm_enable_nmi_window)


@traced
def svm_init() -> None:
    """module_init(svm_init): register the SVM ops with generic KVM."""
    kvm_main.kvm_init(svm_x86_ops)
