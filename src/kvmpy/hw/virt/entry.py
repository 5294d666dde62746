"""VM-entry consistency checks on the guest state: what the silicon refuses to enter.

VMLAUNCH/VMRESUME check the VMCS guest-state area (Intel SDM vol. 3 section 27.3.1, as it
applies with the "unrestricted guest" control that KVM sets with EPT) and VMRUN checks the
VMCB save area (AMD APM vol. 2 section 15.5.1).  A state that fails is not run: VMX reports
a failed VM entry (basic exit reason 33 with bit 31 set), SVM a #VMEXIT with SVM_EXIT_ERR;
KVM turns either into KVM_EXIT_FAIL_ENTRY.  KVM_SET_SREGS already refuses many bad states
(kvm_is_valid_sregs); these checks catch the rest, which only the hardware looks at.

AMD checks far less than Intel: no segment access rights, no TR/LDTR, no RIP or RFLAGS
checks.  ``check_guest_state`` picks the list by the processor's exit format
(``exit_format.vendor``).  Segments that are not present count as unusable, as in KVM's
vmx_segment_access_rights, which sets the VMCS "unusable" bit for them.
"""

from __future__ import annotations

from kvmpy.hw.x86defs import CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_DE, CR4_FSGSBASE, CR4_MCE, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE, CR4_PAE, CR4_PCE, CR4_PCIDE, CR4_PGE, CR4_PSE, CR4_PVI, CR4_SMAP, CR4_SMEP, CR4_TSD, CR4_UMIP, CR4_VME, CS, DS, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, ES, FS, GS, IF, SEG_NAMES, SS, VM, canonical

from operator import attrgetter

from kvmpy.hw import features
from kvmpy.hw.events import EXT_INTR, Intercept
from kvmpy.hw.state import Segment

# CR4 bits this processor implements (IA32_VMX_CR4_FIXED1 less VMXE; on AMD, the bits that
# are not MBZ).  Any other bit set makes the entry fail.
CR4_IMPLEMENTED = (CR4_VME | CR4_PVI | CR4_TSD | CR4_DE | CR4_PSE | CR4_PAE | CR4_MCE | CR4_PGE |
                   CR4_PCE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_UMIP | CR4_FSGSBASE | CR4_PCIDE |
                   CR4_OSXSAVE | CR4_SMEP | CR4_SMAP)
EFER_IMPLEMENTED = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
RFLAGS_RESERVED = ~0x3F7FD7 & (1 << 64) - 1     # bits 63:22, 15, 5, 3 (bit 1 must be set)

TSS16_BUSY, LDT, TSS32_BUSY = 3, 2, 11
STI_BLOCKING = 1                                # CPUState.interrupt_shadow value

# Access-rights type fields SDM 27.3.1.2 allows for CS with unrestricted guest: accessed
# code (9, 11, 13, 15) or read/write accessed data (3, real-mode style).
_CS_TYPES = frozenset((3, 9, 11, 13, 15))


def _base_canonical(base) -> bool:
    """The entry checks of segment and descriptor-table bases use the processor's linear-
    address width (57 bits on one with 5-level paging), as LGDT and WRMSR do."""
    return canonical(base, features.linear_address_bits())


def check_guest_state(cpu) -> None:
    """Raise ``Intercept("invalid_state", reason=...)`` if the silicon would refuse this entry.

    The checks of control registers, segments and descriptor-table registers are most of
    the cost of an entry's checks and read state that seldom changes between entries: their
    answer is kept with the values they read (``_static_key``) and re-used while those are
    unchanged.  RIP, RFLAGS, the injected event and the interrupt shadow are checked each time."""
    vendor = cpu.exit_format.vendor
    key = _static_key(cpu, vendor)
    cached = cpu.entry_checked
    if cached is not None and cached[0] == key:
        reason = cached[1]
    else:
        reason = _STATIC_CHECKS[vendor](cpu)
        cpu.entry_checked = (key, reason)
    if reason is None:
        reason = _DYNAMIC_CHECKS[vendor](cpu)
    if reason is not None:
        raise Intercept("invalid_state", reason=reason)


_SEGMENT_FIELDS = attrgetter(*Segment.__slots__)


def _static_key(cpu, vendor):
    """Everything the static checks read (the CPU model is fixed for a processor)."""
    return (vendor, cpu.cr0, cpu.cr4, cpu.efer, cpu.flags & VM, cpu.gdt_base, cpu.idt_base,
            _SEGMENT_FIELDS(cpu.tr), _SEGMENT_FIELDS(cpu.ldtr), *map(_SEGMENT_FIELDS, cpu.seg))


