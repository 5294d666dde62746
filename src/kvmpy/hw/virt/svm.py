"""SVM's face of the processor: VM exits as VMCB exit codes with exit_info_1/2 and next_rip.

AMD64 APM vol. 2, section 15.7 (intercepts and the information they save), 15.10.2 (IOIO),
15.25.6 (nested page faults), appendix C (exit codes; also Linux's
arch/x86/include/uapi/asm/svm.h).  ``SvmExit`` is what the VMCB control area holds after
#VMEXIT; the processor has NRIPS and decode assists, so ``next_rip`` is saved for
instruction intercepts and MOV-to-CR / INVLPG exits carry their operand.
"""

from kvmpy.hw.system import tasks
from kvmpy.hw.events import EXT_INTR, HW_EXC, NMI, PRIV_SW_EXC, SW_EXC, SW_INT
from kvmpy.hw.x86defs import DR6_ACTIVE_LOW

SVM_EXIT_WRITE_CR0 = 0x010          # + n for CRn
SVM_EXIT_READ_DR0 = 0x020           # + n for DRn
SVM_EXIT_WRITE_DR0 = 0x030          # + n for DRn
SVM_EXIT_EXCP_BASE = 0x040          # + vector
SVM_EXIT_INTR = 0x060
SVM_EXIT_VINTR = 0x064
SVM_EXIT_CPUID = 0x072
SVM_EXIT_PAUSE = 0x077
SVM_EXIT_HLT = 0x078
SVM_EXIT_INVLPG = 0x079
SVM_EXIT_IOIO = 0x07B
SVM_EXIT_MSR = 0x07C
SVM_EXIT_TASK_SWITCH = 0x07D
SVM_EXIT_SHUTDOWN = 0x07F
SVM_EXIT_VMMCALL = 0x081
SVM_EXIT_XSETBV = 0x08D
SVM_EXIT_NPF = 0x400
SVM_EXIT_ERR = -1

# IOIO exit_info_1 (APM 15.10.2): bit 0 IN, bit 2 string, bit 3 REP, bits 4-6 operand size
# one-hot (so (info & SIZE_MASK) >> 4 is the size in bytes), bits 31:16 port.  The
# address-size (7-9) and segment (10-12) fields are left 0: KVM emulates string I/O from
# the instruction bytes and never reads them.
SVM_IOIO_TYPE_MASK = 1
SVM_IOIO_STR_MASK = 1 << 2
SVM_IOIO_REP_MASK = 1 << 3
SVM_IOIO_SIZE_SHIFT = 4
SVM_IOIO_SIZE_MASK = 7 << SVM_IOIO_SIZE_SHIFT
SVM_IOIO_PORT_SHIFT = 16

# MOV-to-CR exit_info_1 with decode assists: bit 63 valid, bits 3:0 the source GPR.
SVM_EXITINFO_CR_VALID = 1 << 63
SVM_EXITINFO_REG_MASK = 0x0F

# NPF exit_info_1: a #PF-style error code plus where in the walk the fault happened.
PFERR_PRESENT, PFERR_WRITE, PFERR_USER, PFERR_FETCH = 1, 2, 4, 16
PFERR_GUEST_FINAL = 1 << 32         # translating the final guest-physical address
PFERR_GUEST_PAGE = 1 << 33          # reading/writing a guest page-table entry

# TASK_SWITCH (APM 15.14.1): exit_info_1 the TSS selector; exit_info_2 bit 36 IRET, bit 38 JMP,
# bit 44 an error code in bits 31:0.  A task gate in the IDT shows as a valid EXITINTINFO.
SVM_EXITINFOSHIFT_TS_REASON_IRET = 36
SVM_EXITINFOSHIFT_TS_REASON_JMP = 38
SVM_EXITINFOSHIFT_TS_HAS_ERROR_CODE = 44

