"""Translation of x86 basic blocks into Python functions.

This is the processor's fast path and the single definition of instruction
semantics.  A block of decoded instructions (``kvmpy.hw.translate.decoder``) becomes the
source of one Python function, compiled once and cached by the processor; the
emulator (``kvmpy.kernel.x86.emulate``) translates single instructions with
the same code into a namespace whose memory and I/O callbacks go to the MMIO
path instead of guest RAM.

Conventions of the generated code (its namespace is built by the processor):

- ``R`` is the register list (encoding order), ``SB`` the six segment bases,
  ``cpu`` the processor, ``TR``/``TW`` the software TLBs for reads and writes
  (linear page -> byte view of the host page, ``kvmpy.hw.memory.page``).
- ``rd(a, n)`` / ``wr(a, n, v)`` are the slow paths (page walks, faults, MMIO).
- Every instruction first reads, then computes, then stores to memory, then
  writes registers and flags: a fault or VM exit raised by any read or store
  leaves the instruction without architectural effects, so it restarts cleanly.
  The processor maps the exception's line number back to the instruction.
- Arithmetic flags are lazy (``kvmpy.hw.flags``); when a conditional jump
  follows its flag-setting instruction in the same block the condition is
  computed from that instruction's local values directly.
- Lazy-flag stores are deferred (``Gen.finish_insn``): a flag writer only
  records which locals hold its result, and the stores are emitted where the
  flags can be observed -- block exits, helper calls, anything touching ``cpu``.
  A fault in between restores them from the faulting frame (``Block.flag_state``).
- Emitters write registers as ``R[n]``; the finished block keeps them in locals
  (``_cache_registers``), restored from the faulting frame the same way.
- A block goes on across direct JMP/CALL and into a second code page (``translate``).
"""

from __future__ import annotations

import collections
import re

from kvmpy.hw import flags as F
from kvmpy.hw.translate.decoder import Insn

M = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}
SIGN = {1: 0x80, 2: 0x8000, 4: 0x80000000, 8: 0x8000000000000000}
KEEP = {1: 0xFFFFFFFFFFFFFF00, 2: 0xFFFFFFFFFFFF0000}
UNPACK = {2: "U16", 4: "U32", 8: "U64"}
PACK = {1: "P8", 2: "P16", 4: "P32", 8: "P64"}

EMITTERS: dict = {}        # opcode -> emitter(g, ins); filled by kvmpy.hw.insn modules
BLOCK_ENDERS: set = set()  # opcodes after which a block always ends (branches, exits, mode changes)


# Text that marks generated code writing flags other than through set_flags
_FLAG_WRITERS = ("setfl(", "cpu.flags", "set_rflags", "sys(", "popf_value(", "iret(", "cc_op", "far_",
                 "software_interrupt(", "load_seg(")


# Calls generated code may make without observing or changing the lazy flags: memory
# fast and slow paths (whose faults are handled by Block.flag_state), raising faults,
# arithmetic builtins; keywords a regex would mistake for calls.
_NEUTRAL_CALLS = frozenset(("TR.get", "TW.get", "U16", "U32", "U64", "P8", "P16", "P32", "P64", "rd", "wr",
                            "probe_w", "raise_ud", "raise_fault", "abs", "divmod", "min", "max", "int", "bool",
                            "if", "elif", "while", "not", "and", "or", "in", "is", "else"))
# Calls that only read the lazy flags (no side effects, cannot raise): they may move with
# the deferred flag store as long as none is pending, and may be dropped when unused.
_OBSERVING_CALLS = frozenset(("cf_of",))
# a name starts after no word character: without the look-behind the search also tried
# every suffix of every name and hex constant, which made it most of the translator's time
_CALL = re.compile(r"(?<!\w)([A-Za-z_][\w.]*)\s*\(")
_SIMPLE = re.compile(r"^(?:[A-Za-z_]\w*|-?(?:0x[0-9a-fA-F]+|\d+))$")
BODY_IND = 2                 # indentation level of the block body


def _flags_neutral(line: str) -> bool:
    """True if a generated line can neither observe nor change the lazy flags (nor exit)."""
    if "cpu." in line or "return" in line or "continue" in line:
        return False
    return all(name in _NEUTRAL_CALLS for name in _CALL.findall(line))


def _observes_flags(line: str) -> bool:
    """True if a generated line only reads the lazy flags (right only with no store pending)."""
    if "cpu." in line or "return" in line or "continue" in line:
        return False
    return all(name in _NEUTRAL_CALLS or name in _OBSERVING_CALLS for name in _CALL.findall(line))


