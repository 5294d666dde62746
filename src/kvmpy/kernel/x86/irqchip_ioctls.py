"""The VM ioctls of the in-kernel irqchip (the cases of x86.c's kvm_arch_vm_ioctl and
kvm_main.c's kvm_vm_ioctl that reach it): KVM_CREATE_IRQCHIP, KVM_IRQ_LINE(_STATUS),
KVM_GET/SET_IRQCHIP, KVM_SET_GSI_ROUTING, KVM_SIGNAL_MSI, and KVM_ENABLE_CAP's
KVM_CAP_SPLIT_IRQCHIP.  Importing this module registers them (with their
KVM_CHECK_EXTENSION answers) in x86's tables, as i8254.py does for the PIT.

Errnos are the host's: no irqchip is ENXIO for the line and state ioctls and EINVAL for the
routing table and KVM_SIGNAL_MSI; a second KVM_CREATE_IRQCHIP is EEXIST, one after a vCPU
exists EINVAL.  An MSI no LAPIC takes makes KVM_SIGNAL_MSI return -1 (EPERM).

A split irqchip (KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP), before any vCPU and instead of
KVM_CREATE_IRQCHIP) puts the LAPICs in the kernel and leaves the PIC and IOAPIC to user
space: its routing table holds MSI routes only, the first args[0] GSIs being the user space
IOAPIC's pins, whose level EOIs come back as KVM_EXIT_IOAPIC_EOI.
"""

from __future__ import annotations

import ctypes
import errno

from ... import uapi
from ..fs import copy_from_user, copy_to_user, kernel_error
from ..irqchip import (KVM_MAX_IRQ_ROUTES, KVM_USERSPACE_IRQ_SOURCE_ID, KvmKernelIrqRoutingEntry, kvm_set_irq,
                       kvm_set_irq_routing)
from ..kvm_host import KVM_IRQCHIP_KERNEL, KVM_IRQCHIP_SPLIT
from . import i8259, ioapic, irq_comm, x86


def _read(arg, ctype):
    return ctype.from_buffer_copy(copy_from_user(arg, ctypes.sizeof(ctype)))


def kvm_vm_ioctl_create_irqchip(kvm, arg) -> int:
    with kvm.lock:
        if x86.irqchip_in_kernel(kvm):
            raise kernel_error(errno.EEXIST)
        if kvm.created_vcpus:
            raise kernel_error(errno.EINVAL)
        kvm.arch.vpic = i8259.kvm_pic_init(kvm)
        kvm.arch.vioapic = ioapic.kvm_ioapic_init(kvm)
        irq_comm.kvm_setup_default_irq_routing(kvm)
        kvm.arch.irqchip_mode = KVM_IRQCHIP_KERNEL      # last: the routing is in place
    return 0


def kvm_vm_ioctl_irq_line(kvm, irq_event: uapi.kvm_irq_level, line_status: bool) -> None:
    if not x86.irqchip_in_kernel(kvm):
        raise kernel_error(errno.ENXIO)
    irq_event.status = kvm_set_irq(kvm, KVM_USERSPACE_IRQ_SOURCE_ID, irq_event.irq, irq_event.level, line_status)


def _irq_line(kvm, arg) -> int:
    kvm_vm_ioctl_irq_line(kvm, _read(arg, uapi.kvm_irq_level), False)
    return 0


def _irq_line_status(kvm, arg) -> int:
    irq_event = _read(arg, uapi.kvm_irq_level)
    kvm_vm_ioctl_irq_line(kvm, irq_event, True)
    copy_to_user(arg, irq_event)
    return 0


def _irqchip_kernel(kvm) -> None:
    """GET/SET_IRQCHIP need the full in-kernel irqchip (a split one has no PIC or IOAPIC)."""
    if kvm.arch.irqchip_mode != KVM_IRQCHIP_KERNEL:
        raise kernel_error(errno.ENXIO)


def kvm_vm_ioctl_get_irqchip(kvm, chip: uapi.kvm_irqchip) -> None:
    if chip.chip_id in (uapi.KVM_IRQCHIP_PIC_MASTER, uapi.KVM_IRQCHIP_PIC_SLAVE):
        chip.chip.pic = i8259.kvm_pic_get_state(kvm.arch.vpic, chip.chip_id)
    elif chip.chip_id == uapi.KVM_IRQCHIP_IOAPIC:
        chip.chip.ioapic = ioapic.kvm_get_ioapic(kvm.arch.vioapic)
    else:
        raise kernel_error(errno.EINVAL)


def kvm_vm_ioctl_set_irqchip(kvm, chip: uapi.kvm_irqchip) -> None:
    if chip.chip_id in (uapi.KVM_IRQCHIP_PIC_MASTER, uapi.KVM_IRQCHIP_PIC_SLAVE):
        i8259.kvm_pic_set_state(kvm.arch.vpic, chip.chip_id, chip.chip.pic)
    elif chip.chip_id == uapi.KVM_IRQCHIP_IOAPIC:
        ioapic.kvm_set_ioapic(kvm.arch.vioapic, chip.chip.ioapic)
    else:
        raise kernel_error(errno.EINVAL)


