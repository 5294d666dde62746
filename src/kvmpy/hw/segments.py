"""Segmentation and event delivery: descriptor loads, far transfers, IRET, IDT/IVT.

These are the processor's rare, complicated paths; translated code calls them
as helpers.  They follow SDM vol. 3 chapters 3, 5 and 6 (and AMD APM vol. 2
chapter 8 for long mode), with their checks and faults.  Task switches, call
gates and virtual-8086 IRET are not implemented: they raise #GP.
"""

from __future__ import annotations

from .events import Fault
from .state import AC, CR0_PE, CS, EFER_LMA, IF, NT, RF, SS, TF, VM, Segment

M = {2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}
EXT_INTR, NMI, HW_EXC, SW_INT, PRIV_SW_EXC, SW_EXC = 0, 2, 3, 4, 5, 6


def parse_descriptor(d: int, seg: Segment, selector: int) -> Segment:
    lo, hi = d & 0xFFFFFFFF, d >> 32
    seg.selector = selector
    seg.base = ((lo >> 16) & 0xFFFF) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    seg.g = (hi >> 23) & 1
    seg.limit = (limit << 12) | 0xFFF if seg.g else limit
    seg.type = (hi >> 8) & 0xF
    seg.s = (hi >> 12) & 1
    seg.dpl = (hi >> 13) & 3
    seg.present = (hi >> 15) & 1
    seg.avl = (hi >> 20) & 1
    seg.l = (hi >> 21) & 1
    seg.db = (hi >> 22) & 1
    seg.unusable = 0
    return seg