def _assigns(line: str, name: str) -> bool:
    return re.search(r"\b%s\b\s*(?:[-+*/&|^%%]|<<|>>|//)?=(?!=)" % name, line) is not None


def _flag_store(state) -> str:
    op, dst, src, aux = state
    line = "cpu.cc_op = %d; cpu.cc_dst = %s; cpu.cc_src = %s" % (op, dst, src)
    if aux is not None:
        line += "; cpu.cc_aux = %s" % aux
    return line


class Unsupported(Exception):
    """An opcode the processor does not implement: raises #UD in the guest."""


def emitter(*opcodes, ends_block=False):
    """Register an emitter for the given opcodes."""
    def deco(fn):
        for op in opcodes:
            EMITTERS[op] = fn
            if ends_block:
                BLOCK_ENDERS.add(op)
        return fn
    return deco


def legacy_only(fn):
    """Wrap an emitter for an opcode that is #UD in 64-bit mode (PUSHA, BCD, ...)."""
    def emit(g, ins):
        if g.mode.code == 8:
            g.ud()
        else:
            fn(g, ins)
    emit.__doc__ = fn.__doc__
    return emit


class Mode:
    """What a translation depends on besides the bytes: sizes, paging mode, CPL."""

    __slots__ = ("code", "stack", "long", "cpl", "pe", "vm86", "key")

    def __init__(self, code, stack, long, cpl, pe, vm86):
        self.code, self.stack, self.long, self.cpl, self.pe, self.vm86 = code, stack, long, cpl, pe, vm86
        self.key = (code, stack, long, cpl, pe, vm86)


