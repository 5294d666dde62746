"""Architectural state of one software x86-64 logical processor.

This is the "silicon's" register file: what VMX keeps in the guest-state area of
the VMCS, or SVM in the VMCB save area.  The kernel (``kvmpy.kernel.x86``) reads
and writes it for ``KVM_GET/SET_REGS`` and friends; the execution engine
(``kvmpy.hw.cpu``) runs guest code against it.

General-purpose registers are kept in x86 *encoding* order (RAX RCX RDX RBX RSP
RBP RSI RDI R8..R15), because that is how the decoder indexes them; the kernel
converts to ``struct kvm_regs`` order.  Arithmetic flags are kept lazily (see
``kvmpy.hw.flags``): ``get_rflags()`` materialises them, ``set_rflags()``
makes them eager again.
"""

from __future__ import annotations

from kvmpy.hw.x86defs import ARITH_FLAGS, CR0_PE, CS, DS, EFER_LMA, ES, FS, GS, RDX, RFLAGS_WRITABLE, SS, VM

from . import flags as lazy
from kvmpy.hw.fpu import x87 as fpu
from kvmpy.hw.fpu import simd

MP_STATE_RUNNABLE, MP_STATE_UNINITIALIZED, MP_STATE_INIT_RECEIVED, MP_STATE_HALTED, MP_STATE_SIPI_RECEIVED = range(5)


class Segment:
    """A segment register with its hidden descriptor cache (kvm_segment's fields)."""

    __slots__ = ("selector", "base", "limit", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable")

    def __init__(self, selector=0, base=0, limit=0xFFFF, type=3, present=1, dpl=0, db=0, s=1, l=0, g=0, avl=0,
                 unusable=0):
        self.selector = selector
        self.base = base
        self.limit = limit
        self.type = type
        self.present = present
        self.dpl = dpl
        self.db = db
        self.s = s
        self.l = l
        self.g = g
        self.avl = avl
        self.unusable = unusable

    def copy(self) -> "Segment":
        s = Segment.__new__(Segment)
        for k in Segment.__slots__:
            setattr(s, k, getattr(self, k))
        return s

    def __eq__(self, other):
        return isinstance(other, Segment) and all(getattr(self, k) == getattr(other, k) for k in Segment.__slots__)

    def __repr__(self):
        return "Segment(%s)" % ", ".join("%s=%#x" % (k, getattr(self, k)) for k in Segment.__slots__)


class FPUState:
    """x87/SSE state in the shape of FXSAVE (and of struct kvm_fpu).

    The class also carries the execution units translated code calls, so that code
    reaches them from ``cpu.fpu`` without names of its own in the block namespace:
    ``cpu.fpu.sse`` (``kvmpy.hw.fpu.simd``) and ``cpu.fpu.x87`` (``kvmpy.hw.fpu.x87``).
    """

    __slots__ = ("st", "fcw", "fsw", "ftw", "fop", "fip", "fdp", "xmm", "mxcsr", "top", "used")
    sse = simd
    x87 = fpu

    def __init__(self):
        self.reset()

    def reset(self):
        # st[i] is the 80-bit physical register i (not ST(i)): (mantissa u64, sign_exponent u16)
        self.st = [0] * 8          # 80-bit values as ints
        self.fcw = 0x37F
        self.fsw = 0
        self.ftw = 0               # abridged tag word (FXSAVE format): bit i set = register i valid
        self.top = 0
        self.fop = 0
        self.fip = 0
        self.fdp = 0
        self.xmm = [0] * 16        # 128-bit ints
        self.mxcsr = 0x1F80
        self.used = 0              # XSAVE components an instruction touched since their init


class CPUState:
    """Every architectural register of one logical processor."""

    def __init__(self):
        self.regs = [0] * 16
        self._power_on()

    def _power_on(self):
        """Architectural power-on values (the register list is kept: code holds it)."""
        self.regs[:] = [0] * 16
        self.rip = 0
        self.flags = 2             # RFLAGS bits that are not kept lazily (see get_rflags)
        self.cc_op = lazy.CC_EAGER  # lazy arithmetic flags: operation, result, source
        self.cc_dst = 0
        self.cc_src = 0
        self.cc_aux = 0
        self.seg = [Segment() for _ in range(6)]
        self.tr = Segment(type=11, s=0)
        self.ldtr = Segment(type=2, s=0)
        self.gdt_base = 0
        self.gdt_limit = 0xFFFF
        self.idt_base = 0
        self.idt_limit = 0xFFFF
        self.cr0 = 0x60000010
        self.cr2 = self.cr3 = self.cr4 = 0
        self.cr8 = 0
        self.efer = 0
        self.xcr0 = 1
        self.dr = [0, 0, 0, 0, 0xFFFF0FF0, 0x400, 0xFFFF0FF0, 0x400]   # dr4/dr5 alias dr6/dr7
        self.apic_base = 0xFEE00000 | 0x800 | 0x100
        self.msrs = {}             # MSRs with no dedicated field (PAT, STAR, MTRRs, ...)
        self.tsc = 0
        self.fpu = FPUState()
        self.mp_state = MP_STATE_RUNNABLE
        self.interrupt_shadow = 0  # 1 = STI blocking, 2 = MOV SS blocking
        self.nmi_masked = False
        self.halted = False

    # --- flags ---------------------------------------------------------------------------
    def get_rflags(self) -> int:
        """Materialise RFLAGS from the lazy-flags fields."""
        if self.cc_op == lazy.CC_EAGER:
            return self.flags
        return (self.flags & ~ARITH_FLAGS) | lazy.compute(self.cc_op, self.cc_dst, self.cc_src, self.cc_aux)

    def set_rflags(self, value: int) -> None:
        self.flags = (value & RFLAGS_WRITABLE) | 2
        self.cc_op = lazy.CC_EAGER

    # --- modes ---------------------------------------------------------------------------
    @property
    def cpl(self) -> int:
        if not self.cr0 & CR0_PE:
            return 0
        if self.flags & VM:
            return 3
        return self.seg[CS].dpl

    def long_mode_active(self) -> bool:
        return bool(self.efer & EFER_LMA)

    def reset(self):
        """Power-on/INIT state (Intel SDM vol. 3 table 9-1; KVM's kvm_vcpu_reset)."""
        keep_apic = self.apic_base
        self._power_on()
        self.apic_base = keep_apic
        self.regs[RDX] = 0x600   # family/model/stepping signature
        cs = self.seg[CS]
        cs.selector, cs.base, cs.limit, cs.type = 0xF000, 0xFFFF0000, 0xFFFF, 0xB
        for i in (ES, SS, DS, FS, GS):
            self.seg[i].type = 3
        self.rip = 0xFFF0
