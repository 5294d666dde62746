"""The software x86-64 processor: kvmpy's "silicon".

``Processor.run(budget)`` is VM entry: it injects a pending event, executes
guest code until something the hypervisor must see happens, and returns that VM
exit in the vendor's format (``kvmpy.hw.virt.vmx`` / ``kvmpy.hw.virt.svm``), exactly as
VMX non-root operation or SVM guest mode would.

Execution is block by block: code is translated once into Python functions
(``kvmpy.hw.translate.codegen``) cached by RIP and checked against CS base, mode and
physical address; guest memory is reached through software TLBs filled from
either the guest page tables plus KVM's second-level table (TDP: ``ept``), or
from KVM's shadow page table alone (``shadow``).
"""

from __future__ import annotations

import sys

from kvmpy.hw import insn  # noqa: F401  (insn registers the emitters)
from kvmpy.hw.translate import codegen
from kvmpy.hw.virt import entry
from . import flags as lazy
from . import memory as hm
from kvmpy.hw import features, models, paging
from kvmpy.hw.system import sysops as system
from kvmpy.hw.translate.decoder import DecodeError, decode
from .events import HAS_ERROR_CODE, HW_EXC, NMI, PRIV_SW_EXC, SW_EXC, SW_INT, Fault, Intercept, is_double_fault
from kvmpy.hw.system.segments import SegmentUnit
from .state import CPUState
from kvmpy.hw.x86defs import (AC, CF, CR0_PE, CR0_PG, CR4_PAE, DR6_BD, DR6_BS, DR7_GD, DR7_LEN_SHIFT, DR7_RW_SHIFT, EFER_LMA,
                              EFER_LME, IF, NT, RF, TF, VM, RFLAGS_WRITABLE, SS, CS)

class FetchTLB(dict):
    """The instruction-fetch TLB (linear page -> guest-physical page).

    Chained blocks (``Block.succ``) skip the fetch-TLB lookup, so every removal or
    change of an entry -- flushes, INVLPG from the guest or from KVM's MMU --
    invalidates all chains by bumping the owner's ``chain_gen``.
    """

    __slots__ = ("owner",)

    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def _changed(self):
        self.owner.chain_gen += 1

    def pop(self, *args):
        self._changed()
        return super().pop(*args)

    def clear(self):
        self._changed()
        super().clear()

    def __delitem__(self, key):
        self._changed()
        super().__delitem__(key)

    def __setitem__(self, key, value):
        if self.get(key, value) != value:
            self._changed()
        super().__setitem__(key, value)


_ALL_CODE = b"\1" * 0x1000     # a page's code_bytes when not known: every byte may hold code
GBPAGES = features.implemented("pdpe1gb")     # 1-GByte pages in the processor's own walk


class _SingleStep(Exception):
    """RFLAGS.TF or RF became set during a chain of blocks: go on one instruction at a time."""


class _Rewind(Exception):
    """An instruction run in a block touched a data breakpoint: roll back to it and run it
    on its own (``_step``), which traps after it."""


SINGLE_BLOCKS_MAX = 4096   # _run_one translations kept (a bound, not a working-set size)
HOST_TICK = 8192           # instructions between two looks at the host's interrupt line
DELIVERY_TICK = 16         # exception deliveries between two looks (each retires nothing; one
                           # that faults on a slot or an MMIO page costs a millisecond or more)


def _no_host_interrupt():
    return False