# EXITINTINFO (APM 15.7.2): the event being delivered when the exit happened
SVM_EXITINTINFO_VEC_MASK = 0xFF
SVM_EXITINTINFO_TYPE_MASK = 7 << 8
SVM_EXITINTINFO_TYPE_INTR, SVM_EXITINTINFO_TYPE_NMI = 0 << 8, 2 << 8
SVM_EXITINTINFO_TYPE_EXEPT, SVM_EXITINTINFO_TYPE_SOFT = 3 << 8, 4 << 8
SVM_EXITINTINFO_VALID_ERR = 1 << 11
SVM_EXITINTINFO_VALID = 1 << 31
# the processor's event kinds are VMX interruption types; SVM folds INT3/INTO/ICEBP into exceptions
_INT_TYPES = {EXT_INTR: SVM_EXITINTINFO_TYPE_INTR, NMI: SVM_EXITINTINFO_TYPE_NMI,
              HW_EXC: SVM_EXITINTINFO_TYPE_EXEPT, SW_INT: SVM_EXITINTINFO_TYPE_SOFT,
              PRIV_SW_EXC: SVM_EXITINTINFO_TYPE_EXEPT, SW_EXC: SVM_EXITINTINFO_TYPE_EXEPT}

_U64 = (1 << 64) - 1


class SvmExit:
    """The exit fields of the VMCB control area."""

    __slots__ = ("exit_code", "exit_info_1", "exit_info_2", "exit_int_info", "exit_int_info_err", "next_rip",
                 "dr6", "detail")

    def __init__(self, exit_code, exit_info_1=0, exit_info_2=0, next_rip=0, detail=None):
        self.exit_code = exit_code
        self.exit_info_1 = exit_info_1
        self.exit_info_2 = exit_info_2
        self.exit_int_info = 0
        self.exit_int_info_err = 0
        self.next_rip = next_rip
        # the save area's DR6 after a #DB intercept: the processor writes the exception's bits
        # into it; KVM runs a guest it debugs with DR6 at its reset value, so it reads them here
        self.dr6 = DR6_ACTIVE_LOW
        self.detail = detail            # the intercept's details (not a VMCB field), as VmxExit's

    def failed_vmrun(self) -> bool:
        """SVM_EXIT_ERR because VMRUN's consistency checks failed, rather than because
        kvmpy's processor failed internally (the other source of SVM_EXIT_ERR)."""
        return self.exit_code == SVM_EXIT_ERR and "reason" in (self.detail or {})

    def __repr__(self):
        return "SvmExit(code=%#x, info1=%#x, info2=%#x, next_rip=%#x)" % (
            self.exit_code, self.exit_info_1, self.exit_info_2, self.next_rip)