# ------------------------------------------------------------------ checks both vendors make
def _control_register_errors(cpu):
    """CR0/CR4/EFER: SDM 27.3.1.1 and the matching items of APM 15.5.1."""
    cr0, cr4, efer = cpu.cr0, cpu.cr4, cpu.efer
    if cr0 >> 32:
        return "CR0[63:32] not zero"
    if cr0 & CR0_NW and not cr0 & CR0_CD:
        return "CR0.NW=1 with CR0.CD=0"
    if cr4 & ~CR4_IMPLEMENTED:
        return "CR4 reserved bit set"
    if efer & ~EFER_IMPLEMENTED:
        return "EFER reserved bit set"
    return None


def _long_mode_errors(cpu, lma):
    """IA-32e mode (``lma``) needs CR4.PAE and CR0.PE, and forbids CS.L with CS.D."""
    if lma and not cpu.cr4 & CR4_PAE:
        return "IA-32e mode without CR4.PAE"
    if cpu.cr0 & CR0_PG and not cpu.cr0 & CR0_PE:
        return "CR0.PG=1 with CR0.PE=0"
    cs = cpu.seg[CS]
    if lma and cs.l and cs.db:
        return "CS.L and CS.D both set in IA-32e mode"
    return None


def _svm_static_errors(cpu):
    """VMRUN's checks on the save area (APM 15.5.1): control registers and long mode only.

    VMRUN derives long mode from EFER.LME and CR0.PG; it does not compare EFER.LMA."""
    long_mode = bool(cpu.efer & EFER_LME and cpu.cr0 & CR0_PG)
    return _control_register_errors(cpu) or _long_mode_errors(cpu, long_mode)


# ------------------------------------------------------------------ VMX's guest-state area
def _vmx_static_errors(cpu):
    """SDM 27.3.1.1 to 27.3.1.3 with unrestricted guest, in the SDM's order: control
    registers, long mode, segments and descriptor tables (the state ``_static_key`` reads)."""
    lma = bool(cpu.efer & EFER_LMA)
    if lma != bool(cpu.efer & EFER_LME and cpu.cr0 & CR0_PG):
        return "EFER.LMA != (EFER.LME and CR0.PG)"      # the "IA-32e mode guest" entry control
    return _control_register_errors(cpu) or _long_mode_errors(cpu, lma) or _segment_errors(cpu, lma)


def _vmx_dynamic_errors(cpu):
    """SDM 27.3.1.4 and 27.3.1.5, after the static checks passed."""
    return _rip_rflags_errors(cpu, bool(cpu.efer & EFER_LMA)) or _interruptibility_errors(cpu)


def _usable(seg) -> bool:
    return not seg.unusable and seg.present


def _limit_granularity_error(name, seg):
    """G must agree with the limit: G=1 needs limit[11:0] all ones, G=0 needs limit[31:20] zero."""
    if seg.g and seg.limit & 0xFFF != 0xFFF:
        return name + ".G=1 with limit[11:0] not all ones"
    if not seg.g and seg.limit >> 20:
        return name + ".G=0 with limit[31:20] not zero"
    return None


def _segment_errors(cpu, lma):
    """SDM 27.3.1.2: selectors, bases, and access rights of CS, SS, DS-GS, TR and LDTR."""
    if cpu.flags & VM:
        return _vm86_segment_errors(cpu)
    cs, ss = cpu.seg[CS], cpu.seg[SS]
    if cs.type not in _CS_TYPES:
        return "CS type %d" % cs.type
    if not cs.s or not cs.present:
        return "CS not a present code/data segment"
    if cs.type == 3 and cs.dpl:
        return "CS type 3 with DPL != 0"
    if cs.type in (9, 11) and cs.dpl != ss.dpl:
        return "CS.DPL != SS.DPL (non-conforming CS)"
    if cs.type in (13, 15) and cs.dpl > ss.dpl:
        return "CS.DPL > SS.DPL (conforming CS)"
    if (cs.type == 3 or not cpu.cr0 & CR0_PE) and ss.dpl:
        return "SS.DPL != 0 in real mode or with a data-type CS"
    if _usable(ss) and (ss.type not in (3, 7) or not ss.s):
        return "SS type %d" % ss.type
    for i in (ES, DS, FS, GS):
        seg = cpu.seg[i]
        if _usable(seg) and (not seg.s or not seg.type & 1 or (seg.type & 8 and not seg.type & 2)):
            return "%s type %d" % (SEG_NAMES[i].upper(), seg.type)
    for i in range(6):
        seg = cpu.seg[i]
        if (i == CS or _usable(seg)) and (reason := _limit_granularity_error(SEG_NAMES[i].upper(), seg)):
            return reason
    for i in (CS, SS, DS, ES):
        if (i == CS or _usable(cpu.seg[i])) and cpu.seg[i].base >> 32:
            return SEG_NAMES[i].upper() + " base[63:32] not zero"
    return _system_segment_errors(cpu, lma)


