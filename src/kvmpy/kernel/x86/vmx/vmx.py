"""The VMX vendor module (arch/x86/kvm/vmx/vmx.c, "kvm_intel").

``vmx_init`` registers ``vmx_x86_ops`` with ``kvm_init`` (seed step 1).  A vCPU's
"VMCS" is its software processor (``kvmpy.hw.cpu.Processor`` with the VMX exit
format); ``vmx_vcpu_run`` enters it and ``vmx_handle_exit`` dispatches the basic
exit reason through ``kvm_vmx_exit_handlers``, as the kernel does; a failed VM entry (exit
reason with bit 31 set) becomes KVM_EXIT_FAIL_ENTRY before the table is consulted.  The ops class and
the handlers' vendor-neutral halves are shared with SVM (``kernel/x86/vendor.py``).
"""

from __future__ import annotations

from kvmpy.hw.virt import vmx as hwvmx
from kvmpy.hw.events import PRIV_SW_EXC, SW_EXC, SW_INT
from kvmpy.hw.x86defs import CR4_DE, DR6_ACTIVE_LOW, DR6_BD, DR7_GD
from kvmpy.uapi import kvm as uapi
from kvmpy.kernel import kvm_main
from kvmpy.kernel.trace import event, traced
from kvmpy.kernel.x86 import emulate, run, vendor, x86
from kvmpy.kernel.x86.mmu import mmu



# ------------------------------------------------------------------ exit handlers
def handle_io(vcpu, x) -> int:
    q = x.qualification
    if q & 16:                                       # string instruction
        return emulate.kvm_emulate_instruction(vcpu)
    return run.kvm_fast_pio(vcpu, (q & 7) + 1, q >> 16, bool(q & 8), x.instruction_len)


def handle_ept_violation(vcpu, x) -> int:
    write, fetch = bool(x.qualification & 2), bool(x.qualification & 4)
    return vendor.kvm_mmu_page_fault(vcpu, x.guest_physical, write, fetch)


def handle_exception_nmi(vcpu, x) -> int:
    """An intercepted exception: #PF for the MMU; #DB and #BP of guest debugging become
    KVM_EXIT_DEBUG (#DB with the exit qualification's DR6 bits and the guest's DR7 field,
    #BP at the INT3, which user space may re-inject); anything else is the guest's own."""
    vector = x.intr_info & 0xFF
    ec = x.intr_error_code if x.intr_info & hwvmx.INTR_INFO_DELIVER_CODE else None
    if vector == uapi.PF_VECTOR:
        return vendor.kvm_handle_page_fault(vcpu, ec, x.qualification)
    if vector == uapi.DB_VECTOR:
        if not vcpu.guest_debug & (uapi.KVM_GUESTDBG_SINGLESTEP | uapi.KVM_GUESTDBG_USE_HW_BP):
            x86.kvm_queue_exception_p(vcpu, vector, x.qualification)
            return 1
        return x86.kvm_prepare_debug_exit(vcpu, vector, dr6=x.qualification | DR6_ACTIVE_LOW,
                                          dr7=vcpu.arch.cpu.dr[7])
    if vector == uapi.BP_VECTOR and vcpu.guest_debug & uapi.KVM_GUESTDBG_USE_SW_BP:
        return x86.kvm_prepare_debug_exit(vcpu, vector)
    x86.kvm_queue_exception(vcpu, vector, ec)
    return 1


def handle_cr(vcpu, x) -> int:
    q = x.qualification
    cr, reg = q & 15, (q >> 8) & 15
    return run.kvm_set_cr(vcpu, cr, vcpu.arch.cpu.regs[reg], x.instruction_len)


