"""Hardware task switching with 32-bit TSSs (Intel SDM vol. 3 chapter 7).

A task switch is started by a far JMP or CALL to a TSS descriptor or a task gate, by an
interrupt or exception through a task gate in the IDT, or by IRET with EFLAGS.NT=1 (back to
the task named by the current TSS's back link).  Long mode has no task switching: the
callers raise #GP there before getting here.  16-bit TSSs (type 1/3) are not supported
(their descriptors are refused with #GP like any other unusable system descriptor).

On VMX a task switch is a VM exit (reason 9, TASK_SWITCH) that KVM emulates in software
(kvm_task_switch -> emulator_task_switch); on SVM it is the TASK_SWITCH intercept that KVM
also emulates.  So with ``cpu.intercept_task_switch`` set (both vendors: always) the
processor only raises ``Intercept("task_switch")`` before touching anything, and the
kernel performs the switch by calling ``task_switch`` again with the intercept off and
``deliver_faults=False`` (faults are KVM's to queue, as the emulator's are); that way a
new CR3 is seen by KVM, which shadow paging needs.

The switch is split at the SDM's commit point.  Before it, every check (new TSS
descriptor, its limit, busy bit) faults in the old task with nothing changed.  After it
-- the old state saved, busy bits and back link written, TR loaded -- faults while loading
the new task's segments are delivered in the new task, as on hardware.
"""

from __future__ import annotations

from kvmpy.hw.events import Fault, Intercept
from kvmpy.hw.system.descriptors import parse_descriptor
from kvmpy.hw.state import Segment
from kvmpy.hw.x86defs import CR0_PG, CR0_TS, CS, DS, ES, FS, GS, NT, SS, VM

JMP, CALL, IRET, INT = "jmp", "call", "iret", "gate"     # INT: a task gate in the IDT

TSS32_MIN_LIMIT = 0x67
# 32-bit TSS layout
BACK_LINK, CR3, EIP, EFLAGS, GPRS, SREGS, LDT = 0x00, 0x1C, 0x20, 0x24, 0x28, 0x48, 0x60
SREG_ORDER = (ES, CS, SS, DS, FS, GS)           # as stored from offset 0x48, 4 bytes apart
TSS_AVAILABLE, TSS_BUSY = 9, 0xB


def task_switch(cpu, sel, source, next_ip, error_code=None, ext=0, deliver_faults=True):
    """Switch from the current task to the one whose TSS selector is ``sel``.

    ``source`` is JMP, CALL, IRET or INT; ``next_ip`` the EIP saved in the old task;
    ``error_code`` (INT from an exception) is pushed on the new task's stack (the VM exit
    reports the event being delivered as any exit during a delivery does, see
    ``Processor.deliver``).  Faults past the commit point are delivered in the new task, or
    raised with ``deliver_faults`` off.
    """
    if cpu.intercept_task_switch:
        raise Intercept("task_switch", selector=sel, source=source, error_code=error_code,
                        next_ip=next_ip)
    err = (sel & ~3) + ext
    bad = 10 if source == IRET else 13
    if sel & 4:
        raise Fault(bad, err)
    d, new_addr = cpu.read_descriptor(sel, error_code=err, vector=bad)
    new = parse_descriptor(d, Segment(), sel)
    want = TSS_BUSY if source == IRET else TSS_AVAILABLE
    if new.s or new.type != want:
        raise Fault(bad, err)
    if not new.present:
        raise Fault(11, err)
    if new.limit < TSS32_MIN_LIMIT:
        raise Fault(10, err)
    image = _read_tss(cpu, new.base)

    old_tr = cpu.tr
    fl = cpu.get_rflags()
    if source == IRET:
        fl &= ~NT
    _save_tss(cpu, old_tr.base, next_ip, fl)
    if source in (JMP, IRET):
        _clear_busy(cpu, old_tr.selector)
    new_flags = image["eflags"]
    if source in (CALL, INT):
        cpu.write_sys(new.base + BACK_LINK, 2, old_tr.selector)
        new_flags |= NT
    if source != IRET:
        cpu.write_sys(new_addr + 5, 1, ((d >> 40) & 0xFF) | 2)
    new.type = TSS_BUSY
    cpu.tr = new
    cpu.cr0 |= CR0_TS
    # ---- commit point: from here on, faults belong to the new task
    try:
        _load_task_state(cpu, image, new_flags)
        if error_code is not None:
            cpu._push([error_code], 4)
    except Fault as f:
        if not deliver_faults:
            raise
        cpu.deliver(f.vector, 3, f.error_code, cr2=f.cr2)