class Gen:
    """Builds the source of one block function."""

    def __init__(self, mode: Mode, emulating: bool = False, model=None):
        self.mode = mode
        self.emulating = emulating
        self.model = model                 # the CPU model, for vendor-specific undefined flags
        self.lines: list[str] = []
        self.line_insn: list[int] = []     # instruction index of each line
        self.ind = 2
        self.n = 0
        self.idx = 0                       # index of the instruction being emitted
        self.ins: Insn | None = None
        self.ended = False                 # the current instruction ended the block
        self.flags = None                  # statically known last flag producer
        self.ea_var = None
        self.loop_target = None            # hex RIP of the block start (for self-loops)
        self.looped = False
        self.pending = None                # deferred flag store: (cc_op, dst, src, aux) or None
        self.flag_state: list = []         # per instruction: the deferred store at its start
        self.cur: list = []                # the current instruction's entries (see finish_insn)
        self.next_ip = 0                   # where execution goes after the current instruction
        self.tail_exit = None              # (entries, target) of an unconditional exit ending cur

    # --- text ----------------------------------------------------------------------------
    def emit(self, line: str) -> None:
        self.cur.append(("L", self.ind, line))
        if self.flags is not None and any(t in line for t in _FLAG_WRITERS):
            self.flags = None           # flags changed eagerly: static knowledge is stale

    def _out(self, ind: int, line: str) -> None:
        self.lines.append("    " * ind + line)
        self.line_insn.append(self.idx)

    def begin_insn(self, idx: int, ins: Insn | None) -> None:
        self.idx, self.ins = idx, ins
        self.ended = False
        self.ea_var = None
        self.cur = []
        self.tail_exit = None
        if ins is not None:
            self.next_ip = ins.next_ip

    def finish_insn(self) -> None:
        """Turn the current instruction's entries into lines, deferring its flag stores.

        Entries are ``L`` (a line from an emitter), ``F`` (a flag writer), ``X`` (a
        block exit: flags must be in ``cpu`` there), ``C`` (the self-loop ``continue``)
        and ``E`` (exit bookkeeping lines).  If every line of the instruction is
        flag-neutral and its flag writers sit at body level with plain operands, the
        pending store moves past it; otherwise the store pending at its start is
        emitted first and its own flag writes stay eager.
        """
        entries, self.cur = self.cur, []
        if not self.ended and any(e[0] == "L" and "smc = wr(" in e[2] for e in entries):
            # a store that hit translated code (self-modifying code) leaves the block after
            # this instruction, so the next one is fetched and translated afresh
            entries += [("E", BODY_IND, "if smc:"), ("X", BODY_IND + 1, None),
                        ("E", BODY_IND + 1, "cpu.rip = %#x" % self.next_ip),
                        ("E", BODY_IND + 1, "return n + %d" % (self.idx + 1))]
        start = self.pending
        safe = not self.emulating
        written = start is not None    # flags changed but not yet stored in cpu
        for kind, _, t in entries:
            if not safe:
                break
            if kind == "F":
                written = True
            elif kind == "L":
                safe = _flags_neutral(t) or (not written and _observes_flags(t))
        for k, e in enumerate(entries):
            if safe and e[0] == "F":
                later = [t for kind, _, t in entries[k + 1:] if kind == "L"]
                safe = e[1] == BODY_IND and all(v is None or (_SIMPLE.match(v) and
                                                              not any(_assigns(t, v) for t in later))
                                                for v in e[2][1:])
        self.flag_state.append(start if safe else None)
        if not safe and start is not None:
            self._out(BODY_IND, _flag_store(start))
        p = start if safe else None
        for kind, ind, t in entries:
            if kind == "L" or kind == "E":
                self._out(ind, t)
            elif kind == "F":
                if safe:
                    p = t
                else:
                    self._out(ind, _flag_store(t))
            elif kind == "X":
                if p is not None:
                    self._out(ind, _flag_store(p))
            else:       # "C"
                self._out(ind, "if n < _loop_limit: %scontinue" % (_flag_store(p) + "; " if p else ""))
        self.pending = p

    def tmp(self, prefix="t") -> str:
        self.n += 1
        return "%s%d" % (prefix, self.n)

    def indent(self):
        self.ind += 1

    def dedent(self):
        self.ind -= 1

    # --- block exits ---------------------------------------------------------------------
    def exit_to(self, target_expr: str, count: int | None = None) -> None:
        """Leave the block continuing at RIP ``target_expr``.

        A constant jump back to the block's first instruction becomes a Python
        loop (``continue``), bounded by ``_loop_limit`` retired instructions (a global
        of the translated code: LOOP_LIMIT, or less near the end of an entry's budget)
        so the processor still returns regularly to check for events.
        """
        k = self.idx + 1 if count is None else count
        ind = self.ind
        if target_expr == self.loop_target:
            self.cur += [("E", ind, "n += %d" % k), ("C", ind, None), ("X", ind, None),
                         ("E", ind, "cpu.rip = %s" % target_expr), ("E", ind, "return n")]
            self.looped = True
            return
        self.cur += [("X", ind, None), ("E", ind, "cpu.rip = %s" % target_expr), ("E", ind, "return n + %d" % k)]
        self.tail_exit = (len(self.cur), target_expr) if ind == BODY_IND else None

    def jump_target(self) -> int | None:
        """The constant RIP the current instruction unconditionally exits to, if it does."""
        t = self.tail_exit
        if t is None or t[0] != len(self.cur) or not t[1][0].isdigit() or not _SIMPLE.match(t[1]):
            return None
        return int(t[1], 0)

    def follow(self, target: int) -> None:
        """Drop the current instruction's exit to ``target``: the block goes on there."""
        del self.cur[-3:]
        self.ended = False
        self.next_ip = target

    def end(self) -> None:
        """The current instruction falls through and ends the block."""
        self.exit_to(hex(self.ins.next_ip))
        self.ended = True

    def ud(self) -> None:
        """The current instruction is invalid here: #UD, and the block ends."""
        self.emit("raise_ud()")
        self.ended = True

    # --- registers -----------------------------------------------------------------------
    def reg(self, r: int, size: int) -> str:
        if size == 8:
            return "R[%d]" % r
        if size == 1 and not self.ins.rex and 4 <= r <= 7:
            return "((R[%d] >> 8) & 0xff)" % (r - 4)
        return "(R[%d] & %#x)" % (r, M[size])

    def set_reg(self, r: int, size: int, val: str) -> None:
        """Write an already-masked value to a register (32-bit writes zero-extend)."""
        if size == 8 or size == 4:
            self.emit("R[%d] = %s" % (r, val))
        elif size == 1 and not self.ins.rex and 4 <= r <= 7:
            self.emit("R[%d] = (R[%d] & 0xffffffffffff00ff) | (%s << 8)" % (r - 4, r - 4, val))
        else:
            self.emit("R[%d] = (R[%d] & %#x) | %s" % (r, r, KEEP[size], val))

    # --- memory --------------------------------------------------------------------------
    def ea_offset(self, ins: Insn | None = None) -> str:
        """Expression for the effective address (offset within the segment) of ModRM memory."""
        ins = ins or self.ins
        if ins.base == -2:
            return "%#x" % ((ins.next_ip + ins.disp) & M[8])
        parts = self._ea_parts(ins)
        if not parts:
            return "0"
        if len(parts) == 1 and (parts[0][0] == "0" or (ins.adsize == 8 and ins.base >= 0)):
            return parts[0]
        return "((%s) & %#x)" % (" + ".join(parts), M[ins.adsize])

    def _ea_parts(self, ins: Insn) -> list:
        """The terms of a ModRM effective address: base, scaled index, displacement."""
        parts = []
        if ins.base >= 0:
            parts.append("R[%d]" % ins.base)
        if ins.index >= 0:
            parts.append("(R[%d] << %d)" % (ins.index, ins.scale) if ins.scale else "R[%d]" % ins.index)
        if ins.disp:
            parts.append("%#x" % (ins.disp & M[ins.adsize]))
        return parts

    def ea(self, ins: Insn | None = None) -> str:
        """Expression for the linear address of the ModRM memory operand."""
        ins = ins or self.ins
        seg = self.modrm_segment(ins)
        if ins.adsize == 4 and ins.base != -2 and not (self.mode.long and self.mode.code == 8):
            # the linear address is masked to 32 bits anyway: the offset needs no mask of its own
            return "((%s) & 0xffffffff)" % " + ".join(["SB[%d]" % seg] + self._ea_parts(ins))
        return self.seg_addr(seg, self.ea_offset(ins))

    def limit_check(self, seg: int, off: str, size: int, adsize: int) -> None:
        """Emit the segment-limit check of a ``size``-byte access at offset ``off`` (SDM 5.3;
        #SS(0) through SS, else #GP(0)), for 16-bit addressing outside 64-bit mode: a word at
        offset 0xFFFF runs past a real-mode segment.  The limits of 32-bit addressing are
        not checked yet (flat segments, the common case, would never fault); expand-down
        segments are told apart by the processor's ``limit_fault``."""
        if adsize != 2 or (self.mode.long and self.mode.code == 8):
            return
        if seg < 0:
            seg = 3
        self.emit("if %s > cpu.seg[%d].limit - %d: cpu.limit_fault(%d, %s, %d)" % (off, seg, size - 1, seg, off, size))

    def modrm_segment(self, ins: Insn) -> int:
        """The segment of a ModRM memory operand: the override, else SS for BP/SP-based."""
        return ins.seg if ins.seg >= 0 else (2 if ins.base in (4, 5) else 3)

    def seg_addr(self, seg: int, off: str) -> str:
        if self.mode.long and self.mode.code == 8:
            if seg >= 4:
                return "((SB[%d] + %s) & 0xffffffffffffffff)" % (seg, off)
            return off
        return "((SB[%d] + %s) & 0xffffffff)" % (seg, off)

    def load(self, addr: str, size: int, dest: str | None = None) -> str:
        """Emit a guest memory read; returns the local holding the value."""
        dest = dest or self.tmp("v")
        d = self.tmp("d")
        if self.emulating:
            self.emit("%s = rd(%s, %d)" % (dest, addr, size))
            return dest
        a = addr if addr.isidentifier() else self.tmp("a")
        if a != addr:
            self.emit("%s = %s" % (a, addr))
        self.emit("%s = TR.get(%s >> 12)" % (d, a))
        if size == 1:
            self.emit("%s = %s[%s & 4095] if %s is not None else rd(%s, 1)" % (dest, d, a, d, a))
        else:
            self.emit("%s = %s(%s, %s & 4095)[0] if %s is not None and (%s & 4095) <= %d else rd(%s, %d)"
                      % (dest, UNPACK[size], d, a, d, a, 4096 - size, a, size))
        return dest

    def store(self, addr: str, size: int, val: str) -> None:
        if self.emulating:
            self.emit("wr(%s, %d, %s)" % (addr, size, val))
            return
        a = addr if addr.isidentifier() else self.tmp("a")
        if a != addr:
            self.emit("%s = %s" % (a, addr))
        d = self.tmp("d")
        self.emit("%s = TW.get(%s >> 12)" % (d, a))
        if size == 1:
            self.emit("if %s is not None: %s[%s & 4095] = %s" % (d, d, a, val))
        else:
            self.emit("if %s is not None and (%s & 4095) <= %d: %s(%s, %s & 4095, %s)"
                      % (d, a, 4096 - size, PACK[size], d, a, val))
        self.emit("else: smc = wr(%s, %d, %s) or smc" % (a, size, val))

    # --- ModRM operands --------------------------------------------------------------------
    def rm_read(self, size: int, ins: Insn | None = None) -> str:
        ins = ins or self.ins
        if ins.mod == 3:
            v = self.tmp()
            self.emit("%s = %s" % (v, self.reg(ins.rm, size)))
            return v
        self.modrm_limit_check(ins, size)
        self.ea_var = self.tmp("ea")
        self.emit("%s = %s" % (self.ea_var, self.ea(ins)))
        return self.load(self.ea_var, size)

    def modrm_limit_check(self, ins: Insn, size: int) -> None:
        """``limit_check`` for a ModRM memory operand of ``size`` bytes."""
        if ins.adsize == 2 and ins.base != -2:
            off = self.tmp("off")
            self.emit("%s = %s" % (off, self.ea_offset(ins)))
            self.limit_check(self.modrm_segment(ins), off, size, ins.adsize)

    def rm_write(self, size: int, val: str, ins: Insn | None = None, reuse_ea: bool = False) -> None:
        ins = ins or self.ins
        if ins.mod == 3:
            self.set_reg(ins.rm, size, val)
            return
        if not reuse_ea:
            self.modrm_limit_check(ins, size)
            self.ea_var = self.tmp("ea")
            self.emit("%s = %s" % (self.ea_var, self.ea(ins)))
        self.store(self.ea_var, size, val)

    # --- stack ---------------------------------------------------------------------------
    def sp_mask(self) -> int:
        return M[self.mode.stack]

    def push(self, vals: list[str], size: int) -> None:
        """Push values (first pushed first); RSP is updated only after all stores."""
        sm = self.sp_mask()
        sp = self.tmp("sp")
        self.emit("%s = R[4]" % sp)
        addrs = []
        for k, _ in enumerate(vals, 1):
            addrs.append(self.seg_addr(2, "((%s - %d) & %#x)" % (sp, size * k, sm)))
        if len(vals) > 1 and not self.emulating:
            self.emit("probe_w(%s, %d)" % (addrs[-1], size * len(vals)))
        for a, v in zip(addrs, vals):
            self.store(a, size, v)
        self.set_sp("(%s - %d) & %#x" % (sp, size * len(vals), sm), sp)

    def pop(self, size: int, count: int = 1) -> tuple[list[str], str]:
        """Read ``count`` stack values; returns them and the new-RSP expression (not yet set)."""
        sm = self.sp_mask()
        sp = self.tmp("sp")
        self.emit("%s = R[4]" % sp)
        vals = [self.load(self.seg_addr(2, "((%s + %d) & %#x)" % (sp, size * k, sm)) if k else
                          self.seg_addr(2, "(%s & %#x)" % (sp, sm)), size) for k in range(count)]
        return vals, "(%s + %d) & %#x" % (sp, size * count, sm)

    def set_sp(self, expr: str, old: str | None = None) -> None:
        st = self.mode.stack
        if st == 8 or st == 4:
            self.emit("R[4] = %s" % expr)
        else:
            self.emit("R[4] = (R[4] & 0xffffffffffff0000) | (%s)" % expr)

    # --- flags ---------------------------------------------------------------------------
    def set_flags(self, kind: int, size: int, dst: str, src: str = "0", aux: str | None = None,
                  a: str | None = None) -> None:
        vals = []
        for v in (dst, src, aux):
            if v is not None and not _SIMPLE.match(v):     # deferred stores take plain operands
                t = self.tmp("f")
                self.emit("%s = %s" % (t, v))
                v = t
            vals.append(v)
        self.cur.append(("F", self.ind, (F.cc(kind, size), *vals)))
        self.flags = (kind, size, dst, src, a, self.idx)

    def rflags(self) -> str:
        """Emit code materialising RFLAGS into a local; returns its name."""
        v = self.tmp("fl")
        self.emit("%s = cpu.get_rflags()" % v)
        return v

    def carry(self) -> str:
        """Expression (0/1) for the current CF, using static knowledge when possible."""
        known = self.flags
        if known:
            kind, size, dst, src, a, _ = known
            if kind == F.K_LOGIC:
                return "0"
            if kind == F.K_ADD and a:
                return "(1 if %s < %s else 0)" % (dst, a)
            if kind == F.K_SUB and a:
                return "(1 if %s < %s else 0)" % (a, src)
        c = self.tmp("cf")
        self.emit("%s = cf_of()" % c)
        return c

    def cond(self, cc: int) -> str:
        """Python boolean expression for condition code ``cc`` (0..15, as in Jcc)."""
        known = self.flags
        if known:
            expr = _static_cond(cc, *known[:5])
            if expr:
                return expr
        if cc >> 1 == 1:
            return "not cf_of()" if cc & 1 else "cf_of()"
        if cc >> 1 == 2:
            # ZF of every lazy kind is "result == 0" (flags.compute): skip materialising RFLAGS
            z = self.tmp("zf")
            self.emit("%s = cpu.cc_dst == 0 if cpu.cc_op else cpu.flags & 0x40" % z)
            return "not %s" % z if cc & 1 else z
        fl = self.rflags()
        return _FLAG_COND[cc] % {"f": fl}


