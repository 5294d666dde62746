"""VMX's face of the processor: VM exits as basic exit reasons and qualifications.

Intel SDM vol. 3 appendix C (exit reasons) and section 28.2.1 (exit
qualifications).  ``VmxExit`` is what the VMCS exit fields would hold.
"""

from kvmpy.hw.system import tasks
from kvmpy.hw.events import HW_EXC, PRIV_SW_EXC, SW_EXC, SW_INT

EXIT_REASON_EXCEPTION_NMI = 0
EXIT_REASON_EXTERNAL_INTERRUPT = 1
EXIT_REASON_TRIPLE_FAULT = 2
EXIT_REASON_INTERRUPT_WINDOW = 7
EXIT_REASON_NMI_WINDOW = 8
EXIT_REASON_TASK_SWITCH = 9
EXIT_REASON_CPUID = 10
EXIT_REASON_HLT = 12
EXIT_REASON_INVLPG = 14
EXIT_REASON_VMCALL = 18
EXIT_REASON_CR_ACCESS = 28
EXIT_REASON_DR_ACCESS = 29
EXIT_REASON_IO_INSTRUCTION = 30
EXIT_REASON_MSR_READ = 31
EXIT_REASON_MSR_WRITE = 32
EXIT_REASON_INVALID_STATE = 33
VMX_EXIT_REASONS_FAILED_VMENTRY = 1 << 31   # set with the basic reason when VM entry fails
EXIT_REASON_EPT_VIOLATION = 48
EXIT_REASON_PAUSE_INSTRUCTION = 40
EXIT_REASON_PREEMPTION_TIMER = 52
EXIT_REASON_XSETBV = 55

DR_ACCESS_FROM = 1 << 4                     # DR_ACCESS qualification: MOV from DR
INTR_INFO_VALID = 1 << 31
INTR_INFO_DELIVER_CODE = 1 << 11
VECTORING_INFO_TYPE_SHIFT = 8

# TASK_SWITCH exit qualification (SDM table 28-2): bits 15:0 the TSS selector, bits 31:30 the source
TASK_SWITCH_SOURCE_SHIFT = 30
TASK_SWITCH_SOURCES = ("call", "iret", "jmp", "gate")       # 0 CALL, 1 IRET, 2 JMP, 3 task gate in the IDT

_REASONS = {
    "hlt": EXIT_REASON_HLT, "cpuid": EXIT_REASON_CPUID, "rdmsr": EXIT_REASON_MSR_READ,
    "wrmsr": EXIT_REASON_MSR_WRITE, "cr": EXIT_REASON_CR_ACCESS, "dr": EXIT_REASON_DR_ACCESS,
    "invlpg": EXIT_REASON_INVLPG,
    "exception": EXIT_REASON_EXCEPTION_NMI, "ept_violation": EXIT_REASON_EPT_VIOLATION,
    "triple_fault": EXIT_REASON_TRIPLE_FAULT, "preemption": EXIT_REASON_PREEMPTION_TIMER,
    "interrupt_window": EXIT_REASON_INTERRUPT_WINDOW, "nmi_window": EXIT_REASON_NMI_WINDOW, "vmcall": EXIT_REASON_VMCALL,
    "xsetbv": EXIT_REASON_XSETBV, "pause": EXIT_REASON_PAUSE_INSTRUCTION, "io": EXIT_REASON_IO_INSTRUCTION, "internal": EXIT_REASON_INVALID_STATE,
    "task_switch": EXIT_REASON_TASK_SWITCH,
    # SDM 27.8: a guest-state check failed, the entry did not happen (0x80000021)
    "invalid_state": VMX_EXIT_REASONS_FAILED_VMENTRY | EXIT_REASON_INVALID_STATE,
}