class SvmExitFormat:
    """Encodes the processor's intercepts as #VMEXITs."""

    vendor = "svm"          # which guest-state checks VMRUN makes (kvmpy.hw.virt.entry)
    #: DR7.GD's #DB comes before the DR read/write intercepts (KVM's dr_interception has no
    #: general-detect case: the #DB arrives as an exception intercept, DR6.BD in the VMCB)
    dr_exit_before_general_detect = False

    def format(self, cpu, e):
        """The #VMEXIT for intercept ``e``; a kind SVM has no code for is SVM_EXIT_ERR
        (reported as an internal error, never a crash of KVM_RUN)."""
        i = e.info
        x = SvmExit(_EXIT_CODES.get(e.kind, SVM_EXIT_ERR), detail=i)
        if e.kind == "task_switch":
            i["insn_len"] = tasks.exit_insn_len(cpu, i)
        if i.get("insn_len"):
            x.next_rip = (cpu.rip + i["insn_len"]) & _U64
        encode = getattr(self, "_" + e.kind, None)
        if encode is not None:
            encode(cpu, x, i)
        if "vectoring" in i:
            self._exit_int_info(x, i["vectoring"])
        return x

    @staticmethod
    def _exit_int_info(x, event):
        """An exit during the delivery of an event (APM 15.7.2): the event and its error code in
        EXITINTINFO, for KVM to inject again (through an IDT task gate: the event the task
        switch delivers)."""
        kind, vector, error_code, _ = event
        x.exit_int_info = SVM_EXITINTINFO_VALID | _INT_TYPES[kind] | vector
        if error_code is not None:
            x.exit_int_info |= SVM_EXITINTINFO_VALID_ERR
            x.exit_int_info_err = error_code

    @staticmethod
    def _io(cpu, x, i):
        x.exit_info_1 = ((i["port"] << SVM_IOIO_PORT_SHIFT) | (i["size"] << SVM_IOIO_SIZE_SHIFT) |
                         (SVM_IOIO_REP_MASK if i["rep"] else 0) | (SVM_IOIO_STR_MASK if i["string"] else 0) |
                         (SVM_IOIO_TYPE_MASK if i["input"] else 0))
        x.exit_info_2 = x.next_rip

    @staticmethod
    def _cr(cpu, x, i):
        x.exit_code = (SVM_EXIT_WRITE_CR0 if i["write"] else 0) + i["cr"]
        x.exit_info_1 = SVM_EXITINFO_CR_VALID | i["reg"]

    @staticmethod
    def _dr(cpu, x, i):
        x.exit_code = (SVM_EXIT_WRITE_DR0 if i["write"] else SVM_EXIT_READ_DR0) + i["dr"]
        x.exit_info_1 = i["reg"]             # decode assists: the GPR

    @staticmethod
    def _invlpg(cpu, x, i):
        x.exit_info_1 = i["addr"]

    @staticmethod
    def _wrmsr(cpu, x, i):
        x.exit_info_1 = 1

    @staticmethod
    def _exception(cpu, x, i):
        x.exit_code = SVM_EXIT_EXCP_BASE + i["vector"]
        x.exit_info_1 = i["error_code"] or 0
        if i["vector"] == 14:
            x.exit_info_2 = i["cr2"] or 0
        elif i["vector"] == 1:
            x.dr6 = DR6_ACTIVE_LOW | i.get("dr6", 0)
        if i.get("event_kind", HW_EXC) != HW_EXC:       # INT3, INTO, INT1 (NRIPS)
            x.next_rip = i["next_ip"]

    @staticmethod
    def _task_switch(cpu, x, i):
        source, ec = i["source"], i["error_code"]
        x.exit_info_1 = i["selector"]
        x.exit_info_2 = ((1 << SVM_EXITINFOSHIFT_TS_REASON_IRET if source == "iret" else 0) |
                         (1 << SVM_EXITINFOSHIFT_TS_REASON_JMP if source == "jmp" else 0) |
                         (1 << SVM_EXITINFOSHIFT_TS_HAS_ERROR_CODE | ec if ec is not None else 0))

    @staticmethod
    def _ept_violation(cpu, x, i):
        final = i["gla"] is not None
        user = cpu.mode.cpl == 3 if final else True   # the CPU's own table walks are user accesses
        x.exit_info_1 = ((PFERR_PRESENT if i["present"] else 0) | (PFERR_WRITE if i["write"] else 0) |
                         (PFERR_USER if user else 0) | (PFERR_FETCH if i["fetch"] else 0) |
                         (PFERR_GUEST_FINAL if final else PFERR_GUEST_PAGE))
        x.exit_info_2 = i["gpa"]


_EXIT_CODES = {
    "io": SVM_EXIT_IOIO,
    "hlt": SVM_EXIT_HLT,
    "cpuid": SVM_EXIT_CPUID,
    "rdmsr": SVM_EXIT_MSR,
    "wrmsr": SVM_EXIT_MSR,
    "task_switch": SVM_EXIT_TASK_SWITCH,
    "invlpg": SVM_EXIT_INVLPG,
    "dr": SVM_EXIT_READ_DR0,                # the DR and direction are added by _dr
    "ept_violation": SVM_EXIT_NPF,
    "triple_fault": SVM_EXIT_SHUTDOWN,
    "preemption": SVM_EXIT_INTR,            # the entry's instruction budget: a host interrupt
    "interrupt_window": SVM_EXIT_VINTR,
    "vmcall": SVM_EXIT_VMMCALL,
    "xsetbv": SVM_EXIT_XSETBV,
    "pause": SVM_EXIT_PAUSE,
    "internal": SVM_EXIT_ERR,
    "invalid_state": SVM_EXIT_ERR,          # VMRUN's consistency checks (APM 15.5.1) failed
}