def _static_cond(cc, kind, size, dst, src, a):
    neg, base = cc & 1, cc >> 1
    sign = SIGN[size]
    e = None
    if kind in (F.K_SUB,) and a:
        e = {0: None, 1: "%s < %s" % (a, src), 2: "%s == 0" % dst, 3: "%s <= %s" % (a, src),
             4: "%s & %#x" % (dst, sign), 5: None,
             6: "(%s ^ %#x) < (%s ^ %#x)" % (a, sign, src, sign),
             7: "(%s ^ %#x) <= (%s ^ %#x)" % (a, sign, src, sign)}[base]
    elif kind == F.K_LOGIC:
        e = {0: "False", 1: "False", 2: "%s == 0" % dst, 3: "%s == 0" % dst, 4: "%s & %#x" % (dst, sign),
             5: None, 6: "%s & %#x" % (dst, sign), 7: "(%s == 0 or %s & %#x)" % (dst, dst, sign)}[base]
    elif kind in (F.K_ADD, F.K_INC, F.K_DEC, F.K_ADC, F.K_SBB, F.K_NEG):
        e = {2: "%s == 0" % dst, 4: "%s & %#x" % (dst, sign)}.get(base)
    if e is None:
        return None
    return "not (%s)" % e if neg else "(%s)" % e