class Processor(CPUState, SegmentUnit):
    """One logical processor.  ``exit_format`` is the vendor's VM-exit encoder; ``model`` the
    CPU model (``kvmpy.hw.models``) whose vendor-specific behaviours it has."""

    def __init__(self, exit_format, model=None):
        super().__init__()
        self.exit_format = exit_format
        self.model = model or models.MODELS[models.DEFAULT_FOR_MODULE["vmx"]]
        # --- controls set by the vendor module (VMCS/VMCB execution controls) ---
        self.tdp = True                 # EPT/NPT enabled: walk guest tables + second level
        self.ept = {}                   # gfn -> host address of the page (KVM's TDP table)
        self.ept_ro = set()             # gfns mapped read-only (read-only slots, dirty logging)
        self.shadow = {}                # lpn -> (host page, writable, user) (shadow paging)
        self.exception_bitmap = 0
        self.intercept_cr3 = False
        self.intercept_invlpg = False
        self.intercept_cr0_cr4 = False
        self.intercept_cr8 = False      # CR8 writes exit (an interrupt waits behind the TPR)
        # PAUSE-loop exiting: asked at each PAUSE (a callable, or None); True makes the PAUSE
        # a VM exit, so that a vCPU spinning on a lock gives way to the one holding it
        self.pause_exiting = None
        self.intercept_dr = False       # MOV-DR exiting (VMX) / DR read and write intercepts (SVM)
        self.intr_window_exiting = False
        # "enable RDTSCP" (VMX): RDTSCP and RDPID are #UD without it
        self.rdtscp_enabled = True
        # NMI-window exiting (VMX): exit at the first instruction boundary without NMI
        # blocking (the IRET that ends an NMI handler lifts it) or STI / MOV SS shadow
        self.nmi_window_exiting = False
        # a virtual NMI held pending (SVM's vNMI, V_NMI_PENDING): the processor itself delivers
        # it at that boundary, with no exit
        self.vnmi_pending = False
        self.pending_event = None       # (type, vector, error_code) injected on entry
        self.exit_request = False       # set from another thread (request_exit): leave guest mode
        # the host's interrupt line (external-interrupt exiting): asked every HOST_TICK
        # instructions, before each translation, after a long REP chunk and every
        # DELIVERY_TICK event deliveries;
        # True ends the entry with a preemption exit (kvm_vcpu_exit_request on the kernel side)
        self.host_interrupt = _no_host_interrupt
        # the host's TSC, as the hypervisor scales it for the guest (a callable, the TSC the
        # guest reads before the offset in ``tsc``); None: one tick per retired instruction
        self.host_tsc = None
        # --- internal ---
        self.icount = 0
        self.entry_checked = None        # (state, answer) of the last entry's static checks (entry.py)
        self.entry_limit = 0             # icount at which the current VM entry ends (run)
        self.sbase = [0] * 6
        self.chain_csb = 0
        self.fetch_limit = 0            # the highest EIP code may be fetched from (CS limit)
        self.chain_gen = 0              # bumped whenever a block chain may have gone stale
        self.tlb_r, self.tlb_w, self.tlb_x = {}, {}, FetchTLB(self)
        self.tlb_supervisor = False
        self.code = {}                  # rip -> Block
        self.code_pages = {}            # gfn -> set of block rips translated from it
        self.code_bytes = {}            # gfn -> 4096 flags: bytes code was translated from
        self.epoch = 0
        self.modes = {}
        self.mode = None
        self.paging_key = None
        self.events_delivered = 0       # deliveries begun (a single-step trap follows none)
        self.delivering = []            # (kind, vector, error code, next ip) of the events being
                                        # delivered, innermost last (double faults, vectoring info)
        # DR7's enabled breakpoints (debug_refresh): instruction ones as (address, DR6 bit), data
        # ones as (first byte, end, DR6 bit, writes only); the pages of the data ones, kept out
        # of the read/write TLBs so that every access to them is seen; hits of this instruction
        self.code_bps, self.data_bps, self.watch_pages, self.data_hits = (), (), frozenset(), 0
        self.stepping = False           # in _step: data breakpoint hits are recorded, not rewound
        self.step_next = False          # the next instruction must run on its own (_step)
        self.single_blocks = {}         # _run_one's translations: (bytes, rip, CS base, mode)
        self.ns = self._namespace()
        self.refresh()

    # ------------------------------------------------------------------ namespace
    def _namespace(self) -> dict:
        """Globals of translated code: registers, TLBs and the slow-path helpers."""
        return {
            "cpu": self, "R": self.regs, "SB": self.sbase, "TR": self.tlb_r, "TW": self.tlb_w,
            "U16": hm.U16, "U32": hm.U32, "U64": hm.U64, "P8": hm.P8, "P16": hm.P16, "P32": hm.P32,
            "P64": hm.P64, "rd": self.read_slow, "wr": self.write_slow, "probe_w": self.probe_write,
            "raise_ud": self.raise_ud, "cf_of": self.carry_flag, "raise_fault": self.raise_fault, "setfl": self.set_some_flags,
            "pushf_value": self.pushf_value, "popf_value": self.popf_value, "load_seg": self.load_seg,
            "far_jump": self.far_jump, "far_call": self.far_call, "far_ret": self.far_ret, "iret": self.iret,
            "enter": self.enter, "software_interrupt": self.software_interrupt, "intercept": self.intercept,
            "io_in": self.io_in, "io_out": self.io_out, "sys": self.system, "pause": self.pause,
        }

    # ------------------------------------------------------------------ state sync
    def refresh(self):
        """Recompute what translated code depends on, after any change of state."""
        for i in range(6):
            self.sbase[i] = self.seg[i].base
        cs, ss = self.seg[CS], self.seg[SS]
        lma = bool(self.efer & EFER_LMA)
        pe = bool(self.cr0 & CR0_PE)
        vm86 = pe and bool(self.flags & VM)
        code = 8 if lma and cs.l else (4 if pe and not vm86 and cs.db else 2)
        stack = 8 if code == 8 else (4 if pe and not vm86 and ss.db else 2)
        cpl = (3 if vm86 else cs.dpl) if pe else 0
        key = (code, stack, lma, cpl, pe, vm86)
        mode = self.modes.get(key)
        if mode is None:
            mode = self.modes[key] = codegen.Mode(*key)
        if self.mode is not None and cpl == 3 and self.mode.cpl != 3 and self.tlb_supervisor:
            self.flush_tlb()
        # code fetches beyond the CS limit are #GP(0) (no limit in 64-bit mode)
        fetch_limit = cs.limit if code != 8 else 0xFFFFFFFFFFFFFFFF
        if mode is not self.mode or self.sbase[CS] != self.chain_csb or fetch_limit != self.fetch_limit:
            self.chain_gen += 1
            self.chain_csb = self.sbase[CS]
            self.fetch_limit = fetch_limit
        self.mode = mode
        pk = (self.cr0 & 0x80010001, self.cr3, self.cr4, self.efer, self.tdp)
        if pk != self.paging_key:
            self.paging_key = pk
            self.flush_tlb()
        self.debug_refresh()

    def debug_refresh(self):
        """DR7's enabled breakpoints (SDM 18.2.4), as the processor matches them: instruction
        breakpoints (R/W 00) before an instruction at the address runs, data breakpoints
        (01 writes, 11 reads and writes; LEN 1, 2, 8 or 4 bytes, aligned) after an
        instruction that touched one of the bytes.  I/O breakpoints (R/W 10) are not
        implemented.  Blocks run as usual: one holding an instruction breakpoint's address,
        and an instruction that touches a data breakpoint (rolled back), run one instruction
        at a time (``_step``)."""
        dr7 = self.dr[7]
        code, data = [], []
        for n in range(4):
            if not dr7 >> 2 * n & 3:
                continue
            rw = dr7 >> (DR7_RW_SHIFT + 4 * n) & 3
            if rw == 0:
                code.append((self.dr[n], 1 << n))
            elif rw != 2:
                size = (1, 2, 8, 4)[dr7 >> (DR7_LEN_SHIFT + 4 * n) & 3]
                lo = self.dr[n] & ~(size - 1)
                data.append((lo, lo + size, 1 << n, rw == 1))
        pages = frozenset(a >> 12 for lo, hi, _, _ in data for a in (lo, hi - 1))
        if pages != self.watch_pages:
            self.watch_pages = pages
            self.flush_tlb()
        if tuple(code) != self.code_bps:
            self.chain_gen += 1             # a chained block may hold a new breakpoint
        self.code_bps, self.data_bps = tuple(code), tuple(data)

    def _breakpoint_in(self, b) -> bool:
        """Does block ``b`` hold an instruction an instruction breakpoint is on?"""
        mask = 0xFFFFFFFFFFFFFFFF if self.mode.code == 8 else 0xFFFFFFFF
        return any(addr & mask in b.starts for addr, _ in self.code_bps)

    def set_rflags(self, value: int) -> None:
        super().set_rflags(value)
        if value & (TF | RF):
            self.chain_gen += 1     # single-stepping: the block chain ends, see lookup_block

    def request_exit(self):
        """An IPI from another thread (KVM's kick): exit at the next block boundary.  Breaking
        the block chains sends the run loop through ``lookup_block``, which checks the flag,
        so the loop itself pays nothing for it."""
        self.exit_request = True
        self.chain_gen += 1

    def flush_tlb(self):
        self.tlb_r.clear()
        self.tlb_w.clear()
        self.tlb_x.clear()
        self.tlb_supervisor = False

    def flush_code(self):
        self.chain_gen += 1
        self.single_blocks.clear()
        self.code.clear()
        self.code_pages.clear()
        self.code_bytes.clear()
        self.flush_tlb()

    # ------------------------------------------------------------------ flags helpers
    def carry_flag(self):
        """CF (0/1) from the lazy flags, without materialising RFLAGS."""
        op = self.cc_op
        if op == lazy.CC_EAGER:
            return self.flags & CF
        return lazy.carry(op, self.cc_dst, self.cc_src, self.cc_aux)

    def set_some_flags(self, mask, bits):
        fl = self.get_rflags()
        self.set_rflags((fl & ~mask) | (bits & mask))

    def _vm86_iopl_check(self):
        """PUSHF/POPF in virtual-8086 mode need IOPL 3 (no VME): #GP(0) otherwise."""
        if self.mode.vm86 and (self.flags >> 12) & 3 < 3:
            raise Fault(13, 0)

    def pushf_value(self, size):
        self._vm86_iopl_check()
        v = self.get_rflags() & ~(VM | RF)
        return v & 0xFFFF if size == 2 else v

    def popf_value(self, v, size):
        self._vm86_iopl_check()
        old = self.get_rflags()
        mask = RFLAGS_WRITABLE & ~(VM | RF | 0x180000)   # VM, RF, VIF, VIP are never changed by POPF
        if self.cr0 & CR0_PE:
            if self.mode.cpl > 0:
                mask &= ~0x3000                        # IOPL
            if self.mode.cpl > (old >> 12) & 3:
                mask &= ~IF
        if size == 2:
            mask &= 0xFFFF
        self.set_rflags((old & ~mask) | (v & mask))

    # ------------------------------------------------------------------ faults
    def raise_ud(self):
        raise Fault(6)

    def raise_fault(self, vector, error_code=None):
        raise Fault(vector, error_code)

    def limit_fault(self, seg, off, size):
        """An access of ``size`` bytes at ``off`` went past segment ``seg``'s limit (the
        translated code's check): #SS(0) through SS, #GP(0) otherwise -- unless the segment
        is an expand-down data segment, whose valid offsets lie above the limit."""
        s = self.seg[seg]
        if s.s and s.type & 0xC == 0x4 and s.limit < off and off + size - 1 <= (0xFFFFFFFF if s.db else 0xFFFF):
            return
        raise Fault(12 if seg == SS else 13, 0)

    def intercept(self, kind, **info):
        raise Intercept(kind, **info)

    def pause(self, insn_len):
        """PAUSE: a spin-wait hint, or the PAUSE-loop exit the hypervisor asks for."""
        if self.pause_exiting is not None and self.pause_exiting():
            raise Intercept("pause", insn_len=insn_len)

    # ------------------------------------------------------------------ translation
    def _gpa_host(self, gpa, write, gla):
        """Guest-physical -> host address through KVM's second-level table (EPT/NPT)."""
        host = self.ept.get(gpa >> 12)
        if host is None or (write and (gpa >> 12) in self.ept_ro):
            raise Intercept("ept_violation", gpa=gpa, gla=gla, write=bool(write), fetch=False,
                            present=host is not None)
        return host + (gpa & 0xFFF)

    def _read_pte(self, gpa, size):
        return hm.read(self._gpa_host(gpa, False, None), size)

    def _write_pte(self, gpa, size, value):
        host = self._gpa_host(gpa, True, None)
        self._note_write(gpa >> 12, gpa & 0xFFF, size)
        hm.write(host, size, value)

    def translate(self, lin, access, implicit=False):
        """Linear -> (host page address, guest-physical page) for one access.

        Fills the software TLB; raises Fault(14)/Intercept on failure.  ``implicit``: an
        implicit supervisor-mode access (SDM 4.6), made as at CPL 0 whatever the CPL; at
        CPL 3 its translation stays out of the TLB, which then holds only what user code
        may reach.
        """
        # canonical: bits 63..47 equal, i.e. lin + 2**47 (cut to 64 bits) is below 2**48
        if self.mode.code == 8 and (lin + (1 << 47)) >> 48 & 0xFFFF:
            raise Fault(13, 0)          # non-canonical address (#SS for stack accesses is not told apart)
        user = self.mode.cpl == 3 and not implicit
        if user:
            access |= paging.PFERR_USER
        lpn = lin >> 12
        if not self.tdp:
            ent = self.shadow.get(lpn)
            if ent is None or (access & paging.PFERR_WRITE and not ent[1]) or (user and not ent[2]):
                raise Fault(14, (access & 0x17) | (1 if ent is not None else 0), cr2=lin)
            host, writable, uok, gfn = ent
            gpa = gfn << 12
        else:
            if self.cr0 & CR0_PG:
                t = paging.walk(lin, access, self.cr0, self.cr3, self.cr4, self.efer, self._read_pte,
                                self._write_pte, self.model.phys_bits, GBPAGES)
                gpa = t.gpa
                writable = t.writable or (not user and not self.cr0 & 0x10000)
                uok = t.user
            else:
                gpa = lin & (0xFFFFFFFFFFFFF000 if self.efer & EFER_LMA else 0xFFFFF000)
                writable = uok = True
            gfn = gpa >> 12
            host = self.ept.get(gfn)
            if host is None or (access & paging.PFERR_WRITE and gfn in self.ept_ro):
                raise Intercept("ept_violation", gpa=gpa | (lin & 0xFFF), gla=lin,
                                write=bool(access & paging.PFERR_WRITE), fetch=bool(access & paging.PFERR_FETCH),
                                present=host is not None)
            if gfn in self.ept_ro:
                writable = False
        if implicit and self.mode.cpl == 3:
            return host, gpa
        view = hm.page(host)
        if not uok:
            self.tlb_supervisor = True
        if access & paging.PFERR_FETCH:
            self.tlb_x[lpn] = gpa
        if lpn in self.watch_pages:
            return host, gpa            # a data breakpoint's page: every access goes the slow way
        self.tlb_r[lpn] = view
        if writable and (access & paging.PFERR_WRITE) and gfn not in self.code_pages:
            self.tlb_w[lpn] = view
        return host, gpa

    def read_slow(self, a, size):
        if self.data_bps:
            self._watch(a, size, False)
        if (a & 0xFFF) + size > 0x1000:
            lo = 0x1000 - (a & 0xFFF)
            return self.read_slow(a, lo) | (self.read_slow(a + lo, size - lo) << (8 * lo))
        v = self.tlb_r.get(a >> 12)
        if v is None:
            v = hm.page(self.translate(a, 0)[0])
        return int.from_bytes(v[a & 0xFFF:(a & 0xFFF) + size], "little")

    def write_slow(self, a, size, v):
        """Write through the page walk; True if the write invalidated translated code."""
        if self.data_bps:
            self._watch(a, size, True)
        if (a & 0xFFF) + size > 0x1000:
            lo = 0x1000 - (a & 0xFFF)
            self.probe_write(a, size)
            first = self.write_slow(a, lo, v)
            return self.write_slow(a + lo, size - lo, v >> (8 * lo)) or first
        host, gpa = self.translate(a, paging.PFERR_WRITE)
        hm.write(host + (a & 0xFFF), size, v)
        return self._note_write(gpa >> 12, a & 0xFFF, size)

    def read_sys(self, a, size):
        """An implicit supervisor-mode read (SDM 4.6): of the GDT, LDT, IDT or TSS, which
        the processor reads with supervisor rights even at CPL 3 (an interrupt taken in
        user mode, an IRET or a segment load there)."""
        if self.mode.cpl != 3:
            return self.read_slow(a, size)
        if (a & 0xFFF) + size > 0x1000:
            lo = 0x1000 - (a & 0xFFF)
            return self.read_sys(a, lo) | (self.read_sys(a + lo, size - lo) << (8 * lo))
        return hm.read(self.translate(a, 0, True)[0] + (a & 0xFFF), size)

    def write_sys(self, a, size, v):
        """An implicit supervisor-mode write (a descriptor's accessed or busy bit, a TSS
        field); see :meth:`read_sys`."""
        if self.mode.cpl != 3:
            return self.write_slow(a, size, v)
        if (a & 0xFFF) + size > 0x1000:
            lo = 0x1000 - (a & 0xFFF)
            first = self.write_sys(a, lo, v)
            return self.write_sys(a + lo, size - lo, v >> (8 * lo)) or first
        host, gpa = self.translate(a, paging.PFERR_WRITE, True)
        hm.write(host + (a & 0xFFF), size, v)
        return self._note_write(gpa >> 12, a & 0xFFF, size)

    def _watch(self, a, size, write):
        """An access to [a, a+size): the data breakpoints it hits, for the trap after the
        instruction; in a block, the instruction is rolled back and run on its own (an event
        delivery is not: its hits are not reported)."""
        for lo, hi, bit, writes_only in self.data_bps:
            if a < hi and lo < a + size and (write or not writes_only):
                if not self.stepping and not self.delivering:
                    raise _Rewind()
                self.data_hits |= bit

    def probe_write(self, a, size):
        """Fault now if any byte of [a, a+size) is not writable (multi-store instructions)."""
        for page in range(a >> 12, ((a + size - 1) >> 12) + 1):
            if page not in self.tlb_w:
                self.translate(max(a, page << 12), paging.PFERR_WRITE)

    def _note_write(self, gfn, offset=0, size=0x1000):
        """A write to bytes of page ``gfn`` that translated code came from invalidates that
        code (SMC); blocks from other bytes of the page stay (a stack or data next to code
        costs no retranslation).  True if code was invalidated."""
        rips = self.code_pages.get(gfn)
        if not rips or not any(self.code_bytes.get(gfn, _ALL_CODE)[offset:offset + size]):
            return False                    # no translated code was ever taken from these bytes
        end = offset + size
        hit = False
        for rip in list(rips):
            b = self.code.get(rip)
            ranges = [] if b is None else [(lo, hi) for g, lo, hi in b.code_ranges if g == gfn]
            if not ranges:
                rips.discard(rip)           # the rip's block is now one from another page
            elif any(lo < end and offset < hi for lo, hi in ranges):
                rips.discard(rip)
                del self.code[rip]
                hit = True
        if not rips:
            del self.code_pages[gfn]
            self.code_bytes.pop(gfn, None)
        if hit:
            self.chain_gen += 1
        return hit

    # ------------------------------------------------------------------ code fetch
    def fetch_byte(self, lin):
        v = self.tlb_r.get(lin >> 12)
        if v is None or (lin >> 12) not in self.tlb_x:
            v = hm.page(self.translate(lin, paging.PFERR_FETCH)[0])
        return v[lin & 0xFFF]

    def fetch_code(self, base, eip, i, mask):
        """Byte ``i`` of the instruction at ``eip`` (linear ``base``): #GP(0) past the CS limit."""
        if eip + i > self.fetch_limit:
            raise Fault(13, 0)
        return self.fetch_byte((base + i) & mask)

    def lookup_block(self):
        if self.exit_request:
            raise Intercept("preemption")       # an external interrupt, as the IPI would be
        if self.flags & (TF | RF):
            raise _SingleStep()                 # set by the block just run: step from here on
        rip = self.rip
        csb = self.sbase[CS]
        lin = (csb + rip) & (0xFFFFFFFFFFFFFFFF if self.mode.code == 8 else 0xFFFFFFFF)
        gpa = self.tlb_x.get(lin >> 12)
        if gpa is None:
            _, gpa = self.translate(lin, paging.PFERR_FETCH)
        phys = gpa | (lin & 0xFFF)
        b = self.code.get(rip)
        if (b is not None and b.cs_base == csb and b.mode_key is self.mode.key and b.phys == phys
                and b.last_ip <= self.fetch_limit
                and (not b.xpages or self._xpages_unchanged(b))):
            if b.epoch == self.epoch:
                return b
            if self._code_unchanged(b):
                b.epoch = self.epoch
                return b
        return self._translate_block(rip, csb, lin, phys)

    def _xpages_unchanged(self, b):
        """Are the block's pages beyond its first still mapped to the frames its code came
        from?  A page missing from the fetch TLB (any flush empties it: a CR3 write) is
        walked again, not taken as changed: retranslating every block that crosses a page
        after each flush was half of a Linux boot's translations.  A walk that faults
        counts as changed; the translation then meets the fault where the guest does."""
        for lpn, gpa in b.xpages:
            now = self.tlb_x.get(lpn)
            if now is None:
                try:
                    now = self.translate(lpn << 12, paging.PFERR_FETCH)[1]
                except (Fault, Intercept):
                    return False
            if now != gpa:
                return False
        return True

    def _code_unchanged(self, b):
        """Does memory still hold the bytes ``b`` was translated from?  Compared a page's
        slice at a time (a call per byte made this re-check, which every entry needs for
        each block it runs, one of the costliest parts of a boot); a fetch that faults
        counts as changed, so the block is translated again and the fault happens there."""
        mask = 0xFFFFFFFFFFFFFFFF if self.mode.code == 8 else 0xFFFFFFFF
        raw, off = b.raw, 0
        try:
            for start, size in b.spans:
                while size:
                    a = start & mask
                    lo = a & 0xFFF
                    n = min(size, 0x1000 - lo)
                    v = self.tlb_r.get(a >> 12)
                    if v is None or (a >> 12) not in self.tlb_x:
                        v = hm.page(self.translate(a, paging.PFERR_FETCH)[0])
                    if v[lo:lo + n] != raw[off:off + n]:
                        return False
                    off, start, size = off + n, start + n, size - n
        except (Fault, Intercept):
            return False
        return True

    def _translate_block(self, rip, csb, lin, phys):
        if self.host_interrupt():       # translating is the costliest work an entry does
            raise Intercept("preemption")
        mode = self.mode
        mask = 0xFFFFFFFFFFFFFFFF if mode.code == 8 else 0xFFFFFFFF

        def decode_at(r):
            base = (csb + r) & mask
            return decode(lambda i: self.fetch_code(base, r, i, mask), mode.code, r)

        b = codegen.translate(decode_at, rip, csb, mode, self.ns, stop=self.host_interrupt)
        b.phys = phys
        b.raw = b"".join(i.raw for i in b.insns)
        b.epoch = self.epoch
        lpns = {(a & mask) >> 12 for start, size in b.spans for a in (start, start + size - 1)}
        # code from a second page: its mapping is checked whenever the block is looked up
        b.xpages = tuple((lpn, self.tlb_x[lpn]) for lpn in lpns if lpn != lin >> 12)
        ranges = []
        for start, size in b.spans:             # the block's bytes, page by page
            a, end = start & mask, (start & mask) + size
            while a < end:
                stop = min(end, (a | 0xFFF) + 1)
                ranges.append((self.tlb_x.get(a >> 12, phys) >> 12, a & 0xFFF, (stop - 1 & 0xFFF) + 1))
                a = stop
        b.code_ranges = tuple(ranges)
        b.starts = frozenset((csb + i.start) & mask for i in b.insns)
        for gfn, lo, hi in ranges:
            self.code_bytes.setdefault(gfn, bytearray(0x1000))[lo:hi] = b"\1" * (hi - lo)
        for lpn in lpns:
            gfn = (self.tlb_x.get(lpn, phys) >> 12)
            if gfn not in self.code_pages:
                self.code_pages[gfn] = set()
                self._unmap_writes(gfn)
            self.code_pages[gfn].add(rip)
        self.code[rip] = b
        return b

    def _unmap_writes(self, gfn):
        host = self.ept.get(gfn) if self.tdp else None
        view = hm.page(host) if host is not None else None
        for lpn, v in list(self.tlb_w.items()):
            if view is None or v is view:
                del self.tlb_w[lpn]

    # ------------------------------------------------------------------ VM entry
    def run(self, budget: int):
        """Enter the guest; return the vendor-formatted VM exit."""
        self.epoch += 1
        self.chain_gen += 1             # memory may have changed outside the guest: re-check code
        self.refresh()
        limit = self.entry_limit = self.icount + budget
        self.ns["_loop_limit"] = codegen.LOOP_LIMIT
        try:
            entry.check_guest_state(self)
            # the entry's event injection is consumed by the entry: an exit during its delivery
            # reports it in the IDT-vectoring information / EXITINTINFO, for KVM to re-inject
            ev, self.pending_event = self.pending_event, None
            if ev is not None:
                self.deliver(ev[1], ev[0], ev[2], injected=True)
            while True:
                if not self.interrupt_shadow and self.windows():
                    self._open_windows()
                if self.icount >= limit or self.host_interrupt():
                    raise Intercept("preemption")
                self._run_blocks(min(limit, self.icount + HOST_TICK))
        except Intercept as e:
            return self.exit_format.format(self, e)

    def _run_blocks(self, limit):
        """Execute blocks until ``limit`` instructions or DELIVERY_TICK deliveries of
        exceptions (a handler that faults at once retires nothing); faults are delivered here."""
        deliveries = 0
        while self.icount < limit and deliveries < DELIVERY_TICK:
            try:
                if self.flags & (TF | RF) or self.step_next or self.interrupt_shadow:
                    if self.interrupt_shadow and not self.flags & (TF | RF) and not self.step_next:
                        self._run_single()      # the instruction in the STI / MOV SS shadow
                    else:
                        self._step()
                    if self.windows() and not self.interrupt_shadow:
                        self._open_windows()
                else:
                    b = self.lookup_block()
                    if self.code_bps and self._breakpoint_in(b):
                        self._step()
                    else:
                        self._run_chain(b, limit)
            except Fault as f:
                deliveries += 1
                self._at_fault_insn()
                self.raise_event(f)
            except _SingleStep:
                pass
            except _Rewind:
                self._at_fault_insn()
                self.step_next = True
            except DecodeError as d:
                deliveries += 1
                self.raise_event(Fault(d.vector, 0 if d.vector == 13 else None))
            except Intercept:
                self._at_fault_insn()
                raise
            except (RecursionError, MemoryError):
                raise
            except Exception as e:      # a bug in kvmpy must not escape KVM_RUN as a traceback
                raise Intercept("internal", error=repr(e)) from e

    def _run_chain(self, b, limit):
        """Run ``b`` and its successors, following the links cached in each block.

        A link (``Block.succ``: next RIP -> block) is only followed while
        ``chain_gen`` is unchanged since it was made, i.e. while mode, CS base,
        fetch TLB and translated code are as they were when ``lookup_block``
        checked them.
        """
        ic = self.icount
        window = self.windows()                 # VM-execution controls: fixed during the run
        ns, end = self.ns, self.entry_limit
        near = end - codegen.LOOP_LIMIT         # from here on a self-loop must stop at the budget
        try:
            while True:
                if ic > near:
                    ns["_loop_limit"] = end - ic
                self.icount = ic        # current for what a block asks (RDTSC reads the clock)
                ic += b.fn()
                if self.interrupt_shadow:
                    return                      # the block ended with STI / MOV SS: the next
                                                # instruction runs alone (_run_blocks), shadowed
                if window:
                    self.icount = ic
                    if self._open_windows():
                        return                  # an NMI was delivered: look the handler up
                if ic >= limit:
                    return
                if b.link_gen == self.chain_gen:
                    rip = self.rip
                    nb = b.succ.get(rip)
                    if nb is None:
                        nb = b.succ[rip] = self.lookup_block()
                else:
                    rip = self.rip
                    b.succ.clear()
                    b.link_gen = self.chain_gen
                    nb = b.succ[rip] = self.lookup_block()
                if self.code_bps and self._breakpoint_in(nb):
                    return                      # _run_blocks steps through it
                b = nb
        finally:
            self.icount = ic

    def windows(self) -> bool:
        """Is an event window being watched for: interrupt-window or NMI-window exiting, or
        a virtual NMI pending?"""
        return self.intr_window_exiting or self.nmi_window_exiting or self.vnmi_pending

    def _open_windows(self) -> bool:
        """At an instruction boundary without STI/MOV SS shadow, with a window watched: the
        NMI window first (an NMI goes before an interrupt), open when NMIs are not blocked
        (an IRET has ended the NMI handler), then the interrupt window, open when IF=1.
        True: a virtual NMI was delivered."""
        if not self.nmi_masked:
            if self.nmi_window_exiting:
                raise Intercept("nmi_window")
            if self.vnmi_pending:
                self.vnmi_pending = False       # taken by the delivery (re-injected from the
                self.deliver(2, NMI)            # exit information if the delivery exits)
                return True
        if self.intr_window_exiting and self.flags & IF:
            raise Intercept("interrupt_window")
        return False

    def _run_one(self):
        """Translate and run the instruction at RIP on its own.  The translation is kept,
        keyed by the instruction's bytes, address and mode, as the emulator keeps its own:
        an interrupt window after STI or a single step comes back to the same few
        instructions, whose compilation would otherwise be most of its cost."""
        csb = self.sbase[CS]
        mask = 0xFFFFFFFFFFFFFFFF if self.mode.code == 8 else 0xFFFFFFFF
        mode = self.mode
        rip = self.rip
        ins = decode(lambda i: self.fetch_code(csb + rip, rip, i, mask), mode.code, rip)
        key = (ins.raw, rip, csb, mode.key)
        b = self.single_blocks.get(key)
        if b is None:
            if len(self.single_blocks) >= SINGLE_BLOCKS_MAX:
                self.single_blocks.clear()
            b = self.single_blocks[key] = codegen.translate(lambda r: ins, rip, csb, mode, self.ns, max_insns=1,
                                                            single=True)
        self.icount += b.fn()

    def _run_single(self):
        """Run the instruction at RIP on its own, ending the STI / MOV SS shadow it runs in:
        once it has run, the shadow is only what it set itself (a MOV SS, or STI with IF=0).
        A VM exit before it completes keeps the shadow, as the VMCS's interruptibility
        state does: it runs again, still shadowed, after the exit (an exception it raises
        is delivered, which ends the shadow)."""
        shadow, self.interrupt_shadow = self.interrupt_shadow, 0
        try:
            self._run_one()
        except Intercept:
            if not self.interrupt_shadow:
                self.interrupt_shadow = shadow
            raise

    def _step(self):
        """One instruction on its own, with the debug exceptions it may raise (SDM 18.3.1): an
        instruction breakpoint at its address is a fault before it runs (suppressed by
        RFLAGS.RF); after it, a #DB trap for the data breakpoints it hit and, if TF was set
        before it, the single-step trap (DR6.BS) -- unless the instruction delivered an event
        (which clears TF) or faulted.  TF is looked at before the instruction: POPF setting
        it traps after the next one.  RF is cleared once an instruction completes."""
        if self.exit_request:
            raise Intercept("preemption")
        flags = self.flags
        if self.code_bps and not flags & RF:
            mask = 0xFFFFFFFFFFFFFFFF if self.mode.code == 8 else 0xFFFFFFFF
            lin = (self.sbase[CS] + self.rip) & mask
            hit = 0
            for addr, bit in self.code_bps:
                if addr & mask == lin:
                    hit |= bit
            if hit:
                raise Fault(1, dr6=hit)
        events = self.events_delivered
        self.data_hits = 0
        self.step_next = False
        self.stepping = True
        try:
            self._run_single()
        finally:
            self.stepping = False
        if self.events_delivered == events:
            self.flags &= ~RF
            dr6 = self.data_hits | (DR6_BS if flags & TF else 0)
            if dr6:
                raise Fault(1, dr6=dr6)

    def _at_fault_insn(self):
        """If the exception being handled was raised in a block, roll RIP/icount back to the
        instruction that raised (it left no partial state).  The block is the faulting
        frame's ``_b`` (codegen.translate binds each block function to its Block)."""
        tb = sys.exc_info()[2]
        while tb is not None and tb.tb_frame.f_code.co_name != "_blk":
            tb = tb.tb_next
        if tb is None:
            return
        loc = tb.tb_frame.f_locals
        b = loc["_b"]
        line = tb.tb_lineno - codegen.BODY_FIRST_LINE
        idx = b.line_insn[line]
        if line not in b.barriers:  # registers the block held in locals (codegen._cache_registers)
            for r, name in b.reg_locals:
                self.regs[r] = loc[name]
        n = loc.get("n", 0)
        st = b.flag_state[idx]
        if st is not None:          # flag stores the block had deferred past this instruction
            dst, src, aux = (v if v is None or not (v[0].isalpha() or v[0] == "_") else loc[v]
                             for v in st[1:])
            self.cc_op, self.cc_dst, self.cc_src = st[0], _num(dst), _num(src)
            if aux is not None:
                self.cc_aux = _num(aux)
        self.rip = b.insns[idx].start
        self.icount += n + idx

    def rep_chunk_done(self):
        """A REP string instruction used up its REP_BUDGET of iterations and is left to be
        resumed: between chunks the host may interrupt (the instruction restarts where it
        stopped, its registers written back)."""
        if self.host_interrupt():
            raise Intercept("preemption")

    # ------------------------------------------------------------------ events
    def raise_event(self, f: Fault):
        """Deliver a fault raised by an instruction (or exit if the vendor intercepts it)."""
        self.deliver(f.vector, HW_EXC, f.error_code, cr2=f.cr2, dr6=f.dr6)

    def deliver(self, vector, kind, error_code=None, cr2=None, next_ip=None, injected=False, dr6=0):
        """Deliver an event through the IDT/IVT, with double- and triple-fault rules.

        An event injected at VM entry is not checked against the exception bitmap
        (VMX/SVM deliver it straight to the guest); exceptions it causes are, and so are
        INT3, INTO and INT1 (software exceptions; INT n is not).  A #DB's cause (``dr6``)
        goes into DR6 when it is delivered, into the exit when it is intercepted.
        """
        if kind in _EXCEPTION_KINDS and not injected and self.exception_bitmap >> vector & 1:
            raise Intercept("exception", vector=vector, error_code=error_code, cr2=cr2, event_kind=kind,
                            next_ip=next_ip, dr6=dr6)
        if dr6:
            self.dr[6] |= dr6
            if dr6 & DR6_BD:
                self.dr[7] &= ~DR7_GD       # the processor clears GD entering the handler
        if kind == HW_EXC and self.delivering:
            prev_kind, prev = self.delivering[-1][:2]
            if prev_kind == HW_EXC and prev == 8:
                raise Intercept("triple_fault")
            if prev_kind == HW_EXC and is_double_fault(prev, vector):
                vector, error_code, cr2 = 8, 0, None
        if kind == HW_EXC and vector == 14 and cr2 is not None:
            self.cr2 = cr2
        if kind == HW_EXC and vector in HAS_ERROR_CODE and error_code is None:
            error_code = 0
        if kind != HW_EXC:
            error_code = None
        # what the exit-information fields say if this delivery ends in a VM exit: the event,
        # its error code and, for a software event, the address after the instruction raising it
        event = (kind, vector, error_code, next_ip)
        self.delivering.append(event)
        self.events_delivered += 1
        try:
            try:
                self.refresh()
                self.enter_handler(vector, kind, error_code, next_ip)
            except Fault as f:
                self.deliver(f.vector, HW_EXC, f.error_code, cr2=f.cr2)
        except Intercept as e:
            if e.kind != "triple_fault":
                e.info.setdefault("vectoring", event)   # the innermost delivery the exit interrupted
            raise
        finally:
            self.delivering.pop()
        self.interrupt_shadow = 0           # the handler's first instruction is not shadowed
        self.refresh()

    def software_interrupt(self, vector, next_ip, kind):
        t = {"swint": SW_INT, "swexc": SW_EXC, "privsw": PRIV_SW_EXC}[kind]
        if self.mode.vm86 and t == SW_INT and (self.flags >> 12) & 3 < 3:
            raise Fault(13, 0)
        self.deliver(vector, t, next_ip=next_ip)

    # ------------------------------------------------------------------ I/O and system
    def io_in(self, port, size, insn_len, string=False, rep=False):
        self.check_io(port, size)
        raise Intercept("io", port=port, size=size, input=True, string=string, rep=rep, insn_len=insn_len)

    def io_out(self, port, size, insn_len, value=None, string=False, rep=False):
        self.check_io(port, size)
        raise Intercept("io", port=port, size=size, input=False, string=string, rep=rep, insn_len=insn_len)

    def check_io(self, port, size):
        """IOPL and TSS I/O-bitmap check (done before the VM exit, as on hardware)."""
        if not self.cr0 & CR0_PE or self.mode.cpl <= (self.flags >> 12) & 3 and not self.mode.vm86:
            return
        tr = self.tr
        if tr.limit < 0x67:
            raise Fault(13, 0)
        base = self.read_slow(tr.base + 0x66, 2)
        off = base + (port >> 3)
        if off + 1 > tr.limit:
            raise Fault(13, 0)
        bits = self.read_slow(tr.base + off, 2)
        if (bits >> (port & 7)) & ((1 << size) - 1):
            raise Fault(13, 0)

    def system(self, name, *args):
        return getattr(system, name)(self, *args)

    def set_cr0_mode(self):
        """LMA follows CR0.PG when EFER.LME is set (SDM 9.8.5)."""
        if self.cr0 & CR0_PG and self.efer & EFER_LME and self.cr4 & CR4_PAE:
            self.efer |= EFER_LMA
        elif not self.cr0 & CR0_PG:
            self.efer &= ~EFER_LMA


def _num(v):
    """A deferred flag operand: a local's value, or a literal from the generated text."""
    return int(v, 0) if isinstance(v, str) else v


# the kinds of event the exception bitmap applies to (SDM 25.2: all exceptions but INT n)
_EXCEPTION_KINDS = (HW_EXC, SW_EXC, PRIV_SW_EXC)

# Flags cleared on interrupt/exception delivery
DELIVERY_CLEARS = TF | NT | RF | VM | AC
__all__ = ["Processor", "CF", "DELIVERY_CLEARS"]
