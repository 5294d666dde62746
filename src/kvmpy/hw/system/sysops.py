"""Helpers for system instructions, called from translated code as ``sys(name, ...)``.

Each is ``f(cpu, *args)`` and follows the SDM's checks; where the hypervisor
intercepts (MOV CR3 and INVLPG under shadow paging, CR0/CR4 writes under
shadow paging, XSETBV, LMSW) they raise the VM exit instead.
"""

from kvmpy.hw import features
from kvmpy.hw.fpu import fxsave
from kvmpy.hw.fpu import xsave
from kvmpy.hw.events import Fault, Intercept
from kvmpy.hw.msr_index import MSR_CSTAR, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_EIP, MSR_IA32_SYSENTER_ESP, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_STAR, MSR_SYSCALL_MASK, MSR_TSC_AUX
from kvmpy.hw.x86defs import CR0_NW, CR0_CD, CR0_PE, CR0_PG, CR4_DE, DR6_BD, DR7_GD, CR4_OSXSAVE, CR4_PAE, CR4_PCIDE, CR4_TSD, CS, EFER_LMA, EFER_LME, EFER_SCE, IF, RF, SS, VM, FS, GS
from kvmpy.hw.x86defs import canonical
from kvmpy.hw.system.descriptors import parse_descriptor
from kvmpy.hw.state import Segment

TSC_PER_INSN = 1        # the processor's own TSC (no hypervisor input): one tick per retired instruction


def rdtsc(cpu, with_aux, retired=0):
    """RDTSC/RDTSCP.  ``retired``: the instructions the running block retired before this one,
    which ``cpu.icount`` counts only once the block ends; they are counted in for the read,
    so that the TSC is exact to the instruction."""
    if cpu.cr4 & CR4_TSD and cpu.mode.cpl:
        raise Fault(13, 0)
    cpu.icount += retired
    try:
        host = cpu.host_tsc() if cpu.host_tsc is not None else cpu.icount * TSC_PER_INSN
    finally:
        cpu.icount -= retired
    t = (cpu.tsc + host) & 0xFFFFFFFFFFFFFFFF
    cpu.regs[0] = t & 0xFFFFFFFF
    cpu.regs[2] = t >> 32
    if with_aux:
        cpu.regs[1] = cpu.msrs.get(MSR_TSC_AUX, 0) & 0xFFFFFFFF


def fwait(cpu):
    """WAIT/FWAIT: #NM if CR0.MP and TS, then a pending unmasked x87 exception (FSW.ES) as #MF."""
    if cpu.cr0 & 0xA == 0xA:
        raise Fault(7)
    if cpu.fpu.fsw & 0x80:
        raise Fault(16)


def cli_sti(cpu, sti):
    if cpu.cr0 & CR0_PE and cpu.mode.cpl > (cpu.flags >> 12) & 3:
        raise Fault(13, 0)
    if sti:
        # the shadow covers the next instruction only when STI sets IF (an STI with IF=1
        # in the shadow of another leaves none)
        cpu.interrupt_shadow = 0 if cpu.flags & IF else 1
        cpu.flags |= IF
    else:
        cpu.flags &= ~IF


def read_cr(cpu, cr):
    return {0: cpu.cr0, 2: cpu.cr2, 3: cpu.cr3, 4: cpu.cr4, 8: cpu.cr8}[cr]


