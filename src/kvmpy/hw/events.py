"""What can stop a guest instruction: guest faults and VM-exit intercepts.

Both are Python exceptions raised from inside translated code (or the
processor's slow paths).  The processor catches them at the block boundary,
maps them back to the instruction that raised them (which has left no partial
state), and either delivers the fault through the guest's IDT or ends
``Processor.run`` with a VM exit.
"""

from __future__ import annotations

from ..uapi.kvm import DF_VECTOR, PF_VECTOR

# The kinds of event the processor delivers, as VMX numbers them (interruption types, SDM
# 24.8.3); SVM's EVENTINJ/EXITINTINFO types are translated from these in kvmpy.hw.svm.
EXT_INTR, NMI, HW_EXC, SW_INT, PRIV_SW_EXC, SW_EXC = 0, 2, 3, 4, 5, 6


class Fault(Exception):
    """A guest exception (#DE, #UD, #GP, #PF...) with its error code.  A #DB carries its
    cause in ``dr6`` (DR6's status bits: B0-B3, BS), which the processor writes into DR6 when
    it delivers the exception to the guest, and reports instead of writing when the
    exception causes a VM exit (VMX's exit qualification; KVM owns DR6 then)."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None, dr6: int = 0):
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.dr6 = dr6


class Intercept(Exception):
    """A VM exit: ``kind`` names the event, ``info`` carries its details.

    Kinds: io, hlt, cpuid, rdmsr, wrmsr, cr, invlpg, exception, ept_violation, task_switch,
    triple_fault, preemption, interrupt_window, vmcall, xsetbv, invalid_state.
    The vendor formatter (``kvmpy.hw.virt.vmx`` / ``kvmpy.hw.virt.svm``) turns them into the
    vendor's exit reason and qualification.
    """

    def __init__(self, kind: str, **info):
        super().__init__(kind)
        self.kind = kind
        self.info = info


# Exception classes for double-fault detection (SDM vol. 3 tables 6-4 and 6-5)
CONTRIBUTORY = frozenset((0, 10, 11, 12, 13))
EXCPT_BENIGN, EXCPT_CONTRIBUTORY, EXCPT_PF, EXCPT_DF = range(4)


def exception_class(vector: int) -> int:
    """The class of an exception for the double-fault rules (SDM table 6-4)."""
    if vector == PF_VECTOR:
        return EXCPT_PF
    if vector == DF_VECTOR:
        return EXCPT_DF
    return EXCPT_CONTRIBUTORY if vector in CONTRIBUTORY else EXCPT_BENIGN


def is_double_fault(first: int, second: int) -> bool:
    """Does ``second``, raised while delivering exception ``first``, make a #DF (table 6-5)?"""
    c1, c2 = exception_class(first), exception_class(second)
    return c1 == EXCPT_CONTRIBUTORY and c2 == EXCPT_CONTRIBUTORY or c1 == EXCPT_PF and c2 != EXCPT_BENIGN


HAS_ERROR_CODE = frozenset((8, 10, 11, 12, 13, 14, 17, 21))
