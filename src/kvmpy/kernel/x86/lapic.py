"""The local APIC's side of the PIC connection (arch/x86/kvm/lapic.c).

KVM resets the boot processor's LAPIC with LINT0 in ExtINT mode, so the 8259's INTR output
reaches the BSP only; the application processors ignore the PIC.  kvmpy's in-kernel LAPIC
registers (the LVTs, the enable bits) are not emulated yet, so the PIC's interrupts go to
the vCPU that KVM's reset state would give them: the boot processor
(``kvm.arch.bsp_vcpu_id``, KVM_SET_BOOT_CPU_ID).
"""

from __future__ import annotations


def kvm_apic_accept_pic_intr(vcpu) -> bool:
    """Does this vCPU take the PIC's ExtINT (LINT0 unmasked in ExtINT mode)?"""
    return vcpu.vcpu_id == vcpu.kvm.arch.bsp_vcpu_id
