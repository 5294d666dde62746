"""What the VMX and SVM vendor modules share: ``struct kvm_x86_ops`` and the vendor-neutral
halves of their exit handlers.

In Linux, vmx.c and svm.c each decode their own exit format (VMCS exit reason and
qualification; VMCB exit code, ``exit_info_1/2`` and ``next_rip``) and then call the same
x86.c / mmu.c functions.  kvmpy keeps that split: ``kernel/x86/vmx/vmx.py`` and
``kernel/x86/svm/svm.py`` hold the decoding, the handler tables and the vendor entry points
(``vmx_vcpu_run``, ``svm_handle_exit``...), this module the ops class and the common functions
their handlers call that cannot live lower down (``kvm_mmu_page_fault`` and
``kvm_handle_page_fault`` call the emulator, which calls the MMU; ``kvm_emulate_hypercall``,
``kvm_emulate_xsetbv``, ``kvm_task_switch``).
"""

from __future__ import annotations

from ...hw.cpu import Processor
from ...hw.events import EXT_INTR, HW_EXC, NMI, PRIV_SW_EXC, SW_EXC, SW_INT, Fault
from ...hw.x86defs import CR4_DE
from ...uapi import kvm as uapi
from ..run_token import kvm_run_token_contended
from kvmpy.kernel.x86 import cpuid, emulate, params, run, x86
from kvmpy.kernel.x86.mmu import mmu

def kvm_x86_op_nop(*args) -> None:
    """The default of an optional op the vendor module does not implement: nothing to do
    (Linux's KVM_X86_OP_OPTIONAL, a NULL static call)."""


def kvm_vcpu_reset_processor(vcpu, init_event: bool) -> None:
    """The default vcpu_reset: the processor's reset state replaces its translated code."""
    vcpu.arch.cpu.flush_code()


class KvmX86Ops:
    """struct kvm_x86_ops: every op the x86 layer calls on a vendor module, each an attribute.

    ``vcpu_create``, ``vcpu_run``, ``handle_exit``, ``get_exit_info`` and
    ``check_emulate_instruction`` are the vendor's own
    (``vmx_vcpu_run``, ``svm_handle_exit``...); every other op has the explicit default below, which the vendor
    module replaces by passing its own.  The x86 layer calls them directly
    (``kvm_x86_ops().vcpu_load(vcpu)``): an op missing here is an AttributeError, not silence.
    """

    def __init__(self, name, *, vcpu_create, vcpu_run, handle_exit, get_exit_info, check_emulate_instruction,
                 hardware_setup=kvm_x86_op_nop, hardware_enable=kvm_x86_op_nop,
                 hardware_disable=kvm_x86_op_nop, vm_init=kvm_x86_op_nop, vm_destroy=kvm_x86_op_nop,
                 vcpu_precreate=kvm_x86_op_nop, vcpu_free=kvm_x86_op_nop,
                 vcpu_reset=kvm_vcpu_reset_processor, vcpu_load=kvm_x86_op_nop, vcpu_put=kvm_x86_op_nop,
                 get_msr=x86.kvm_get_msr_common, set_msr=x86.kvm_set_msr_common,
                 enable_nmi_window=kvm_x86_op_nop):
        self.name = name                        # "vmx" or "svm": the CPUID vendor and model
        self.hardware_setup = hardware_setup    # module load: probe the processor
        self.hardware_enable = hardware_enable  # first VM created: VMXON / EFER.SVME
        self.hardware_disable = hardware_disable
        self.vm_init = vm_init
        self.vm_destroy = vm_destroy
        self.vcpu_precreate = vcpu_precreate
        self.vcpu_create = vcpu_create          # builds vcpu.arch.cpu, the VMCS/VMCB
        self.vcpu_free = vcpu_free
        self.vcpu_reset = vcpu_reset
        self.vcpu_load = vcpu_load
        self.vcpu_put = vcpu_put
        self.vcpu_run = vcpu_run                # VM entry until the next VM exit
        self.handle_exit = handle_exit          # the exit through the vendor's handler table
        self.get_exit_info = get_exit_info      # the last exit's five words for user space
        self.check_emulate_instruction = check_emulate_instruction  # may the last exit's insn be emulated?
        self.get_msr = get_msr                  # vendor MSRs, then kvm_get_msr_common
        self.set_msr = set_msr
        self.enable_nmi_window = enable_nmi_window  # a pending NMI is blocked: have it go in when unblocked