def write_cr(cpu, cr, value, insn_len=0, reg=0):
    """MOV to CR0/CR3/CR4/CR8 with the architectural checks, or the VM exit."""
    if cr == 0:
        value |= 0x10                # ET is hardwired
        if value >> 32 or (value & CR0_PG and not value & CR0_PE) or (value & CR0_NW and not value & CR0_CD):
            raise Fault(13, 0)
        if value & CR0_PG and not cpu.cr0 & CR0_PG and cpu.efer & EFER_LME and (
                not cpu.cr4 & CR4_PAE or cpu.seg[CS].l):
            raise Fault(13, 0)          # IA-32e mode needs PAE, and is entered from a CS without L
        if not value & CR0_PG and (cpu.mode.code == 8 or cpu.cr4 & CR4_PCIDE):
            raise Fault(13, 0)          # paging stays on in 64-bit mode and with PCIDs
        if cpu.intercept_cr0_cr4 and (value ^ cpu.cr0) & 0x80010001:
            raise Intercept("cr", cr=0, write=True, reg=reg, insn_len=insn_len)
        cpu.cr0 = value
        cpu.set_cr0_mode()
    elif cr == 3:
        if cpu.intercept_cr3:
            raise Intercept("cr", cr=3, write=True, reg=reg, insn_len=insn_len)
        cpu.cr3 = value
        cpu.flush_tlb()
    elif cr == 4:
        if value & ~0x3777FF or (cpu.efer & EFER_LMA and not value & CR4_PAE):
            raise Fault(13, 0)
        if cpu.intercept_cr0_cr4 and (value ^ cpu.cr4) & 0xB0:
            raise Intercept("cr", cr=4, write=True, reg=reg, insn_len=insn_len)
        cpu.cr4 = value
    elif cr == 8:
        if value & ~0xF:
            raise Fault(13, 0)
        if cpu.intercept_cr8:
            raise Intercept("cr", cr=8, write=True, reg=reg, insn_len=insn_len)
        cpu.cr8 = value
    cpu.refresh()


def lmsw(cpu, value, insn_len):
    new = (cpu.cr0 & ~0xE) | (value & 0xF) | (cpu.cr0 & 1)    # LMSW cannot clear PE
    write_cr(cpu, 0, new, insn_len)


def _dr_index(cpu, dr):
    """DR4 and DR5 are DR6 and DR7 unless CR4.DE, which makes them #UD (SDM 18.2.2)."""
    if dr in (4, 5):
        if cpu.cr4 & CR4_DE:
            raise Fault(6)
        return dr + 2
    return dr


def _mov_dr(cpu, dr, write, reg, insn_len):
    """What comes before a MOV to or from DRn is carried out: DR7.GD's #DB fault (SDM 18.2.4,
    DR6.BD) and the hypervisor's intercept (MOV-DR exiting / the DR intercepts: its
    debugger's breakpoints are in DR0-3/DR7), in the vendor's order."""
    gd = cpu.dr[7] & DR7_GD and not (dr in (4, 5) and cpu.cr4 & CR4_DE)    # that #UD comes first
    if gd and not cpu.exit_format.dr_exit_before_general_detect:
        raise Fault(1, dr6=DR6_BD)
    if cpu.intercept_dr:
        raise Intercept("dr", dr=dr, write=write, reg=reg, insn_len=insn_len)
    if gd:
        raise Fault(1, dr6=DR6_BD)


def read_dr(cpu, dr, reg, insn_len):
    """MOV from DRn (into general register ``reg``)."""
    _mov_dr(cpu, dr, False, reg, insn_len)
    return cpu.dr[_dr_index(cpu, dr)]


def write_dr(cpu, dr, value, reg, insn_len):
    _mov_dr(cpu, dr, True, reg, insn_len)
    dr = _dr_index(cpu, dr)
    cpu.dr[dr] = value
    cpu.debug_refresh()         # a breakpoint may have been enabled or moved


def load_dtable(cpu, idt, base, limit, long64=False):
    """LGDT / LIDT.  In 64-bit mode a non-canonical base is #GP(0) (AMD's APM says so for
    LGDT/LIDT, and KVM's emulator checks it in em_lgdt_lidt): it never reaches GDTR/IDTR,
    where the next VM entry's canonical checks would refuse it.  Canonical at the width of
    the processor's linear addresses, not of the current paging mode."""
    if long64 and not canonical(base, features.linear_address_bits()):
        raise Fault(13, 0)
    if idt:
        cpu.idt_base, cpu.idt_limit = base, limit
    else:
        cpu.gdt_base, cpu.gdt_limit = base, limit


def invlpg(cpu, addr, insn_len):
    if cpu.intercept_invlpg:
        raise Intercept("invlpg", addr=addr, insn_len=insn_len)
    for t in (cpu.tlb_r, cpu.tlb_w, cpu.tlb_x):
        t.pop(addr >> 12, None)


def xgetbv(cpu):
    if not cpu.cr4 & CR4_OSXSAVE:
        raise Fault(6)
    if cpu.regs[1] & 0xFFFFFFFF != 0:
        raise Fault(13, 0)
    cpu.regs[0] = cpu.xcr0 & 0xFFFFFFFF
    cpu.regs[2] = cpu.xcr0 >> 32


