"""The VMX vendor module (arch/x86/kvm/vmx/vmx.c, "kvm_intel").

``vmx_init`` registers ``vmx_x86_ops`` with ``kvm_init`` (seed step 1).  A vCPU's
"VMCS" is its software processor (``kvmpy.hw.cpu.Processor`` with the VMX exit
format); ``vmx_vcpu_run`` enters it and ``vmx_handle_exit`` dispatches the basic
exit reason through ``kvm_vmx_exit_handlers``, as the kernel does.
"""

from __future__ import annotations

from ...hw import vmx as hwvmx
from ...hw.cpu import Processor
from ..trace import event, traced
from . import emulate, mmu, params, run


class KvmX86Ops:
    """struct kvm_x86_ops: what the arch layer asks of a vendor module."""

    def __init__(self, name, vendor_id, exit_format, handlers, decode_exit):
        self.name = name
        self.vendor_id = vendor_id
        self.exit_format = exit_format
        self.handlers = handlers
        self.decode_exit = decode_exit

    def hardware_setup(self) -> None:
        """Nothing to probe: the software processor always has the features."""

    def vcpu_create(self, vcpu) -> None:
        vcpu.arch.cpu = Processor(self.exit_format())

    def vcpu_reset(self, vcpu, init_event: bool) -> None:
        vcpu.arch.cpu.flush_code()

    def skip_emulated_instruction(self, vcpu) -> None:
        """RIP += the exit's instruction length (VM_EXIT_INSTRUCTION_LEN / next_rip)."""
        run.kvm_skip_emulated_instruction(vcpu, vcpu.arch.last_exit.instruction_len)

    def vcpu_run(self, vcpu):
        return vmx_vcpu_run(vcpu)

    def handle_exit(self, vcpu, x) -> int:
        return vmx_handle_exit(vcpu, x)


@traced
def vmx_vcpu_run(vcpu):
    """VM entry: run the processor until it reports a VM exit."""
    ops = vcpu_ops(vcpu)
    cpu = vcpu.arch.cpu
    x = cpu.run(params.max_insns)
    event("kvm_exit", vcpu=vcpu.vcpu_id, reason=ops.decode_exit(x), rip=cpu.rip)
    return x


@traced
def vmx_handle_exit(vcpu, x) -> int:
    """Dispatch the exit through the vendor's handler table (kvm_vmx_exit_handlers)."""
    ops = vcpu_ops(vcpu)
    vcpu.arch.last_exit = x
    key = ops.decode_exit(x)
    handler = ops.handlers.get(key)
    if handler is None:
        return run.kvm_internal_error(vcpu, 3, key if isinstance(key, int) else 0)
    return handler(vcpu, x)


def vcpu_ops(vcpu) -> KvmX86Ops:
    from . import x86
    return x86.kvm_x86_ops()


# ------------------------------------------------------------------ exit handlers
def handle_io(vcpu, x) -> int:
    q = x.qualification
    if q & 16:                                       # string instruction
        return emulate.kvm_emulate_instruction(vcpu)
    return run.kvm_fast_pio(vcpu, (q & 7) + 1, q >> 16, bool(q & 8), x.instruction_len)


def handle_ept_violation(vcpu, x) -> int:
    write, fetch = bool(x.qualification & 2), bool(x.qualification & 4)
    r = vcpu.arch.mmu.page_fault(vcpu, x.guest_physical, write, fetch)
    if r == mmu.RET_PF_EMULATE:
        return emulate.kvm_emulate_instruction(vcpu)
    return 1


def handle_exception_nmi(vcpu, x) -> int:
    vector = x.intr_info & 0xFF
    if vector == 14 and not vcpu.arch.mmu.tdp:
        r = vcpu.arch.mmu.page_fault(vcpu, x.qualification, x.intr_error_code)
        if r == mmu.RET_PF_EMULATE:
            return emulate.kvm_emulate_instruction(vcpu)
        return 1
    ec = x.intr_error_code if x.intr_info & hwvmx.INTR_INFO_DELIVER_CODE else None
    run.kvm_queue_exception(vcpu, vector, ec, x.qualification if vector == 14 else None)
    return 1


