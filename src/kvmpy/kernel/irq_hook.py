"""Where the devices that raise interrupt lines (the PIT, irqfds) reach ``kvm_set_irq``.

``kvm_set_irq`` and the irq source ids live in ``kernel/irqchip.py`` (Linux's
virt/kvm/irqchip.c), which the in-kernel irqchip work adds.  Until that module exists no VM
can have an in-kernel PIC or IOAPIC to take the interrupt, so raising a line does nothing;
once it exists, every call goes straight to it.  Callers look ``kvm_set_irq`` up here at
call time, so that one module decides, and tests can watch the lines a device drives.
"""

from __future__ import annotations

try:
    from . import irqchip as _irqchip
except ImportError:         # no in-kernel irqchip in this tree yet
    _irqchip = None

# The irq source ids (include/linux/kvm_host.h); irqchip.py is their home once it exists.
KVM_USERSPACE_IRQ_SOURCE_ID = getattr(_irqchip, "KVM_USERSPACE_IRQ_SOURCE_ID", 0)
KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID = getattr(_irqchip, "KVM_IRQFD_RESAMPLE_IRQ_SOURCE_ID", 1)
KVM_PIT_IRQ_SOURCE_ID = getattr(_irqchip, "KVM_PIT_IRQ_SOURCE_ID", 2)


def kvm_set_irq(kvm, irq_source_id: int, gsi: int, level: int, line_status: bool = False) -> int:
    """Drive GSI ``gsi`` to ``level`` on behalf of ``irq_source_id``; a no-op only while the
    tree has no irqchip.py."""
    if _irqchip is None:
        return 0
    return _irqchip.kvm_set_irq(kvm, irq_source_id, gsi, level, line_status)
