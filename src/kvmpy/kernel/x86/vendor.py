"""What the VMX and SVM vendor modules share: ``struct kvm_x86_ops`` and the vendor-neutral
halves of their exit handlers.

In Linux, vmx.c and svm.c each decode their own exit format (VMCS exit reason and
qualification; VMCB exit code, ``exit_info_1/2`` and ``next_rip``) and then call the same
x86.c / mmu.c functions.  kvmpy keeps that split: ``kernel/x86/vmx.py`` and
``kernel/x86/svm.py`` hold the decoding and the handler tables, this module the ops class,
the guest entry and exit dispatch both use, and the common functions their handlers call
that have no home in ``run.py`` yet (``kvm_mmu_page_fault``, ``kvm_handle_page_fault``,
``kvm_emulate_hypercall``, ``kvm_emulate_xsetbv``).
"""

from __future__ import annotations

from ...hw.cpu import Processor
from ...uapi import kvm as uapi
from ..trace import event, traced
from . import emulate, mmu, params, run, x86

KVM_ENOSYS = 1000          # include/uapi/linux/kvm_para.h: the answer to an unknown hypercall


class KvmX86Ops:
    """struct kvm_x86_ops: what the arch layer asks of a vendor module.

    ``exit_format`` is the processor's exit encoder for this vendor (the VMCS/VMCB exit
    fields), ``exit_code(x)`` the key of an exit in ``handlers``, ``insn_len(vcpu, x)`` the
    length of the intercepted instruction (VM_EXIT_INSTRUCTION_LEN, or next_rip - rip),
    ``failed_vmentry(x)`` whether the "exit" is the hardware refusing to enter the guest.
    ``vcpu_run`` and ``handle_exit`` are traced under the vendor's kernel names
    (``vmx_vcpu_run``, ``svm_handle_exit``...), which the vendor modules also export.
    """

    def __init__(self, name, vendor_id, *, exit_format, handlers, exit_code, insn_len, failed_vmentry):
        self.name = name
        self.vendor_id = vendor_id
        self.exit_format = exit_format
        self.handlers = handlers
        self.exit_code = exit_code
        self.insn_len = insn_len
        self.failed_vmentry = failed_vmentry
        self.vcpu_run = _kernel_function(name + "_vcpu_run", lambda vcpu: enter_guest(self, vcpu),
                                         "VM entry: run the processor until it reports a VM exit.")
        self.handle_exit = _kernel_function(name + "_handle_exit", lambda vcpu, x: dispatch_exit(self, vcpu, x),
                                            "Dispatch the exit through the vendor's exit-handler table.")

    def hardware_setup(self) -> None:
        """Nothing to probe: the software processor always has the features."""

    def vcpu_create(self, vcpu) -> None:
        vcpu.arch.cpu = Processor(self.exit_format())

    def vcpu_reset(self, vcpu, init_event: bool) -> None:
        vcpu.arch.cpu.flush_code()

    def skip_emulated_instruction(self, vcpu) -> int:
        """Retire the instruction of the last exit (RIP += its length, or RIP = next_rip)."""
        return run.kvm_skip_emulated_instruction(vcpu, self.insn_len(vcpu, vcpu.arch.last_exit))


def _kernel_function(name, fn, doc):
    """``fn`` named and traced as the kernel function ``name``."""
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return traced(fn)


def enter_guest(ops: KvmX86Ops, vcpu):
    """VMLAUNCH/VMRUN: run the processor until it reports a VM exit in the vendor's format."""
    cpu = vcpu.arch.cpu
    x = cpu.run(params.max_insns)
    event("kvm_exit", vcpu=vcpu.vcpu_id, reason=ops.exit_code(x), rip=cpu.rip)
    return x


def dispatch_exit(ops: KvmX86Ops, vcpu, x) -> int:
    """Call the handler the vendor's table has for this exit; an unknown one is an internal error.

    A failed entry is looked at first, before the table, as __vmx_handle_exit and
    svm_handle_exit do."""
    vcpu.arch.last_exit = x
    code = ops.exit_code(x)
    if ops.failed_vmentry(x):
        return kvm_handle_failed_vmentry(vcpu, code)
    handler = ops.handlers.get(code)
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
    paging (a guest-linear address).  MMIO and write-protected page-table pages come back
    as RET_PF_EMULATE.
    """
    if vcpu.arch.mmu.page_fault(vcpu, address, *fault) == mmu.RET_PF_EMULATE:
        return emulate.kvm_emulate_instruction(vcpu)
    return 1


def kvm_handle_page_fault(vcpu, error_code: int | None, fault_address: int) -> int:
    """An intercepted #PF (mmu.c's kvm_handle_page_fault).

    With shadow paging #PF is always intercepted and is KVM's own fault first; with TDP it
    is only intercepted when asked for, and belongs to the guest: reflect it.
    """
    if vcpu.arch.mmu.tdp:
        run.kvm_queue_exception(vcpu, 14, error_code, fault_address)
        return 1
    return kvm_mmu_page_fault(vcpu, fault_address, error_code)


def kvm_emulate_hypercall(vcpu, insn_len: int) -> int:
    """VMCALL/VMMCALL: kvmpy implements no KVM hypercall, so each gets -KVM_ENOSYS in RAX."""
    vcpu.stat["hypercalls"] = vcpu.stat.get("hypercalls", 0) + 1
    vcpu.arch.cpu.regs[0] = -KVM_ENOSYS & 0xFFFFFFFFFFFFFFFF
    return run.kvm_skip_emulated_instruction(vcpu, insn_len)


def kvm_emulate_xsetbv(vcpu, insn_len: int) -> int:
    """XSETBV (__kvm_set_xcr): XCR0 only, x87 always on, AVX only with SSE, nothing the guest's
    CPUID leaf 0xD does not offer (kvmpy's processor: x87 and SSE); else #GP(0)."""
    cpu = vcpu.arch.cpu
    value = (cpu.regs[0] & 0xFFFFFFFF) | ((cpu.regs[2] & 0xFFFFFFFF) << 32)
    if (cpu.regs[1] & 0xFFFFFFFF or not value & 1 or (value & 4 and not value & 2)
            or value & ~(x86.guest_supported_xcr0(vcpu) | 1)):
        run.kvm_queue_exception(vcpu, 13, 0)
        return 1
    cpu.xcr0 = value
    return run.kvm_skip_emulated_instruction(vcpu, insn_len)


def handle_processor_error(vcpu) -> int:
    """The processor failed internally (VMX invalid state / SVM_EXIT_ERR): report it to user
    space like KVM's emulation failure, with the RIP it stopped at."""
    return run.kvm_internal_error(vcpu, emulate.EMULATION_FAILED, vcpu.arch.cpu.rip)