_FLAG_COND = [
    "%(f)s & 0x800", "not %(f)s & 0x800", "%(f)s & 1", "not %(f)s & 1", "%(f)s & 0x40", "not %(f)s & 0x40",
    "%(f)s & 0x41", "not %(f)s & 0x41", "%(f)s & 0x80", "not %(f)s & 0x80", "%(f)s & 4", "not %(f)s & 4",
    "((%(f)s >> 7) ^ (%(f)s >> 11)) & 1", "not ((%(f)s >> 7) ^ (%(f)s >> 11)) & 1",
    "(%(f)s & 0x40 or ((%(f)s >> 7) ^ (%(f)s >> 11)) & 1)",
    "not (%(f)s & 0x40 or ((%(f)s >> 7) ^ (%(f)s >> 11)) & 1)",
]


class Block:
    """A translated block: its function, instructions and the pages its bytes came from."""

    __slots__ = ("fn", "insns", "line_insn", "rip", "cs_base", "lin", "phys", "mode_key", "pages", "raw",
                 "epoch", "source", "succ", "link_gen", "flag_state", "spans", "xpages",
                 "reg_locals", "barriers", "last_ip", "code_ranges", "starts")

    def __init__(self):
        self.epoch = -1
        self.xpages = ()        # (linear page, guest-physical page) of code beyond the first page
        self.succ = {}          # next RIP -> Block, valid while link_gen == the processor's chain_gen
        self.link_gen = -1