def _vm86_segment_errors(cpu):
    """In virtual-8086 mode every segment is base = selector << 4, limit 0xFFFF, AR 0xF3."""
    for i, seg in enumerate(cpu.seg):
        if (seg.base != seg.selector << 4 or seg.limit != 0xFFFF or seg.type != 3 or not seg.s or
                seg.dpl != 3 or not seg.present or seg.db or seg.g or seg.l):
            return SEG_NAMES[i].upper() + " not a virtual-8086 segment"
    return _system_segment_errors(cpu, False)


def _system_segment_errors(cpu, lma):
    """TR must be a usable busy TSS (32-bit only in IA-32e mode); a usable LDTR an LDT."""
    tr, ldtr = cpu.tr, cpu.ldtr
    if tr.selector & 4:
        return "TR selector TI=1"
    if not _usable(tr):
        return "TR unusable or not present"
    if tr.type != TSS32_BUSY and (lma or tr.type != TSS16_BUSY):
        return "TR type %d%s" % (tr.type, " in IA-32e mode" if lma else "")
    if tr.s:
        return "TR.S=1"
    if reason := _limit_granularity_error("TR", tr):
        return reason
    if not _base_canonical(tr.base):
        return "TR base not canonical"
    for i in (FS, GS):
        if not _base_canonical(cpu.seg[i].base):
            return SEG_NAMES[i].upper() + " base not canonical"
    if _usable(ldtr):
        if ldtr.selector & 4:
            return "LDTR selector TI=1"
        if ldtr.type != LDT or ldtr.s:
            return "LDTR type %d" % ldtr.type
        if reason := _limit_granularity_error("LDTR", ldtr):
            return reason
        if not _base_canonical(ldtr.base):
            return "LDTR base not canonical"
    if not _base_canonical(cpu.gdt_base) or not _base_canonical(cpu.idt_base):
        return "GDTR/IDTR base not canonical"
    return None


def _rip_rflags_errors(cpu, lma):
    """SDM 27.3.1.4: RIP fits the mode; RFLAGS reserved bits, VM, and IF for an injected interrupt.

    In 64-bit mode RIP's bits 63..N must be identical (N linear-address bits): one bit
    fewer than canonical, so that RIP = 2**47, after an instruction that ends the lower
    half, enters and faults on the fetch."""
    if lma and cpu.seg[CS].l:
        top = cpu.rip >> cpu.model.virt_bits
        if top not in (0, (1 << (64 - cpu.model.virt_bits)) - 1):
            return "RIP[63:%d] not identical" % cpu.model.virt_bits
    elif cpu.rip >> 32:
        return "RIP[63:32] not zero outside 64-bit mode"
    rflags = cpu.get_rflags()
    if rflags & RFLAGS_RESERVED or not rflags & 2:
        return "RFLAGS reserved bits"
    if rflags & VM and (lma or not cpu.cr0 & CR0_PE):
        return "RFLAGS.VM in IA-32e mode or real mode"
    event = cpu.pending_event
    if event is not None and event[0] == EXT_INTR and not rflags & IF:
        return "external interrupt injected with RFLAGS.IF=0"
    return None


def _interruptibility_errors(cpu):
    """SDM 27.3.1.5: blocking by STI needs RFLAGS.IF=1."""
    if cpu.interrupt_shadow == STI_BLOCKING and not cpu.flags & IF:
        return "blocking by STI with RFLAGS.IF=0"
    return None


_STATIC_CHECKS = {"vmx": _vmx_static_errors, "svm": _svm_static_errors}
def _svm_dynamic_errors(cpu):
    """VMRUN checks neither RIP nor RFLAGS (APM 15.5.1)."""
    return None


_DYNAMIC_CHECKS = {"vmx": _vmx_dynamic_errors, "svm": _svm_dynamic_errors}