class VmxExit:
    """The exit-information fields of the VMCS."""

    __slots__ = ("reason", "qualification", "instruction_len", "guest_linear", "guest_physical",
                 "intr_info", "intr_error_code", "idt_vectoring_info", "idt_vectoring_error_code", "detail")

    def __init__(self, reason, qualification=0, instruction_len=0, guest_linear=0, guest_physical=0,
                 intr_info=0, intr_error_code=0, idt_vectoring_info=0, idt_vectoring_error_code=0, detail=None):
        self.reason = reason
        self.qualification = qualification
        self.instruction_len = instruction_len
        self.guest_linear = guest_linear
        self.guest_physical = guest_physical
        self.intr_info = intr_info
        self.intr_error_code = intr_error_code
        self.idt_vectoring_info = idt_vectoring_info
        self.idt_vectoring_error_code = idt_vectoring_error_code
        self.detail = detail

    def __repr__(self):
        return "VmxExit(reason=%d, qual=%#x, len=%d)" % (self.reason, self.qualification, self.instruction_len)


class VmxExitFormat:
    """Encodes the processor's intercepts as VMX exits."""

    vendor = "vmx"          # which guest-state checks VM entry makes (kvmpy.hw.virt.entry)
    #: MOV-DR exiting takes precedence over DR7.GD's #DB (the hypervisor emulates the #DB)
    dr_exit_before_general_detect = True

    def format(self, cpu, e):
        i = e.info
        k = e.kind
        x = VmxExit(_REASONS[k], instruction_len=i.get("insn_len", 0), detail=i)
        if k == "io":
            x.qualification = ((i["size"] - 1) | (8 if i["input"] else 0) | (16 if i["string"] else 0) |
                               (32 if i["rep"] else 0) | (i["port"] << 16))
        elif k == "cr":
            x.qualification = i["cr"] | ((0 if i["write"] else 1) << 4) | (i["reg"] << 8)
        elif k == "dr":     # SDM table 28-4: the DR, the direction (1: MOV from DR), the GPR
            x.qualification = i["dr"] | (0 if i["write"] else DR_ACCESS_FROM) | i["reg"] << 8
        elif k == "invlpg":
            x.qualification = i["addr"]
        elif k == "ept_violation":
            x.qualification = ((2 if i["write"] else 1) if not i["fetch"] else 4) | (8 if i["present"] else 0)
            x.guest_physical = i["gpa"]
            if i["gla"] is not None:
                x.guest_linear = i["gla"]
                x.qualification |= 0x180
        elif k == "exception":
            kind = i.get("event_kind", HW_EXC)
            x.intr_info = INTR_INFO_VALID | kind << VECTORING_INFO_TYPE_SHIFT | i["vector"]
            if i["error_code"] is not None:
                x.intr_info |= INTR_INFO_DELIVER_CODE
                x.intr_error_code = i["error_code"]
            if i["vector"] == 14:
                x.qualification = i["cr2"] or 0
            elif i["vector"] == 1:
                x.qualification = i.get("dr6", 0)    # #DB: DR6's bits, DR6 itself left as it was
            if kind != HW_EXC:                      # INT3, INTO, INT1: the instruction's length
                x.instruction_len = (i["next_ip"] - cpu.rip) & 0xF
        elif k == "task_switch":
            x.instruction_len = tasks.exit_insn_len(cpu, i)
            x.qualification = i["selector"] | TASK_SWITCH_SOURCES.index(i["source"]) << TASK_SWITCH_SOURCE_SHIFT
        if "vectoring" in i:
            _idt_vectoring(cpu, x, i["vectoring"])
        return x


def _idt_vectoring(cpu, x, event):
    """An exit during the delivery of an event (SDM 28.2.4): the event, its error code and, for
    a software interrupt or exception, its instruction's length, so that KVM can inject it
    again (through an IDT task gate: the event the task switch delivers)."""
    kind, vector, error_code, next_ip = event
    x.idt_vectoring_info = INTR_INFO_VALID | kind << VECTORING_INFO_TYPE_SHIFT | vector
    if error_code is not None:
        x.idt_vectoring_info |= INTR_INFO_DELIVER_CODE
        x.idt_vectoring_error_code = error_code
    if kind in (SW_INT, PRIV_SW_EXC, SW_EXC) and not x.instruction_len:
        x.instruction_len = (next_ip - cpu.rip) & 0xF