def handle_cr(vcpu, x) -> int:
    q = x.qualification
    cr, reg = q & 15, (q >> 8) & 15
    return run.kvm_set_cr(vcpu, cr, vcpu.arch.cpu.regs[reg], x.instruction_len)


def handle_invlpg(vcpu, x) -> int:
    mmu.kvm_mmu_invlpg(vcpu, x.qualification)
    return run.kvm_skip_emulated_instruction(vcpu, x.instruction_len)


def handle_vmcall(vcpu, x) -> int:
    """KVM hypercalls: none implemented, so -KVM_ENOSYS in RAX, as KVM answers unknown ones."""
    vcpu.stat["hypercalls"] = vcpu.stat.get("hypercalls", 0) + 1
    vcpu.arch.cpu.regs[0] = (-1000) & 0xFFFFFFFFFFFFFFFF
    return run.kvm_skip_emulated_instruction(vcpu, x.instruction_len)


def handle_xsetbv(vcpu, x) -> int:
    cpu = vcpu.arch.cpu
    value = (cpu.regs[0] & 0xFFFFFFFF) | ((cpu.regs[2] & 0xFFFFFFFF) << 32)
    if cpu.regs[1] & 0xFFFFFFFF or not value & 1 or value & ~7 or (value & 4 and not value & 2):
        run.kvm_queue_exception(vcpu, 13, 0)
        return 1
    cpu.xcr0 = value
    return run.kvm_skip_emulated_instruction(vcpu, x.instruction_len)


def handle_invalid_state(vcpu, x) -> int:
    """The processor hit an internal error: report it like KVM's emulation failure."""
    return run.kvm_internal_error(vcpu, emulate.EMULATION_FAILED, vcpu.arch.cpu.rip)


kvm_vmx_exit_handlers = {
    hwvmx.EXIT_REASON_EXCEPTION_NMI: handle_exception_nmi,
    hwvmx.EXIT_REASON_TRIPLE_FAULT: lambda v, x: run.kvm_handle_triple_fault(v),
    hwvmx.EXIT_REASON_INTERRUPT_WINDOW: lambda v, x: run.handle_interrupt_window(v),
    hwvmx.EXIT_REASON_CPUID: lambda v, x: run.kvm_emulate_cpuid(v, x.instruction_len),
    hwvmx.EXIT_REASON_HLT: lambda v, x: run.kvm_emulate_halt(v, x.instruction_len),
    hwvmx.EXIT_REASON_INVLPG: handle_invlpg,
    hwvmx.EXIT_REASON_VMCALL: handle_vmcall,
    hwvmx.EXIT_REASON_CR_ACCESS: handle_cr,
    hwvmx.EXIT_REASON_IO_INSTRUCTION: handle_io,
    hwvmx.EXIT_REASON_MSR_READ: lambda v, x: run.kvm_emulate_rdmsr(v, x.instruction_len),
    hwvmx.EXIT_REASON_MSR_WRITE: lambda v, x: run.kvm_emulate_wrmsr(v, x.instruction_len),
    hwvmx.EXIT_REASON_INVALID_STATE: handle_invalid_state,
    hwvmx.EXIT_REASON_EPT_VIOLATION: handle_ept_violation,
    hwvmx.EXIT_REASON_PREEMPTION_TIMER: lambda v, x: run.handle_preemption(v),
    hwvmx.EXIT_REASON_XSETBV: handle_xsetbv,
}

VMX_OPS = vmx_x86_ops = KvmX86Ops("vmx", "GenuineIntel", hwvmx.VmxExitFormat, kvm_vmx_exit_handlers,
                                  lambda x: x.reason)


@traced
def vmx_init() -> None:
    """module_init(vmx_init): register the VMX ops with generic KVM."""
    from .. import kvm_main
    kvm_main.kvm_init(vmx_x86_ops)