MAX_BLOCK_INSNS = 48
#: generated lines after which a block ends: compile() takes about 1 ms per 1,000 characters
#: (40 lines), and a kick that lands during translation waits for it
MAX_BLOCK_LINES = 80
FOLLOWED = frozenset((0xEB, 0xE9, 0xE8))   # direct JMP/CALL: a block goes on at their target
LOOP_LIMIT = 20000
BODY_FIRST_LINE = 4          # "def", "n = 0", "while True:" precede the body


_ASSIGN = re.compile(r"^(\s*)([a-z]+\d+) = ([^;]*)$")
_TEMP = re.compile(r"\b[a-z]+\d+\b")


def _impure(expr: str) -> bool:
    """True if ``expr`` calls anything that could raise or have effects."""
    return any(name not in _OBSERVING_CALLS for name in _CALL.findall(expr))


def _drop_dead_temps(lines: list, flag_state: list, line_insn: list) -> None:
    """Blank out assignments to temporaries nothing reads (e.g. a flag value a later
    instruction overwrote).  Only side-effect-free right-hand sides (no calls, so no
    memory access that could fault) are dropped; lines become ``pass`` so line numbers,
    which map faults back to instructions, stay put.  Temporaries that deferred flag
    stores may need at a fault (``flag_state`` of an instruction that can raise, i.e.
    one that calls anything) are kept.
    """
    can_raise = {line_insn[i] for i, line in enumerate(lines) if "(" in line and _impure(line)}
    keep = {t for idx, st in enumerate(flag_state) if st and idx in can_raise
            for v in st[1:] if isinstance(v, str) for t in _TEMP.findall(v)}
    # uses of each temporary: every occurrence in the block but the left side of its assignments;
    # a temporary whose uses drop to none has its side-effect-free assignments blanked, which
    # takes uses from the temporaries they read (a worklist, not a rescan of the block per round)
    uses = collections.Counter(_TEMP.findall("\n".join(lines)))
    assigned: dict = {}                  # temporary -> indices of the lines assigning it
    for i, line in enumerate(lines):
        m = _ASSIGN.match(line)
        if m:
            uses[m.group(2)] -= 1
            assigned.setdefault(m.group(2), []).append(i)
    work = [t for t in assigned if not uses[t]]
    while work:
        t = work.pop()
        if t in keep:
            continue
        for i in assigned[t]:
            m = _ASSIGN.match(lines[i])
            if m is None or _impure(m.group(3)):
                continue                 # already blanked, or it may fault
            lines[i] = m.group(1) + "pass"
            for u in _TEMP.findall(m.group(3)):
                uses[u] -= 1
                if not uses[u] and u in assigned:
                    work.append(u)


