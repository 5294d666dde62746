"""Eventfds and irq ack notifiers (virt/kvm/eventfd.c).

Ack notifiers: a device that must know when the guest has finished with an interrupt (the
PIT's tick reinjection, an irqfd's resampler) registers a ``KvmIrqAckNotifier`` for a GSI;
the in-kernel interrupt controllers call ``kvm_notify_acked_gsi`` (or
``kvm_notify_acked_irq`` with a chip and pin) when the guest EOIs it.
"""

from __future__ import annotations


class KvmIrqAckNotifier:
    """struct kvm_irq_ack_notifier: ``irq_acked(self)`` runs when GSI ``gsi`` is acknowledged."""

    __slots__ = ("gsi", "irq_acked")

    def __init__(self, gsi: int, irq_acked):
        self.gsi = gsi
        self.irq_acked = irq_acked


def kvm_register_irq_ack_notifier(kvm, kian: KvmIrqAckNotifier) -> None:
    with kvm.lock:
        kvm.irq_ack_notifier_list = kvm.irq_ack_notifier_list + [kian]


def kvm_unregister_irq_ack_notifier(kvm, kian: KvmIrqAckNotifier) -> None:
    with kvm.lock:
        kvm.irq_ack_notifier_list = [k for k in kvm.irq_ack_notifier_list if k is not kian]


def kvm_notify_acked_gsi(kvm, gsi: int) -> None:
    """The guest acknowledged GSI ``gsi``: run its notifiers (the list is replaced, never
    changed in place, so a notifier may unregister itself)."""
    for kian in kvm.irq_ack_notifier_list:
        if kian.gsi == gsi:
            kian.irq_acked(kian)