def kvm_create_processor(vcpu, exit_format, vendor: str) -> None:
    """What vmx_vcpu_create and svm_vcpu_create share: the vCPU's processor, with the vendor's
    exit format and CPU model, task switches intercepted (both vendors always exit on them)
    and KVM's exit request as its host interrupt line."""
    cpu = vcpu.arch.cpu = Processor(exit_format, cpuid.kvm_cpu_model(vendor))
    cpu.intercept_task_switch = True
    cpu.rdtscp_enabled = False          # until KVM_SET_CPUID2 gives the guest RDTSCP or RDPID
    cpu.host_interrupt = lambda: run.kvm_vcpu_exit_request(vcpu)
    cpu.pause_exiting = lambda: kvm_run_token_contended(vcpu)     # PLE: only worth it then
    vcpu.arch.insn_limit = params.insn_limit


def kvm_run_processor(vcpu):
    """What vmx_vcpu_run and svm_vcpu_run share: run the processor for the entry's budget
    (the preemption timer, cut to the vCPU's instruction limit) until it reports a VM exit,
    then check the limit."""
    x = vcpu.arch.cpu.run(run.kvm_entry_budget(vcpu))
    run.kvm_insn_limit_check(vcpu)
    return x


def kvm_complete_interrupts(vcpu, kind: int, vector: int, error_code) -> None:
    """What vmx_complete_interrupts and svm_complete_interrupts share, once each has decoded
    its exit's vectoring information: put the event whose delivery the exit interrupted back
    in the queue it was injected from, to be injected again at the next entry.  A software
    interrupt or exception is not put back: RIP is still at its instruction, which raises it
    again (as SVM does for INT3 and INTO)."""
    arch = vcpu.arch
    if kind == NMI:
        arch.nmi_injected = True
        arch.cpu.nmi_masked = False
    elif kind == EXT_INTR:
        arch.interrupt = vector             # kvm_queue_interrupt
    elif kind == HW_EXC:
        x86.kvm_requeue_exception(vcpu, vector, error_code)


def kvm_check_vectoring(kind: int) -> int:
    """May an exit that interrupted the delivery of an event of ``kind`` be handled by
    emulating the instruction at RIP (an MMIO access of the delivery)?  For a software
    interrupt or exception, yes: the instruction raises the event, and emulating it delivers
    it.  For any other event, no: the instruction has nothing to do with the event."""
    if kind in (SW_INT, SW_EXC, PRIV_SW_EXC):
        return emulate.X86EMUL_CONTINUE
    return emulate.X86EMUL_UNHANDLEABLE_VECTORING


def kvm_dispatch_exit(vcpu, code: int, handlers: dict, x) -> int:
    """The end of vmx_handle_exit / svm_handle_exit: call the table's handler for ``code``;
    an exit the table does not know is KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON."""
    handler = handlers.get(code)
    if handler is None:
        return run.kvm_internal_error(vcpu, uapi.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, code)
    return handler(vcpu, x)


# ------------------------------------------------------------------ common handler halves
def kvm_handle_failed_vmentry(vcpu, hardware_entry_failure_reason: int) -> int:
    """The processor refused the guest state: KVM_EXIT_FAIL_ENTRY with the vendor's reason
    (the VMX exit reason with bit 31 set, or SVM's exit code), on host CPU 0."""
    run = vcpu.run
    run.exit_reason = uapi.KVM_EXIT_FAIL_ENTRY
    run.fail_entry.hardware_entry_failure_reason = hardware_entry_failure_reason & 0xFFFFFFFFFFFFFFFF
    run.fail_entry.cpu = 0
    return 0