def exit_insn_len(cpu, info):
    """The instruction length a TASK_SWITCH exit reports: CALL/JMP/IRET and INT n through a
    task gate are retired by KVM before it switches; a hardware event has none.  Known only
    once RIP is back at the instruction, i.e. when the exit is formatted."""
    return (info["next_ip"] - cpu.rip) & 0xFFFFFFFF


def _read_tss(cpu, base):
    """The dynamic fields of a 32-bit TSS, read before anything changes."""
    return {
        "cr3": cpu.read_sys(base + CR3, 4),
        "eip": cpu.read_sys(base + EIP, 4),
        "eflags": cpu.read_sys(base + EFLAGS, 4),
        "gprs": [cpu.read_sys(base + GPRS + 4 * i, 4) for i in range(8)],
        "sregs": [cpu.read_sys(base + SREGS + 4 * i, 2) for i in range(6)],
        "ldt": cpu.read_sys(base + LDT, 2),
    }


def _save_tss(cpu, base, eip, eflags):
    """Store the outgoing task's dynamic state (EIP, EFLAGS, GPRs, selectors)."""
    cpu.write_sys(base + EIP, 4, eip & 0xFFFFFFFF)
    cpu.write_sys(base + EFLAGS, 4, eflags & 0xFFFFFFFF)
    for i in range(8):
        cpu.write_sys(base + GPRS + 4 * i, 4, cpu.regs[i] & 0xFFFFFFFF)
    for i, sreg in enumerate(SREG_ORDER):
        cpu.write_sys(base + SREGS + 4 * i, 2, cpu.seg[sreg].selector)


def _clear_busy(cpu, sel):
    d, addr = cpu.read_descriptor(sel)
    cpu.write_sys(addr + 5, 1, (d >> 40) & 0xFD)


def _load_task_state(cpu, image, eflags):
    """Load the incoming task: CR3, EFLAGS, EIP, GPRs, then LDTR and the segment registers
    with their checks (#TS for a bad selector or descriptor, #NP/#SS when not present)."""
    if cpu.cr0 & CR0_PG:
        cpu.cr3 = image["cr3"]
        cpu.flush_tlb()             # as MOV to CR3 does
    cpu.set_rflags(eflags)
    cpu.rip = image["eip"]
    cpu.regs[:8] = image["gprs"]
    sels = dict(zip(SREG_ORDER, image["sregs"]))
    # selectors first, so that a fault below is delivered with the new task's values saved
    for sreg, s in sels.items():
        cpu.seg[sreg].selector = s
    _load_ldt(cpu, image["ldt"])
    if eflags & VM:
        for sreg, s in sels.items():
            cpu.set_real_seg(sreg, s)
        cpu.rip &= 0xFFFF
        cpu.refresh()
        return
    cs = sels[CS]
    cpl = cs & 3
    cpu.seg[CS] = _code_descriptor(cpu, cs)
    cpu.sbase[CS] = cpu.seg[CS].base
    cpu.commit_seg(SS, cpu.stack_descriptor(sels[SS], cpl, vector=10))
    for sreg in (DS, ES, FS, GS):
        if sels[sreg] & ~3:
            cpu.commit_seg(sreg, cpu.data_descriptor(sels[sreg], cpl, vector=10))
        else:
            cpu.set_null_seg(sreg, sels[sreg])
    cpu.refresh()
    if cpu.rip > cpu.seg[CS].limit:
        raise Fault(13, 0)


def _load_ldt(cpu, sel):
    if sel & ~3 == 0:
        cpu.ldtr = Segment(selector=sel, type=2, s=0, present=0, unusable=1)
        return
    if sel & 4:
        raise Fault(10, sel & ~3)
    d, _ = cpu.read_descriptor(sel, vector=10)
    ldt = parse_descriptor(d, Segment(), sel)
    if ldt.s or ldt.type != 2:
        raise Fault(10, sel & ~3)
    if not ldt.present:
        raise Fault(10, sel & ~3)
    cpu.ldtr = ldt


def _code_descriptor(cpu, sel):
    """The new task's CS: its RPL becomes CPL (non-conforming: DPL = RPL; conforming: DPL <= RPL)."""
    if sel & ~3 == 0:
        raise Fault(10, 0)
    d, addr = cpu.read_descriptor(sel, vector=10)
    cs = parse_descriptor(d, Segment(), sel)
    rpl = sel & 3
    if not cs.s or not cs.type & 8 or (cs.dpl > rpl if cs.type & 4 else cs.dpl != rpl):
        raise Fault(10, sel & ~3)
    if not cs.present:
        raise Fault(11, sel & ~3)
    cpu._set_accessed(addr, d)
    cs.type |= 1
    if not cs.type & 4:
        cs.dpl = rpl
    return cs