def monitor_mwait(cpu, is_mwait):
    """MONITOR arms nothing we could wake from; MWAIT behaves as a NOP (allowed by the SDM)."""


def swapgs(cpu):
    gs = cpu.seg[GS]
    k = cpu.msrs.get(MSR_KERNEL_GS_BASE, 0)
    cpu.msrs[MSR_KERNEL_GS_BASE] = gs.base
    gs.base = k
    cpu.sbase[GS] = k


def fsgsbase(cpu, op, reg, size):
    seg = FS if op in (0, 2) else GS
    if op < 2:
        cpu.regs[reg] = cpu.seg[seg].base & (0xFFFFFFFF if size == 4 else 0xFFFFFFFFFFFFFFFF)
    else:
        cpu.seg[seg].base = cpu.regs[reg] & (0xFFFFFFFF if size == 4 else 0xFFFFFFFFFFFFFFFF)
        cpu.sbase[seg] = cpu.seg[seg].base


def fpu_state(cpu, op, addr, rex_w):
    """0F AE /0../6 with memory: FXSAVE/FXRSTOR/LDMXCSR/STMXCSR (kvmpy.hw.fpu.fxsave), then
    XSAVE/XRSTOR/XSAVEOPT (kvmpy.hw.fpu.xsave)."""
    if op < 4:
        fxsave.fpu_state(cpu, op, addr, rex_w)
    else:
        xsave.xsave_op(cpu, op, addr, bool(rex_w) and cpu.mode.code == 8)


def lldt(cpu, sel):
    if sel & ~3 == 0:
        cpu.ldtr.selector, cpu.ldtr.unusable = sel, 1
        return
    if sel & 4:
        raise Fault(13, sel & ~3)
    wide = bool(cpu.efer & EFER_LMA)
    d, _ = cpu.read_descriptor(sel, wide=wide)
    seg = parse_descriptor(d & 0xFFFFFFFFFFFFFFFF, Segment(), sel)
    if seg.s or seg.type != 2:
        raise Fault(13, sel & ~3)
    if not seg.present:
        raise Fault(11, sel & ~3)
    if wide:
        seg.base |= (d >> 64 & 0xFFFFFFFF) << 32
    cpu.ldtr = seg


def ltr(cpu, sel):
    if sel & ~3 == 0 or sel & 4:
        raise Fault(13, sel & ~3)
    wide = bool(cpu.efer & EFER_LMA)
    d, addr = cpu.read_descriptor(sel, wide=wide)
    seg = parse_descriptor(d & 0xFFFFFFFFFFFFFFFF, Segment(), sel)
    if seg.s or seg.type not in (1, 9):
        raise Fault(13, sel & ~3)
    if not seg.present:
        raise Fault(11, sel & ~3)
    if wide:
        seg.base |= (d >> 64 & 0xFFFFFFFF) << 32
    cpu.write_sys(addr + 5, 1, ((d >> 40) & 0xFF) | 2)       # mark busy
    seg.type |= 2
    cpu.tr = seg


def verify(cpu, sel, write):
    ok = False
    if sel & ~3:
        try:
            d, _ = cpu.read_descriptor(sel)
            s = parse_descriptor(d, Segment(), sel)
            priv_ok = (s.type & 0xC) == 0xC or max(cpu.mode.cpl, sel & 3) <= s.dpl
            if s.s and priv_ok:
                ok = (not s.type & 8 and s.type & 2) if write else (not s.type & 8 or s.type & 2)
        except Fault:
            ok = False
    cpu.set_some_flags(0x40, 0x40 if ok else 0)


def _flat(seg, sel, dpl, code, long=False, db=True):
    seg.selector, seg.base, seg.limit, seg.g, seg.s, seg.present = sel, 0, 0xFFFFFFFF, 1, 1, 1
    seg.dpl, seg.type, seg.l, seg.db, seg.unusable, seg.avl = dpl, (0xB if code else 3), int(long), int(db), 0, 0


def _check_syscall(cpu):
    """#UD unless SYSCALL/SYSRET are enabled (EFER.SCE, protected mode) and, on a CPU model
    without ``syscall_legacy`` (Intel), the processor is in 64-bit mode."""
    if not cpu.efer & EFER_SCE or not cpu.cr0 & CR0_PE:
        raise Fault(6)
    if not cpu.model.syscall_legacy and cpu.mode.code != 8:
        raise Fault(6)