def _get_irqchip(kvm, arg) -> int:
    chip = _read(arg, uapi.kvm_irqchip)
    _irqchip_kernel(kvm)
    kvm_vm_ioctl_get_irqchip(kvm, chip)
    copy_to_user(arg, chip)
    return 0


def _set_irqchip(kvm, arg) -> int:
    chip = _read(arg, uapi.kvm_irqchip)
    _irqchip_kernel(kvm)
    kvm_vm_ioctl_set_irqchip(kvm, chip)
    return 0


def _set_gsi_routing(kvm, arg) -> int:
    """KVM_SET_GSI_ROUTING: the header (EFAULT first, as on the host), then ``nr`` entries after it."""
    routing = _read(arg, uapi.kvm_irq_routing)
    if not x86.irqchip_in_kernel(kvm):                  # kvm_arch_can_set_irq_routing
        raise kernel_error(errno.EINVAL)
    if routing.nr > KVM_MAX_IRQ_ROUTES or routing.flags:
        raise kernel_error(errno.EINVAL)
    size = ctypes.sizeof(uapi.kvm_irq_routing_entry)
    raw = copy_from_user(arg + ctypes.sizeof(uapi.kvm_irq_routing), size * routing.nr) if routing.nr else b""
    ues = [uapi.kvm_irq_routing_entry.from_buffer_copy(raw, i * size) for i in range(routing.nr)]
    kvm_set_irq_routing(kvm, ues, routing.flags, irq_comm.kvm_set_routing_entry)
    kvm_arch_irq_routing_update(kvm)
    return 0


def kvm_arch_irq_routing_update(kvm) -> None:
    """A split irqchip's vCPUs take their EOI-exit vectors from the MSI routes: rescan."""
    if x86.irqchip_split(kvm):
        x86.kvm_make_scan_ioapic_request(kvm)


def kvm_send_userspace_msi(kvm, msi: uapi.kvm_msi) -> int:
    """KVM_SIGNAL_MSI: send one MSI as if through an MSI route; its return value is the
    number of LAPICs that took it."""
    if not x86.irqchip_in_kernel(kvm) or msi.flags & ~uapi.KVM_MSI_VALID_DEVID:
        raise kernel_error(errno.EINVAL)
    route = KvmKernelIrqRoutingEntry(0, uapi.KVM_IRQ_ROUTING_MSI)
    route.msi = (msi.address_lo, msi.address_hi, msi.data)
    r = irq_comm.kvm_set_msi(route, kvm, KVM_USERSPACE_IRQ_SOURCE_ID, 1, False)
    if r < 0:
        raise kernel_error(errno.EPERM)         # the kernel's -1, returned as it is
    return r


def _signal_msi(kvm, arg) -> int:
    return kvm_send_userspace_msi(kvm, _read(arg, uapi.kvm_msi))


def kvm_vm_enable_split_irqchip(kvm, cap) -> int:
    """KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP): args[0] is how many GSIs user space's IOAPIC
    uses (at most KVM_MAX_IRQ_ROUTES); EEXIST once an irqchip or a vCPU exists."""
    with kvm.lock:
        if cap.args[0] > KVM_MAX_IRQ_ROUTES:
            raise kernel_error(errno.EINVAL)
        if x86.irqchip_in_kernel(kvm) or kvm.created_vcpus:
            raise kernel_error(errno.EEXIST)
        kvm.arch.nr_reserved_ioapic_pins = cap.args[0]
        kvm.arch.irqchip_mode = KVM_IRQCHIP_SPLIT
    return 0


x86.vm_ioctl_handlers.update({
    uapi.KVM_CREATE_IRQCHIP: kvm_vm_ioctl_create_irqchip,
    uapi.KVM_IRQ_LINE: _irq_line,
    uapi.KVM_IRQ_LINE_STATUS: _irq_line_status,
    uapi.KVM_GET_IRQCHIP: _get_irqchip,
    uapi.KVM_SET_IRQCHIP: _set_irqchip,
    uapi.KVM_SET_GSI_ROUTING: _set_gsi_routing,
    uapi.KVM_SIGNAL_MSI: _signal_msi,
})
x86.vm_enable_cap_handlers[uapi.KVM_CAP_SPLIT_IRQCHIP] = kvm_vm_enable_split_irqchip
x86.supported_caps.update({uapi.KVM_CAP_IRQCHIP: 1, uapi.KVM_CAP_IRQ_ROUTING: KVM_MAX_IRQ_ROUTES,
                           uapi.KVM_CAP_IRQ_INJECT_STATUS: 1, uapi.KVM_CAP_SIGNAL_MSI: 1,
                           uapi.KVM_CAP_SPLIT_IRQCHIP: 1})