class SegmentUnit:
    """Mixin for Processor: everything that loads CS/SS or walks the IDT."""

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
    def read_descriptor(self, sel, error_code=None, wide=False):
        table_base, table_limit = (self.ldtr.base, self.ldtr.limit) if sel & 4 else (self.gdt_base, self.gdt_limit)
        idx = sel & ~7
        err = (sel & ~3) if error_code is None else error_code
        if sel & 4 and self.ldtr.unusable:
            raise Fault(13, err)
        if idx + (15 if wide else 7) > table_limit:
            raise Fault(13, err)
        addr = table_base + idx
        d = self.read_slow(addr, 8)
        if wide:
            d |= self.read_slow(addr + 8, 8) << 64
        return d, addr

    def _set_accessed(self, addr, d):
        if not d & (1 << 40):
            self.write_slow(addr + 5, 1, ((d >> 40) & 0xFF) | 1)

    def load_seg(self, sreg, sel):
        """MOV/POP to a segment register (and LDS/LES/LSS/LFS/LGS)."""
        sel &= 0xFFFF
        seg = self.seg[sreg]
        if not self.cr0 & CR0_PE or self.flags & VM:
            seg.selector, seg.base = sel, sel << 4
            if self.flags & VM:
                seg.limit, seg.dpl, seg.type, seg.present, seg.s, seg.db = 0xFFFF, 3, 3, 1, 1, 0
            self.sbase[sreg] = seg.base
            if sreg == SS:
                self.refresh()
            return
        cpl = self.mode.cpl
        if sel & ~3 == 0:
            if sreg == SS and not (self.mode.code == 8 and cpl < 3 and (sel & 3) == cpl):
                raise Fault(13, 0)
            seg.selector, seg.unusable, seg.present = sel, 1, 0
            if sreg == SS:
                seg.dpl = cpl
                self.refresh()
            return
        d, addr = self.read_descriptor(sel)
        tmp = parse_descriptor(d, Segment(), sel)
        rpl = sel & 3
        if sreg == SS:
            if rpl != cpl or tmp.dpl != cpl or not tmp.s or tmp.type & 0xA != 2:
                raise Fault(13, sel & ~3)
            if not tmp.present:
                raise Fault(12, sel & ~3)
        else:
            if not tmp.s or (tmp.type & 0xA) == 8:       # system, or execute-only code
                raise Fault(13, sel & ~3)
            if (tmp.type & 0xC) != 0xC and (rpl > tmp.dpl or cpl > tmp.dpl):   # data or non-conforming
                raise Fault(13, sel & ~3)
            if not tmp.present:
                raise Fault(11, sel & ~3)
        self._set_accessed(addr, d)
        tmp.type |= 1
        self.seg[sreg] = tmp
        self.sbase[sreg] = tmp.base
        if sreg == SS:
            self.refresh()

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

    # ------------------------------------------------------------------ far transfers
    def far_jump(self, sel, off, size):
        sel &= 0xFFFF
        if not self.cr0 & CR0_PE or self.flags & VM:
            cs = self.seg[CS]
            cs.selector, cs.base = sel, sel << 4
            self.rip = off & M[size]
            self.refresh()
            return
        self._check_code_target(sel)
        self._load_cs(sel, self.mode.cpl)
        self.refresh()
        self.rip = off & M[self.mode.code if self.mode.code == 8 else size]

    def _check_code_target(self, sel):
        if sel & ~3 == 0:
            raise Fault(13, 0)
        d, _ = self.read_descriptor(sel)
        tmp = parse_descriptor(d, Segment(), sel)
        cpl = self.mode.cpl
        if not tmp.s:
            raise Fault(13, sel & ~3)       # call gates and task switches are not implemented
        if not tmp.type & 8:
            raise Fault(13, sel & ~3)
        if tmp.type & 4:
            if tmp.dpl > cpl:
                raise Fault(13, sel & ~3)
        elif (sel & 3) > cpl or tmp.dpl != cpl:
            raise Fault(13, sel & ~3)

    def far_call(self, sel, off, size, ret_ip):
        if self.cr0 & CR0_PE and not self.flags & VM:
            self._check_code_target(sel)
        self._push([self.seg[CS].selector, ret_ip & M[size]], size)
        self.far_jump(sel, off, size)

    def far_ret(self, size, imm):
        (ip, sel), sp = self._pop(size, 2)
        sel &= 0xFFFF
        if not self.cr0 & CR0_PE or self.flags & VM:
            self._set_sp((sp + imm) & M[self.mode.stack], self.mode.stack)
            self.far_jump(sel, ip, size)
            return
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

    def iret(self, size):
        if not self.cr0 & CR0_PE:
            (ip, sel, fl), sp = self._pop(size, 3)
            self._set_sp(sp, self.mode.stack)
            self.far_jump(sel, ip, size)
            self._iret_flags(fl, size, 0)
            return
        if self.flags & VM:
            raise Fault(13, 0)
        if self.get_rflags() & NT and not self.efer & EFER_LMA:
            raise Fault(13, 0)               # task return: not implemented
        cpl = self.mode.cpl
        long64 = self.mode.code == 8
        (ip, sel, fl), sp = self._pop(size, 3)
        sel &= 0xFFFF
        rpl = sel & 3
        if rpl < cpl:
            raise Fault(13, sel & ~3)
        if fl & VM and cpl == 0:
            raise Fault(13, 0)               # return to virtual-8086 mode: not implemented
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
        """Deliver one event; all or nothing, like the silicon's event delivery.

        A fault or a VM exit (an EPT violation on the new stack, say) can strike after CS or
        SS were already switched; the instruction is then restarted, or the nested fault
        delivered, from the state before the event, never from a half-entered handler.
        """
        saved = ([s.copy() for s in self.seg], self.regs[4], self.rip, self.get_rflags())
        try:
            self._enter_handler(vector, kind, error_code, next_ip)
        except BaseException:
            segs, self.regs[4], self.rip, rflags = saved
            self.seg[:] = segs
            self.set_rflags(rflags)
            self.refresh()
            raise

    def _enter_handler(self, vector, kind, error_code, next_ip):
        ret_ip = self.rip if next_ip is None else next_ip
        ext = 1 if kind in (EXT_INTR, NMI, HW_EXC) else 0
        idt_err = vector * 8 + 2 + ext
        if not self.cr0 & CR0_PE:
            if vector * 4 + 3 > self.idt_limit:
                raise Fault(13, idt_err)
            ent = self.read_slow(self.idt_base + vector * 4, 4)
            fl = self.get_rflags()
            self._push([fl & 0xFFFF, self.seg[CS].selector, ret_ip & 0xFFFF], 2)
            self.set_rflags(fl & ~(IF | TF | AC | RF))
            cs = self.seg[CS]
            cs.selector, cs.base = ent >> 16, (ent >> 16) << 4
            self.sbase[CS] = cs.base
            self.rip = ent & 0xFFFF
            return
        long_mode = bool(self.efer & EFER_LMA)
        gsize = 16 if long_mode else 8
        if vector * gsize + gsize - 1 > self.idt_limit:
            raise Fault(13, idt_err)
        gate = self.read_slow(self.idt_base + vector * gsize, 8)
        gtype = (gate >> 40) & 0xF
        gdpl = (gate >> 45) & 3
        if gtype not in ((0xE, 0xF) if long_mode else (6, 7, 0xE, 0xF)):
            raise Fault(13, idt_err)
        if kind in (SW_INT, SW_EXC) and gdpl < self.mode.cpl:
            raise Fault(13, vector * 8 + 2)
        if not (gate >> 47) & 1:
            raise Fault(11, idt_err)
        offset = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF0000)
        if long_mode:
            offset |= self.read_slow(self.idt_base + vector * 16 + 8, 4) << 32
        sel = (gate >> 16) & 0xFFFF
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
        old_ss, old_sp = self.seg[SS].selector, self.regs[4]
        old_cs = self.seg[CS].selector
        if long_mode:
            ist = (gate >> 32) & 7
            if ist or new_cpl < old_cpl:
                tss_off = 0x24 + 8 * (ist - 1) if ist else 4 + 8 * new_cpl
                new_sp = self.read_slow(self.tr.base + tss_off, 8)
            else:
                new_sp = old_sp
            new_sp &= ~0xF
            frame = [old_ss, old_sp, fl, old_cs, ret_ip]
            if error_code is not None:
                frame.append(error_code)
            self._load_cs(sel, new_cpl)
            if new_cpl < old_cpl:
                ss = self.seg[SS]
                ss.selector, ss.unusable, ss.present, ss.dpl, ss.base = new_cpl, 1, 0, new_cpl, 0
            self.regs[4] = new_sp
            self.refresh()
            self._push(frame, 8)
        else:
            size = 4 if gtype & 8 else 2
            frame = [fl & M[size], old_cs, ret_ip & M[size]]
            if error_code is not None:
                frame.append(error_code)
            if new_cpl < old_cpl:
                t = 4 + 8 * new_cpl
                new_sp = self.read_slow(self.tr.base + t, 4)
                new_ss = self.read_slow(self.tr.base + t + 4, 2)
                self._load_cs(sel, new_cpl)
                self.refresh()
                self.load_seg(SS, new_ss)
                self.regs[4] = new_sp
                frame = [old_ss, old_sp & M[size]] + frame
            else:
                self._load_cs(sel, new_cpl)
                self.refresh()
            self._push(frame, size)
            offset &= M[size]
        clear = TF | NT | RF | VM
        if not gtype & 1:
            clear |= IF
        self.set_rflags(fl & ~clear)
        self.rip = offset
        if vector == 2 and kind == NMI:
            self.nmi_masked = True