def syscall(cpu, next_ip, opsize):
    _check_syscall(cpu)
    star = cpu.msrs.get(MSR_STAR, 0)
    sel = (star >> 32) & 0xFFFC
    fl = cpu.get_rflags()
    if cpu.efer & EFER_LMA:
        cpu.regs[1] = next_ip
        cpu.regs[11] = fl & ~RF
        long64 = cpu.mode.code == 8
        target = cpu.msrs.get(MSR_LSTAR if long64 else MSR_CSTAR, 0)
        cpu.set_rflags(fl & ~(cpu.msrs.get(MSR_SYSCALL_MASK, 0) | RF))
        _flat(cpu.seg[CS], sel, 0, True, long=True, db=False)
    else:
        cpu.regs[1] = next_ip & 0xFFFFFFFF
        target = star & 0xFFFFFFFF
        cpu.set_rflags(fl & ~(IF | RF | VM))
        _flat(cpu.seg[CS], sel, 0, True)
    _flat(cpu.seg[SS], sel + 8, 0, False)
    cpu.refresh()
    cpu.rip = target


def sysret(cpu, next_ip, opsize):
    _check_syscall(cpu)
    if cpu.mode.cpl:
        raise Fault(13, 0)
    if opsize == 8 and cpu.model.sysret_canonical_gp and not canonical(cpu.regs[1]):
        raise Fault(13, 0)              # Intel: at CPL 0, before the return
    star = cpu.msrs.get(MSR_STAR, 0)
    base = (star >> 48) & 0xFFFF
    if opsize == 8:
        _flat(cpu.seg[CS], (base + 16) | 3, 3, True, long=True, db=False)
        rip = cpu.regs[1]
    else:
        _flat(cpu.seg[CS], base | 3, 3, True)
        rip = cpu.regs[1] & 0xFFFFFFFF
    if cpu.efer & EFER_LMA:
        cpu.set_rflags((cpu.regs[11] & 0x3C7FD7) | 2)
    else:
        cpu.flags |= IF
    ss = cpu.seg[SS]
    ss.selector = (base + 8) | 3
    ss.dpl = 3
    cpu.refresh()
    cpu.rip = rip


def _check_sysenter(cpu):
    """#UD for SYSENTER/SYSEXIT in long mode on a CPU model without ``sysenter_long_mode`` (AMD)."""
    if cpu.efer & EFER_LMA and not cpu.model.sysenter_long_mode:
        raise Fault(6)


def sysenter(cpu, next_ip, opsize):
    _check_sysenter(cpu)
    cs_sel = cpu.msrs.get(MSR_IA32_SYSENTER_CS, 0) & 0xFFFC
    if not cpu.cr0 & CR0_PE or cs_sel == 0:
        raise Fault(13, 0)
    cpu.set_rflags(cpu.get_rflags() & ~(VM | IF | RF))
    long = bool(cpu.efer & EFER_LMA)
    _flat(cpu.seg[CS], cs_sel, 0, True, long=long, db=not long)
    _flat(cpu.seg[SS], cs_sel + 8, 0, False)
    cpu.regs[4] = cpu.msrs.get(MSR_IA32_SYSENTER_ESP, 0)
    cpu.refresh()
    cpu.rip = cpu.msrs.get(MSR_IA32_SYSENTER_EIP, 0)


def sysexit(cpu, next_ip, opsize):
    _check_sysenter(cpu)
    cs_sel = cpu.msrs.get(MSR_IA32_SYSENTER_CS, 0) & 0xFFFC
    if not cpu.cr0 & CR0_PE or cs_sel == 0 or cpu.mode.cpl:
        raise Fault(13, 0)
    if opsize == 8:
        _flat(cpu.seg[CS], (cs_sel + 32) | 3, 3, True, long=True, db=False)
        _flat(cpu.seg[SS], (cs_sel + 40) | 3, 3, False)
    else:
        _flat(cpu.seg[CS], (cs_sel + 16) | 3, 3, True)
        _flat(cpu.seg[SS], (cs_sel + 24) | 3, 3, False)
    cpu.regs[4] = cpu.regs[1]
    cpu.refresh()
    cpu.rip = cpu.regs[2]