def kvm_mmu_page_fault(vcpu, address, *fault) -> int:
    """mmu.c's kvm_mmu_page_fault: let the vCPU's MMU map the page, emulate if it says so.

    ``fault`` is what the MMU's handler takes after the address: (write, fetch) for TDP
    (an EPT violation / NPF at a guest-physical address), the #PF error code for shadow
    paging (a guest-linear address).  MMIO comes back as RET_PF_EMULATE, a write to a
    write-protected page-table page as RET_PF_WRITE_PROTECTED: emulated too, but if that
    fails -- or cannot start, the write being an event's delivery -- the page may be
    unprotected and the guest left to write it (x86_emulate_instruction's
    kvm_unprotect_and_retry_on_failure).
    """
    try:
        r = vcpu.arch.mmu.page_fault(vcpu, address, *fault)
    except Fault as f:              # the guest's page tables do not map it: the guest's #PF
        x86.kvm_queue_exception(vcpu, f.vector, f.error_code, f.cr2)
        return 1
    emulation_type = 0
    if r == mmu.RET_PF_WRITE_PROTECTED:
        r = mmu.RET_PF_EMULATE
        if mmu.kvm_mmu_write_protect_fault(vcpu, address):
            emulation_type = emulate.EMULTYPE_ALLOW_RETRY_PF
    if r == mmu.RET_PF_EMULATE:
        if x86.kvm_x86_ops().check_emulate_instruction(vcpu) == emulate.X86EMUL_UNHANDLEABLE_VECTORING:
            if emulate.kvm_unprotect_and_retry_on_failure(vcpu, address, emulation_type):
                return 1
            return run.kvm_prepare_event_vectoring_exit(vcpu)
        return emulate.kvm_emulate_instruction(vcpu, emulation_type, address)
    return 1


def kvm_handle_page_fault(vcpu, error_code: int | None, fault_address: int) -> int:
    """An intercepted #PF (mmu.c's kvm_handle_page_fault).

    With shadow paging #PF is always intercepted and is KVM's own fault first; with TDP it
    is only intercepted when asked for, and belongs to the guest: reflect it.
    """
    if vcpu.arch.mmu.tdp:
        x86.kvm_inject_page_fault(vcpu, error_code, fault_address)
        return 1
    return kvm_mmu_page_fault(vcpu, fault_address, error_code)


def kvm_handle_dr_access(vcpu, dr: int, write: bool, reg: int, insn_len: int) -> int:
    """What handle_dr and dr_interception share, once each has decoded its exit: the guest's
    MOV to or from DRn carried out on its own registers (kvm_get_dr / kvm_set_dr); DR4 and
    DR5 with CR4.DE are #UD (kvm_require_dr), a bad DR6/DR7 value #GP (kvm_complete_insn_gp)."""
    cpu = vcpu.arch.cpu
    if dr in (4, 5) and cpu.cr4 & CR4_DE:
        x86.kvm_queue_exception(vcpu, uapi.UD_VECTOR)
        return 1
    if write:
        value = cpu.regs[reg] & (0xFFFFFFFFFFFFFFFF if cpu.mode.code == 8 else 0xFFFFFFFF)
        if x86.kvm_set_dr(vcpu, dr, value):
            x86.kvm_inject_gp(vcpu, 0)
            return 1
    else:
        cpu.regs[reg] = x86.kvm_get_dr(vcpu, dr) & (0xFFFFFFFFFFFFFFFF if cpu.mode.code == 8 else 0xFFFFFFFF)
    return run.kvm_skip_emulated_instruction(vcpu, insn_len)


def handle_processor_error(vcpu) -> int:
    """The processor failed internally (VMX invalid state / SVM_EXIT_ERR): report it to user
    space like KVM's emulation failure, with the RIP it stopped at."""
    return run.kvm_internal_error(vcpu, uapi.KVM_INTERNAL_ERROR_EMULATION, vcpu.arch.cpu.rip)


