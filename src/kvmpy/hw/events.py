"""What can stop a guest instruction: guest faults and VM-exit intercepts.

Both are Python exceptions raised from inside translated code (or the
processor's slow paths).  The processor catches them at the block boundary,
maps them back to the instruction that raised them (which has left no partial
state), and either delivers the fault through the guest's IDT or ends
``Processor.run`` with a VM exit.
"""

from __future__ import annotations

# The kinds of event the processor delivers, as VMX numbers them (interruption types, SDM
# 24.8.3); SVM's EVENTINJ/EXITINTINFO types are translated from these in kvmpy.hw.svm.
EXT_INTR, NMI, HW_EXC, SW_INT, PRIV_SW_EXC, SW_EXC = 0, 2, 3, 4, 5, 6


class Fault(Exception):
    """A guest exception (#DE, #UD, #GP, #PF...) with its error code."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None):
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


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


# Exception classes for double-fault detection (SDM vol. 3 table 6-5)
CONTRIBUTORY = frozenset((0, 10, 11, 12, 13))
HAS_ERROR_CODE = frozenset((8, 10, 11, 12, 13, 14, 17, 21))