_REG = re.compile(r"\bR\[(\d+)\]")
_REG_OTHER = re.compile(r"\bR\b(?!\[\d+\])|\bregs\b|\bfor\b|\blambda\b")
_REG_WRITE = re.compile(r"\bR\[(\d+)\][^\S\n]*(?:[-+*/&|^%]|<<|>>|//)?=(?!=)")
_WHILE_AFTER_FIRST = re.compile(r"\n\s*while ")
_COMPOUND = re.compile(r"^\s*(?:if|elif|else|while|for|try|except|finally|with)\b")
_EXIT = re.compile(r"\breturn\b")


# Helpers that change flags but never touch the register file
_REG_NEUTRAL_CALLS = _NEUTRAL_CALLS | _OBSERVING_CALLS | {"setfl", "pushf_value", "popf_value"}


def _is_barrier(line: str) -> bool:
    """A line whose calls may read or write the register file itself (helpers on ``cpu``)."""
    return "cpu.regs" in line or any(name not in _REG_NEUTRAL_CALLS for name in _CALL.findall(line))


def _cache_registers(lines: list) -> tuple:
    """Keep the block's registers in locals (``Rg<n>``) instead of ``R[n]``.

    The locals are loaded once, before the self-loop (so ``continue`` keeps them), and
    always hold the architectural values: writes go only to them, and are written back
    to ``R`` before every exit (``return``) and before every *barrier* -- a line calling a helper that may use the
    register file -- after which all locals are reloaded.  A fault or VM exit raised
    anywhere else leaves ``R`` stale: ``Block.reg_locals`` (register, local) lists what the
    processor copies back from the faulting frame (``Processor._at_fault_insn``); a fault
    raised by a barrier line finds ``R`` current (``Block.barriers``).  Blocks whose text
    uses the register file other than as ``R[<constant>]``, has inner loops or
    comprehensions, or a barrier that is a compound statement, are left as they are.
    Returns (head, reg_locals, barriers) with ``head`` the text of the loads, or None.
    """
    text = "\n".join(lines)           # one regex pass over the block, not one per line
    if _REG_OTHER.search(text) or _WHILE_AFTER_FIRST.search(text):
        return None
    regs = sorted({int(r) for r in _REG.findall(text)})
    if not regs:
        return None
    written = sorted({int(r) for r in _REG_WRITE.findall(text)})
    suspects = {name for name in _CALL.findall(text) if name not in _REG_NEUTRAL_CALLS}
    barriers = set()
    if suspects or "cpu.regs" in text:
        suspects.add("cpu.regs")
        for i, line in enumerate(lines):
            if any(name in line for name in suspects) and _is_barrier(line):
                if _COMPOUND.match(line):
                    return None
                barriers.add(i)
    load = "; ".join("Rg%d = R[%d]" % (r, r) for r in regs)
    store = "".join("R[%d] = Rg%d; " % (r, r) for r in written)
    renamed = _REG.sub(_local_name, text).split("\n")
    for i, line in enumerate(renamed):
        if i in barriers:
            line = lines[i]
            body = line.lstrip()
            renamed[i] = line[:len(line) - len(body)] + store + body + "; " + load
        elif store and "return" in line:
            renamed[i] = _EXIT.sub(lambda m: store + m.group(0), line, count=1)
    lines[:] = renamed
    return load, tuple((r, "Rg%d" % r) for r in written), frozenset(barriers)


def _local_name(m) -> str:
    return "Rg" + m.group(1)