def handle_dr(vcpu, x) -> int:
    """MOV DR, intercepted while user space's breakpoints are in the debug registers
    (KVM_GUESTDBG_USE_HW_BP: the only time kvmpy sets MOV-DR exiting).  The exit came
    before the #DB of DR7.GD, so KVM reports that #DB: a KVM_EXIT_DEBUG with DR6.BD, at the
    MOV."""
    q = x.qualification
    cpu = vcpu.arch.cpu
    dr7 = cpu.dr[7]
    if dr7 & DR7_GD and not (q & 7 in (4, 5) and cpu.cr4 & CR4_DE):
        return x86.kvm_prepare_debug_exit(vcpu, uapi.DB_VECTOR, dr6=DR6_BD | DR6_ACTIVE_LOW, dr7=dr7)
    return vendor.kvm_handle_dr_access(vcpu, q & 7, not q & hwvmx.DR_ACCESS_FROM, q >> 8 & 15, x.instruction_len)


def handle_invlpg(vcpu, x) -> int:
    mmu.kvm_mmu_invlpg(vcpu, x.qualification)
    return run.kvm_skip_emulated_instruction(vcpu, x.instruction_len)


def handle_task_switch(vcpu, x) -> int:
    """TASK_SWITCH: the instruction (CALL/JMP/IRET, or INT n through a task gate) is retired
    by the switch; an event through a task gate brings its error code in the IDT-vectoring
    information."""
    q, idt = x.qualification, x.idt_vectoring_info
    source = hwvmx.TASK_SWITCH_SOURCES[q >> hwvmx.TASK_SWITCH_SOURCE_SHIFT & 3]
    idt_v = bool(idt & hwvmx.INTR_INFO_VALID)
    soft = (idt >> hwvmx.VECTORING_INFO_TYPE_SHIFT & 7) in (SW_INT, PRIV_SW_EXC, SW_EXC)
    error_code = x.idt_vectoring_error_code if idt_v and idt & hwvmx.INTR_INFO_DELIVER_CODE else None
    insn_len = x.instruction_len if source != "gate" or soft else 0
    kind = idt >> hwvmx.VECTORING_INFO_TYPE_SHIFT & 7 if idt_v else None
    return run.kvm_task_switch(vcpu, q & 0xFFFF, source, error_code, insn_len, kind)


def handle_pause(vcpu, x) -> int:
    """PAUSE-loop exiting: give way to the vCPU that holds what this one spins on."""
    kvm_main.kvm_vcpu_on_spin(vcpu)
    return run.kvm_skip_emulated_instruction(vcpu, x.instruction_len)


def handle_nmi_window(vcpu, x) -> int:
    """NMI-window exiting: NMIs are unblocked (the handler's IRET); the entry that follows
    injects the pending NMI."""
    vcpu.arch.cpu.nmi_window_exiting = False
    vcpu.stat["nmi_window_exits"] += 1
    return 1


def vmx_enable_nmi_window(vcpu) -> None:
    """A pending NMI is blocked: exit as soon as it can go in."""
    vcpu.arch.cpu.nmi_window_exiting = True


kvm_vmx_exit_handlers = {
    hwvmx.EXIT_REASON_EXCEPTION_NMI: handle_exception_nmi,
    hwvmx.EXIT_REASON_TRIPLE_FAULT: lambda v, x: run.kvm_handle_triple_fault(v),
    hwvmx.EXIT_REASON_INTERRUPT_WINDOW: lambda v, x: run.handle_interrupt_window(v),
    hwvmx.EXIT_REASON_NMI_WINDOW: handle_nmi_window,
    hwvmx.EXIT_REASON_TASK_SWITCH: handle_task_switch,
    hwvmx.EXIT_REASON_CPUID: lambda v, x: run.kvm_emulate_cpuid(v, x.instruction_len),
    hwvmx.EXIT_REASON_HLT: lambda v, x: run.kvm_emulate_halt(v, x.instruction_len),
    hwvmx.EXIT_REASON_INVLPG: handle_invlpg,
    hwvmx.EXIT_REASON_VMCALL: lambda v, x: run.kvm_emulate_hypercall(v, x.instruction_len),
    hwvmx.EXIT_REASON_CR_ACCESS: handle_cr,
    hwvmx.EXIT_REASON_DR_ACCESS: handle_dr,
    hwvmx.EXIT_REASON_IO_INSTRUCTION: handle_io,
    hwvmx.EXIT_REASON_MSR_READ: lambda v, x: run.kvm_emulate_rdmsr(v, x.instruction_len),
    hwvmx.EXIT_REASON_MSR_WRITE: lambda v, x: run.kvm_emulate_wrmsr(v, x.instruction_len),
    hwvmx.EXIT_REASON_INVALID_STATE: lambda v, x: vendor.handle_processor_error(v),
    hwvmx.EXIT_REASON_EPT_VIOLATION: handle_ept_violation,
    hwvmx.EXIT_REASON_PREEMPTION_TIMER: lambda v, x: run.handle_preemption(v),
    hwvmx.EXIT_REASON_XSETBV: lambda v, x: run.kvm_emulate_xsetbv(v, x.instruction_len),
    hwvmx.EXIT_REASON_PAUSE_INSTRUCTION: handle_pause,
}

