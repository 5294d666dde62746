"""Segmentation and event delivery: descriptor loads, far transfers, IRET, IDT/IVT.

These are the processor's rare, complicated paths; translated code calls them
as helpers.  They follow SDM vol. 3 chapters 3, 5 and 6 (and AMD APM vol. 2
chapter 8 for long mode), with their checks and faults: call gates (16/32-bit, and
64-bit in long mode), virtual-8086 entry by IRET and interrupts out of it to a ring-0
handler.  Task switches (JMP/CALL to a TSS or task gate, IDT task gates, IRET with NT)
are in ``kvmpy.hw.system.tasks``.
"""

from __future__ import annotations

from kvmpy.hw.system import tasks
from kvmpy.hw.system.descriptors import parse_descriptor
from kvmpy.hw.events import EXT_INTR, HW_EXC, NMI, SW_EXC, SW_INT, Fault
from kvmpy.hw.state import Segment
from kvmpy.hw.x86defs import AC, CR0_PE, CS, DS, EFER_LMA, ES, FS, GS, IF, NT, RF, SS, TF, VM

M = {2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


class SegmentUnit:
    """Mixin for Processor: everything that loads CS/SS or walks the IDT."""

    # VMX/SVM execution control: task switches are VM exits (kvmpy.hw.system.tasks).  Off for a bare
    # processor; the vendor module sets it, as the silicon always intercepts them.
    intercept_task_switch = False

    # ------------------------------------------------------------------ stack helpers
    def _sp_size(self):
        return self.mode.stack

    def _push(self, values, size):
        st = self.mode.stack
        sp = self.regs[4]
        base = self.sbase[SS] if self.mode.code != 8 else 0
        top = (sp - size * len(values)) & M[st]
        self.probe_write((base + top) & M[8 if self.mode.code == 8 else 4], size * len(values))
        for k, v in enumerate(values, 1):
            self.write_slow((base + ((sp - size * k) & M[st])) & M[8 if self.mode.code == 8 else 4], size, v)
        self._set_sp(top, st)

    def _pop(self, size, count):
        st = self.mode.stack
        sp = self.regs[4]
        base = self.sbase[SS] if self.mode.code != 8 else 0
        vals = [self.read_slow((base + ((sp + size * k) & M[st])) & M[8 if self.mode.code == 8 else 4], size)
                for k in range(count)]
        return vals, (sp + size * count) & M[st]

    def _set_sp(self, value, st):
        if st == 2:
            self.regs[4] = (self.regs[4] & ~0xFFFF) | (value & 0xFFFF)
        else:
            self.regs[4] = value & M[st]

    # ------------------------------------------------------------------ descriptors
    def read_descriptor(self, sel, error_code=None, wide=False, vector=13):
        """The descriptor ``sel`` names (16 bytes if ``wide``); #GP (or ``vector``) outside its table."""
        table_base, table_limit = (self.ldtr.base, self.ldtr.limit) if sel & 4 else (self.gdt_base, self.gdt_limit)
        idx = sel & ~7
        err = (sel & ~3) if error_code is None else error_code
        if sel & 4 and self.ldtr.unusable:
            raise Fault(vector, err)
        if idx + (15 if wide else 7) > table_limit:
            raise Fault(vector, err)
        addr = table_base + idx
        d = self.read_sys(addr, 8)
        if wide:
            d |= self.read_sys(addr + 8, 8) << 64
        return d, addr

    def _set_accessed(self, addr, d):
        if not d & (1 << 40):
            self.write_sys(addr + 5, 1, ((d >> 40) & 0xFF) | 1)

    def stack_descriptor(self, sel, cpl, vector=13, ext=0):
        """Checks for a selector about to become SS at privilege ``cpl`` (MOV SS, stack switches).

        MOV/POP SS report violations as #GP, the inner-stack loads of call gates, interrupts
        and task switches as #TS (``vector`` 10); a not-present segment is #SS either way.
        """
        err = (sel & ~3) + ext
        if sel & ~3 == 0:
            raise Fault(vector, ext)
        d, addr = self.read_descriptor(sel, error_code=err, vector=vector)
        tmp = parse_descriptor(d, Segment(), sel)
        if (sel & 3) != cpl or tmp.dpl != cpl or not tmp.s or tmp.type & 0xA != 2:
            raise Fault(vector, err)
        if not tmp.present:
            raise Fault(12, err)
        return tmp, addr, d

    def data_descriptor(self, sel, cpl, vector=13):
        """Checks for a non-null selector about to become DS/ES/FS/GS (#GP, or #TS in a task switch)."""
        d, addr = self.read_descriptor(sel, vector=vector)
        tmp = parse_descriptor(d, Segment(), sel)
        if not tmp.s or (tmp.type & 0xA) == 8:       # system, or execute-only code
            raise Fault(vector, sel & ~3)
        if (tmp.type & 0xC) != 0xC and ((sel & 3) > tmp.dpl or cpl > tmp.dpl):   # data or non-conforming
            raise Fault(vector, sel & ~3)
        if not tmp.present:
            raise Fault(11, sel & ~3)
        return tmp, addr, d

    def commit_seg(self, sreg, checked):
        """Load a checked (descriptor, address, raw) triple into a segment register."""
        tmp, addr, d = checked
        self._set_accessed(addr, d)
        tmp.type |= 1
        self.seg[sreg] = tmp
        self.sbase[sreg] = tmp.base
        if sreg == SS:
            self.refresh()

    def set_real_seg(self, sreg, sel):
        """Real-mode and virtual-8086 segment load: base = selector * 16."""
        seg = self.seg[sreg]
        seg.selector, seg.base = sel & 0xFFFF, (sel & 0xFFFF) << 4
        if self.flags & VM:      # every segment, CS too, has access rights 0xF3 (VMX checks that)
            seg.limit, seg.dpl, seg.type, seg.present, seg.s, seg.db, seg.g, seg.l, seg.unusable = (
                0xFFFF, 3, 3, 1, 1, 0, 0, 0, 0)
        self.sbase[sreg] = seg.base

    def set_null_seg(self, sreg, sel, dpl=None):
        seg = self.seg[sreg]
        seg.selector, seg.unusable, seg.present = sel, 1, 0
        if dpl is not None:
            seg.dpl, seg.base = dpl, 0
            self.sbase[sreg] = 0

    def load_seg(self, sreg, sel):
        """MOV/POP to a segment register (and LDS/LES/LSS/LFS/LGS)."""
        sel &= 0xFFFF
        if not self.cr0 & CR0_PE or self.flags & VM:
            self.set_real_seg(sreg, sel)
            if sreg == SS:
                self.refresh()
            return
        cpl = self.mode.cpl
        if sel & ~3 == 0:
            if sreg == SS and not (self.mode.code == 8 and cpl < 3 and (sel & 3) == cpl):
                raise Fault(13, 0)
            self.set_null_seg(sreg, sel)
            if sreg == SS:
                self.seg[SS].dpl = cpl
                self.refresh()
            elif self.mode.code == 8 and self.model.null_sel_clears_base:
                self.seg[sreg].base = self.sbase[sreg] = 0      # the CPU model's behaviour
            return
        if sreg == SS:
            self.commit_seg(SS, self.stack_descriptor(sel, cpl))
        else:
            self.commit_seg(sreg, self.data_descriptor(sel, cpl))

    def _load_cs(self, sel, new_cpl):
        """Checks for a code-segment descriptor and load it as CS with RPL = new CPL."""
        d, addr = self.read_descriptor(sel)
        tmp = parse_descriptor(d, Segment(), (sel & ~3) | new_cpl)
        if not tmp.s or not tmp.type & 8:
            raise Fault(13, sel & ~3)
        if not tmp.present:
            raise Fault(11, sel & ~3)
        if self.efer & EFER_LMA and tmp.l and tmp.db:
            raise Fault(13, sel & ~3)
        self._set_accessed(addr, d)
        tmp.type |= 1
        tmp.dpl = new_cpl if not tmp.type & 4 else tmp.dpl
        self.seg[CS] = tmp
        self.sbase[CS] = tmp.base

    def _tss_read(self, offset, size, ext=0):
        """A field of the current TSS (inner stack pointers); #TS(TR) beyond its limit."""
        if offset + size - 1 > self.tr.limit:
            raise Fault(10, (self.tr.selector & ~3) + ext)
        return self.read_sys(self.tr.base + offset, size)

    def _inner_stack(self, new_cpl, ext=0):
        """SS:ESP for ``new_cpl`` from a 32-bit TSS, checked: ((descriptor, addr, raw), esp)."""
        sp = self._tss_read(4 + 8 * new_cpl, 4, ext)
        ss = self._tss_read(8 + 8 * new_cpl, 2, ext)
        return self.stack_descriptor(ss, new_cpl, vector=10, ext=ext), sp

    def _switch_stack(self, new_cpl, ext=0):
        """Move to the inner stack of ``new_cpl`` (CS already loaded): a TSS SS:ESP, or in
        long mode a null SS with RPL = CPL and RSP from the 64-bit TSS."""
        if self.efer & EFER_LMA:
            sp = self._tss_read(4 + 8 * new_cpl, 8, ext)
            self.set_null_seg(SS, new_cpl, dpl=new_cpl)
        else:
            checked, sp = self._inner_stack(new_cpl, ext)
            self.commit_seg(SS, checked)
        self.regs[4] = sp
        self.refresh()

    def atomically(self, fn, *args):
        """Run a far transfer or event delivery all or nothing, like the silicon.

        A fault or a VM exit (an EPT violation on the new stack, say) can strike after CS or
        SS were already switched; the instruction is then restarted, or the nested fault
        delivered, from the state before it, never from a half-done transfer.  (Stores to the
        new stack already made stay, as they would on hardware.)
        """
        saved = ([s.copy() for s in self.seg], self.regs[4], self.rip, self.get_rflags())
        try:
            return fn(*args)
        except BaseException:
            segs, self.regs[4], self.rip, rflags = saved
            self.seg[:] = segs
            self.set_rflags(rflags)
            self.refresh()
            raise

    # ------------------------------------------------------------------ far transfers
    def far_jump(self, sel, off, size, next_ip=None):
        """JMP far: to a code segment, through a call gate, or a task switch (``next_ip`` is
        saved in the old TSS)."""
        sel &= 0xFFFF
        if not self.cr0 & CR0_PE or self.flags & VM:
            self.set_real_seg(CS, sel)
            self.rip = off & M[size]
            self.refresh()
            return
        self.atomically(self._far_transfer, sel, off, size, None, next_ip)

    def far_call(self, sel, off, size, ret_ip):
        sel &= 0xFFFF
        if not self.cr0 & CR0_PE or self.flags & VM:
            self._push([self.seg[CS].selector, ret_ip & M[size]], size)
            self.far_jump(sel, off, size)
            return
        self.atomically(self._far_transfer, sel, off, size, ret_ip, ret_ip)

    def _far_transfer(self, sel, off, size, ret_ip, next_ip):
        """Protected-mode far JMP (``ret_ip`` None) or CALL: dispatch on the descriptor type."""
        if sel & ~3 == 0:
            raise Fault(13, 0)
        long_mode = bool(self.efer & EFER_LMA)
        d, _ = self.read_descriptor(sel)
        tmp = parse_descriptor(d, Segment(), sel)
        cpl = self.mode.cpl
        if tmp.s:
            self._check_code_target(tmp, sel, cpl)
            if ret_ip is not None:
                self._push([self.seg[CS].selector, ret_ip & M[size]], size)
            self._load_cs(sel, cpl)
            self.refresh()
            self.rip = off & M[self.mode.code if self.mode.code == 8 else size]
            return
        if tmp.type == 0xC or (tmp.type == 4 and not long_mode):
            self._call_gate(sel, d, ret_ip)
            return
        if tmp.type in (5, 9) and not long_mode:       # task gate, available 32-bit TSS
            if tmp.dpl < max(cpl, sel & 3):
                raise Fault(13, sel & ~3)
            if not tmp.present:
                raise Fault(11, sel & ~3)
            tss_sel = (d >> 16) & 0xFFFF if tmp.type == 5 else sel
            tasks.task_switch(self, tss_sel, tasks.CALL if ret_ip is not None else tasks.JMP, next_ip)
            return
        raise Fault(13, sel & ~3)       # busy or 16-bit TSS, LDT, interrupt gates; all but 64-bit gates in long mode

    @staticmethod
    def _check_code_target(tmp, sel, cpl):
        if not tmp.type & 8:
            raise Fault(13, sel & ~3)
        if tmp.type & 4:
            if tmp.dpl > cpl:
                raise Fault(13, sel & ~3)
        elif (sel & 3) > cpl or tmp.dpl != cpl:
            raise Fault(13, sel & ~3)

    def _call_gate(self, gate_sel, gate, ret_ip):
        """Far CALL/JMP through a call gate (SDM vol. 3 5.8.4-5.8.6; APM vol. 2 4.11.4).

        16- and 32-bit gates in protected mode, 64-bit (16-byte) gates in long mode.  A CALL
        to a more privileged non-conforming segment switches to the TSS stack of the new
        level and copies the gate's parameter count of operands from the old one (none
        through a 64-bit gate); a JMP never changes privilege.
        """
        cpl = self.mode.cpl
        gerr = gate_sel & ~3
        gdpl = (gate >> 45) & 3
        if gdpl < cpl or gdpl < (gate_sel & 3):
            raise Fault(13, gerr)
        if not (gate >> 47) & 1:
            raise Fault(11, gerr)
        offset = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF0000)
        if self.efer & EFER_LMA:
            wide, _ = self.read_descriptor(gate_sel, wide=True)
            if (wide >> 104) & 0x1F:
                raise Fault(13, gerr)
            offset |= ((wide >> 64) & 0xFFFFFFFF) << 32
            size = 8
        else:
            size = 4 if (gate >> 43) & 1 else 2
            offset &= M[size]
        cs_sel = (gate >> 16) & 0xFFFF
        if cs_sel & ~3 == 0:
            raise Fault(13, 0)
        err = cs_sel & ~3
        d, _ = self.read_descriptor(cs_sel)
        tcs = parse_descriptor(d, Segment(), cs_sel)
        if not tcs.s or not tcs.type & 8 or tcs.dpl > cpl:
            raise Fault(13, err)
        if ret_ip is None and not tcs.type & 4 and tcs.dpl != cpl:
            raise Fault(13, err)
        if not tcs.present:
            raise Fault(11, err)
        if self.efer & EFER_LMA and (not tcs.l or tcs.db):
            raise Fault(13, err)
        new_cpl = cpl if tcs.type & 4 else tcs.dpl
        if ret_ip is None:
            self._load_cs(cs_sel, cpl)
        elif new_cpl < cpl:
            old_ss, old_sp, old_cs = self.seg[SS].selector, self.regs[4], self.seg[CS].selector
            params = self._gate_params((gate >> 32) & 0x1F if size != 8 else 0, size)
            self._load_cs(cs_sel, new_cpl)
            self.refresh()
            self._switch_stack(new_cpl)
            self._push([old_ss, old_sp & M[size]] + params + [old_cs, ret_ip & M[size]], size)
        else:
            self._push([self.seg[CS].selector, ret_ip & M[size]], size)
            self._load_cs(cs_sel, cpl)
        self.refresh()
        self.rip = offset

    def _gate_params(self, count, size):
        """The ``count`` operands a call gate copies, first-pushed first."""
        st = self.mode.stack
        base = self.sbase[SS] if self.mode.code != 8 else 0
        sp = self.regs[4]
        return [self.read_slow(base + ((sp + size * k) & M[st]), size) for k in reversed(range(count))]

    def far_ret(self, size, imm):
        if not self.cr0 & CR0_PE or self.flags & VM:
            (ip, sel), sp = self._pop(size, 2)
            self._set_sp((sp + imm) & M[self.mode.stack], self.mode.stack)
            self.far_jump(sel, ip, size)
            return
        self.atomically(self._far_ret, size, imm)

    def _far_ret(self, size, imm):
        """Protected-mode RET far, to the same or an outer privilege level."""
        (ip, sel), sp = self._pop(size, 2)
        sel &= 0xFFFF
        cpl = self.mode.cpl
        rpl = sel & 3
        if rpl < cpl:
            raise Fault(13, sel & ~3)
        if rpl > cpl:
            base = self.sbase[SS] if self.mode.code != 8 else 0
            st = self.mode.stack
            new_sp = self.read_slow(base + ((sp + imm) & M[st]), size)
            new_ss = self.read_slow(base + ((sp + imm + size) & M[st]), size) & 0xFFFF
            self._load_cs(sel, rpl)
            self.refresh()
            self.load_seg(SS, new_ss)
            self.regs[4] = (new_sp + imm) & M[self.mode.stack]
            self._invalidate_data_segs(rpl)
        else:
            self._load_cs(sel, cpl)
            self._set_sp((sp + imm) & M[self.mode.stack], self.mode.stack)
        self.refresh()
        self.rip = ip & M[size]

    def _invalidate_data_segs(self, cpl):
        for i in (0, 3, 4, 5):
            s = self.seg[i]
            if (s.type & 0xC) != 0xC and s.dpl < cpl and not s.unusable:
                s.selector, s.unusable, s.present = 0, 1, 0

    def iret(self, size, next_ip=None):
        """IRET: real mode, virtual-8086 mode (IOPL 3 only), task return (NT=1, legacy
        protected mode; ``next_ip`` is saved in the returning task's TSS), or a return
        within protected/long mode, possibly to an outer level or to virtual-8086 mode."""
        if not self.cr0 & CR0_PE or self.flags & VM:
            if self.flags & VM and (self.flags >> 12) & 3 < 3:
                raise Fault(13, 0)
            (ip, sel, fl), sp = self._pop(size, 3)
            self._set_sp(sp, self.mode.stack)
            self.far_jump(sel, ip, size)
            self._iret_flags(fl, size, 3 if self.flags & VM else 0)
            self.nmi_masked = False
            return
        if self.get_rflags() & NT and not self.efer & EFER_LMA:
            back_link = self._tss_read(0, 2)
            tasks.task_switch(self, back_link, tasks.IRET, next_ip)
            return
        self.atomically(self._iret_protected, size)

    def _iret_protected(self, size):
        cpl = self.mode.cpl
        long64 = self.mode.code == 8
        (ip, sel, fl), sp = self._pop(size, 3)
        sel &= 0xFFFF
        if fl & VM and cpl == 0 and size == 4 and not self.efer & EFER_LMA:
            self._iret_to_vm86(ip, sel, fl)
            return
        rpl = sel & 3
        if rpl < cpl:
            raise Fault(13, sel & ~3)
        if rpl > cpl or long64:
            base = self.sbase[SS] if not long64 else 0
            st = self.mode.stack
            new_sp = self.read_slow(base + (sp & M[st]), size)
            new_ss = self.read_slow(base + ((sp + size) & M[st]), size) & 0xFFFF
            self._load_cs(sel, rpl)
            self._iret_flags(fl, size, cpl)
            self.refresh()
            self.load_seg(SS, new_ss)
            self.regs[4] = new_sp & M[self.mode.stack if self.mode.code != 8 else 8]
            if rpl > cpl:
                self._invalidate_data_segs(rpl)
        else:
            self._load_cs(sel, cpl)
            self._set_sp(sp, self.mode.stack)
            self._iret_flags(fl, size, cpl)
        self.refresh()
        self.rip = ip & M[size]
        self.nmi_masked = False

    def _iret_to_vm86(self, ip, cs, fl):
        """32-bit IRET from CPL 0 with VM=1 in the popped EFLAGS (SDM IRET, RETURN-TO-VIRTUAL-
        8086-MODE): the frame continues with ESP, SS, ES, DS, FS, GS; all of EFLAGS loads."""
        esp, ss, es, ds, fs, gs = self._pop(4, 9)[0][3:]
        self.set_rflags(fl)
        for sreg, sel in ((CS, cs), (SS, ss), (ES, es), (DS, ds), (FS, fs), (GS, gs)):
            self.set_real_seg(sreg, sel)
        self.regs[4] = esp & 0xFFFFFFFF
        self.refresh()
        self.rip = ip & 0xFFFF
        self.nmi_masked = False

    def _iret_flags(self, fl, size, cpl):
        old = self.get_rflags()
        mask = 0x3F7FD5 & ~(VM | 0x180000)
        if cpl > 0:
            mask &= ~0x3000
            if cpl > (old >> 12) & 3:
                mask &= ~IF
        if size == 2:
            mask &= 0xFFFF
        self.set_rflags((old & ~mask) | (fl & mask))

    def enter(self, alloc, level, size):
        st = self.mode.stack
        bp = self.regs[5]
        self._push([bp & M[size]], size)
        frame = self.regs[4] & M[st]
        base = self.sbase[SS] if self.mode.code != 8 else 0
        for _ in range(1, level):
            bp = (bp - size) & M[st]
            self._push([self.read_slow(base + bp, size)], size)
        if level:
            self._push([frame & M[size]], size)
        if size == 2:
            self.regs[5] = (self.regs[5] & ~0xFFFF) | (frame & 0xFFFF)
        else:
            self.regs[5] = frame & M[size]
        self._set_sp((self.regs[4] - alloc) & M[st], st)

    # ------------------------------------------------------------------ event delivery
    def enter_handler(self, vector, kind, error_code, next_ip):
        """Deliver one event; all or nothing (see ``atomically``).  A task gate in the IDT
        switches tasks instead; that switch handles its own faults past its commit point."""
        self.atomically(self._enter_handler, vector, kind, error_code, next_ip)

    def _enter_handler(self, vector, kind, error_code, next_ip):
        ret_ip = self.rip if next_ip is None else next_ip
        ext = 1 if kind in (EXT_INTR, NMI, HW_EXC) else 0
        idt_err = vector * 8 + 2 + ext
        if not self.cr0 & CR0_PE:
            if vector * 4 + 3 > self.idt_limit:
                raise Fault(13, idt_err)
            ent = self.read_sys(self.idt_base + vector * 4, 4)
            fl = self.get_rflags()
            self._push([fl & 0xFFFF, self.seg[CS].selector, ret_ip & 0xFFFF], 2)
            self.set_rflags(fl & ~(IF | TF | AC | RF))
            self.set_real_seg(CS, ent >> 16)
            self.rip = ent & 0xFFFF
            if vector == 2 and kind == NMI:
                self.nmi_masked = True          # NMIs are blocked until the next IRET
            return
        long_mode = bool(self.efer & EFER_LMA)
        gsize = 16 if long_mode else 8
        if vector * gsize + gsize - 1 > self.idt_limit:
            raise Fault(13, idt_err)
        gate = self.read_sys(self.idt_base + vector * gsize, 8)
        gtype = (gate >> 40) & 0xF
        gdpl = (gate >> 45) & 3
        if gtype not in ((0xE, 0xF) if long_mode else (5, 6, 7, 0xE, 0xF)):
            raise Fault(13, idt_err)
        if kind in (SW_INT, SW_EXC) and gdpl < self.mode.cpl:
            raise Fault(13, vector * 8 + 2)
        if not (gate >> 47) & 1:
            raise Fault(11, idt_err)
        sel = (gate >> 16) & 0xFFFF
        if gtype == 5:
            tasks.task_switch(self, sel, tasks.INT, ret_ip, error_code=error_code, ext=ext)
            return
        offset = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF0000)
        if long_mode:
            offset |= self.read_sys(self.idt_base + vector * 16 + 8, 4) << 32
        if sel & ~3 == 0:
            raise Fault(13, ext)
        d, _ = self.read_descriptor(sel, error_code=(sel & ~3) + ext)
        tcs = parse_descriptor(d, Segment(), sel)
        if not tcs.s or not tcs.type & 8 or tcs.dpl > self.mode.cpl:
            raise Fault(13, (sel & ~3) + ext)
        if not tcs.present:
            raise Fault(11, (sel & ~3) + ext)
        if long_mode and (not tcs.l or tcs.db):
            raise Fault(13, (sel & ~3) + ext)
        old_cpl = self.mode.cpl
        new_cpl = old_cpl if tcs.type & 4 else tcs.dpl
        fl = self.get_rflags()
        vm86 = bool(fl & VM)
        if vm86 and new_cpl != 0:
            raise Fault(13, (sel & ~3) + ext)    # from virtual-8086 mode only to a ring-0 handler
        size = 8 if long_mode else (4 if gtype & 8 else 2)
        frame = [fl & M[size], self.seg[CS].selector, ret_ip & M[size]]
        if error_code is not None:
            frame.append(error_code)
        old_ss, old_sp = self.seg[SS].selector, self.regs[4]
        if long_mode or new_cpl < old_cpl:
            frame = [old_ss, old_sp & M[size]] + frame
        if vm86:
            frame = [self.seg[i].selector for i in (GS, FS, DS, ES)] + frame
            self.set_rflags(fl & ~VM)
        self._load_cs(sel, new_cpl)
        self.refresh()
        if long_mode:
            ist = (gate >> 32) & 7
            if ist or new_cpl < old_cpl:
                self.regs[4] = self._tss_read(0x24 + 8 * (ist - 1) if ist else 4 + 8 * new_cpl, 8, ext)
                if new_cpl < old_cpl:
                    self.set_null_seg(SS, new_cpl, dpl=new_cpl)
            self.regs[4] &= ~0xF
            self.refresh()
        elif new_cpl < old_cpl:
            self._switch_stack(new_cpl, ext)
        self._push(frame, size)
        if vm86:
            for i in (GS, FS, DS, ES):
                self.set_null_seg(i, 0, dpl=0)
        clear = TF | NT | RF | VM
        if not gtype & 1:
            clear |= IF
        self.set_rflags(fl & ~clear)
        self.rip = offset & M[size]
        if vector == 2 and kind == NMI:
            self.nmi_masked = True