MAX_BLOCK_PAGES = 2
#: compiled block sources kept for re-use: code that is translated again unchanged (the same
#: kernel code after a write next to it, a program run again at the same addresses) skips
#: compile(), the largest single cost of translation; the code object is exec'd afresh in
#: each processor's namespace, so one cache serves every processor
MAX_CODE_CACHE = 8192
_CODE: dict = {}


def _page_ok(pages: set, lin: int) -> bool:
    """May the block take code from the page of ``lin``?  Adds it to ``pages`` if so."""
    if lin >> 12 in pages:
        return True
    if len(pages) >= MAX_BLOCK_PAGES:
        return False
    pages.add(lin >> 12)
    return True


def _spans(insns, cs_base) -> list:
    """The block's code as runs of contiguous bytes: [linear start, length] (unmasked)."""
    spans = []
    for i in insns:
        if spans and spans[-1][0] + spans[-1][1] == cs_base + i.start:
            spans[-1][1] += len(i.raw)
        else:
            spans.append([cs_base + i.start, len(i.raw)])
    return spans


def translate(decode_at, rip: int, cs_base: int, mode: Mode, namespace: dict, emulating: bool = False,
              max_insns: int = MAX_BLOCK_INSNS, single: bool = False, stop=None) -> Block:
    """Decode and translate instructions starting at ``rip`` (linear ``cs_base + rip``).

    ``decode_at(rip)`` returns the Insn at that instruction pointer.  Translation
    stops after a block-ending instruction, before a third code page (the processor
    checks the other page's mapping when it looks the block up), after ``max_insns``
    instructions or MAX_BLOCK_LINES lines of code, or when ``stop()`` (asked after each
    instruction) is true: the processor passes its host interrupt line, so that a kick
    waits for a short block's compile() rather than a long one's.  ``single``
    translates exactly one execution of one instruction (no self-loop), for stepping
    through an interrupt shadow.
    """
    namespace.setdefault("_loop_limit", LOOP_LIMIT)
    g = Gen(mode, emulating, getattr(namespace.get("cpu"), "model", None))
    g.loop_target = None if emulating or single else hex(rip)
    insns = []
    addr = rip
    lin = cs_base + rip
    pages = {lin >> 12}
    while True:
        try:
            ins = decode_at(addr)
        except Exception:
            if insns:       # let the faulting fetch happen when execution gets there
                g.begin_insn(len(insns) - 1, insns[-1])
                g.loop_target = None
                g.exit_to(hex(addr))
                g.finish_insn()
                g.flag_state.pop()
                break
            raise
        insns.append(ins)
        g.begin_insn(len(insns) - 1, ins)
        em = EMITTERS.get(ins.opc)
        if em is None:
            g.emit("raise_ud()")
            g.ended = True
        else:
            em(g, ins)
        addr = ins.next_ip
        full = len(insns) >= max_insns or len(g.lines) >= MAX_BLOCK_LINES or stop is not None and stop()
        if ins.opc in FOLLOWED and not (emulating or single or full):
            target = g.jump_target()
            if (target is not None and _page_ok(pages, cs_base + target) and target != rip
                    and all(i.start != target for i in insns)):
                g.follow(target)
                g.finish_insn()
                addr = target
                continue
        done = g.ended or ins.opc in BLOCK_ENDERS
        if done and not g.ended:
            g.end()
        elif not done and (emulating or full or not _page_ok(pages, cs_base + addr)):
            g.exit_to(hex(addr))
            done = True
        g.finish_insn()
        if done:
            break
    _drop_dead_temps(g.lines, g.flag_state, g.line_insn)
    cached = None if emulating else _cache_registers(g.lines)
    head = "; " + cached[0] if cached else ""
    src = "def _blk(_b=None):\n    n = smc = 0%s\n    while True:\n%s\n" % (head, "\n".join(g.lines))
    code = _CODE.get(src)
    if code is None:
        if len(_CODE) >= MAX_CODE_CACHE:
            _CODE.clear()
        code = _CODE[src] = compile(src, "<block %#x>" % lin, "exec", dont_inherit=True)
    exec(code, namespace)
    b = Block()
    b.fn = namespace.pop("_blk")
    b.fn.__defaults__ = (b,)        # the frame's _b names the block when it raises
    b.insns = insns
    b.line_insn = g.line_insn
    b.flag_state = g.flag_state
    b.reg_locals, b.barriers = cached[1:] if cached else ((), frozenset())
    b.rip = rip
    b.cs_base = cs_base
    b.lin = lin
    b.spans = _spans(insns, cs_base)
    b.last_ip = max(i.start + len(i.raw) for i in insns) - 1    # checked against the CS limit
    b.mode_key = mode.key
    b.source = src
    return b