def vmx_vcpu_create(vcpu) -> None:
    """The vCPU's "VMCS": a processor that reports exits in the VMX format."""
    vendor.kvm_create_processor(vcpu, hwvmx.VmxExitFormat(), "vmx")


@traced
def vmx_vcpu_run(vcpu):
    """VMLAUNCH/VMRESUME: run the processor until it reports a VM exit, then take back the
    event whose delivery the exit interrupted (vmx_complete_interrupts)."""
    x = vendor.kvm_run_processor(vcpu)
    event("kvm_exit", vcpu=vcpu.vcpu_id, reason=x.reason, rip=vcpu.arch.cpu.rip)
    vmx_complete_interrupts(vcpu, x)
    return x


def vmx_complete_interrupts(vcpu, x) -> None:
    """The IDT-vectoring information of exit ``x``: the event being delivered, requeued."""
    idt = x.idt_vectoring_info
    if idt & hwvmx.INTR_INFO_VALID:
        error_code = x.idt_vectoring_error_code if idt & hwvmx.INTR_INFO_DELIVER_CODE else None
        vendor.kvm_complete_interrupts(vcpu, idt >> hwvmx.VECTORING_INFO_TYPE_SHIFT & 7, idt & 0xFF, error_code)


def vmx_check_emulate_instruction(vcpu) -> int:
    """An exit during the delivery of a hardware event cannot be handled by emulating the
    instruction at RIP (see ``vendor.kvm_check_vectoring``)."""
    idt = vcpu.arch.last_exit.idt_vectoring_info
    if idt & hwvmx.INTR_INFO_VALID:
        return vendor.kvm_check_vectoring(idt >> hwvmx.VECTORING_INFO_TYPE_SHIFT & 7)
    return emulate.X86EMUL_CONTINUE


@traced
def vmx_handle_exit(vcpu, x) -> int:
    """__vmx_handle_exit: a failed VM entry (exit reason bit 31) first, then
    kvm_vmx_exit_handlers[basic exit reason]."""
    vcpu.arch.last_exit = x
    if x.reason & hwvmx.VMX_EXIT_REASONS_FAILED_VMENTRY:
        return vendor.kvm_handle_failed_vmentry(vcpu, x.reason)
    return vendor.kvm_dispatch_exit(vcpu, x.reason, kvm_vmx_exit_handlers, x)


def vmx_get_exit_info(vcpu) -> tuple:
    """The last exit's reason, qualification, IDT-vectoring information, interruption
    information and its error code (all 0 before the first exit)."""
    x = vcpu.arch.last_exit
    if x is None:
        return (0, 0, 0, 0, 0)
    return tuple(v or 0 for v in (x.reason, x.qualification, x.idt_vectoring_info, x.intr_info,
                                  x.intr_error_code))


vmx_x86_ops = vendor.KvmX86Ops("vmx", vcpu_create=vmx_vcpu_create, vcpu_run=vmx_vcpu_run,
                               handle_exit=vmx_handle_exit, get_exit_info=vmx_get_exit_info,
                               check_emulate_instruction=vmx_check_emulate_instruction,
                               enable_nmi_window=vmx_enable_nmi_window)


@traced
def vmx_init() -> None:
    """module_init(vmx_init): register the VMX ops with generic KVM."""
    kvm_main.kvm_init(vmx_x86_ops)
