"""KVM_SIGNAL_MSI and KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP), host /dev/kvm versus kvmpy: the
capabilities, the errnos, what a split irqchip refuses (KVM_CREATE_IRQCHIP, IRQCHIP routes,
KVM_GET_IRQCHIP, KVM_CREATE_PIT2) and takes (KVM_IRQ_LINE through MSI routes, KVM_INTERRUPT
for user space's PIC).  An MSI that no LAPIC takes makes KVM_SIGNAL_MSI fail with EPERM (the
kernel returns -1).  The expected values are the host's (kvm_pvm on Linux 6.18, measured);
the rows where a LAPIC must take the message wait for kvmpy's in-kernel LAPIC."""

import pytest

from kvmpy.uapi import kvm as uapi
from tests.support.guestvm import BACKENDS, errno_name as _try


def _msi(sc, vm, lo=0xFEE00000, data=0x30, flags=0):
    return _try(lambda: sc.ioctl(vm, uapi.KVM_SIGNAL_MSI, uapi.kvm_msi(address_lo=lo, data=data, flags=flags)))


def _cap(sc, fd, cap, flags=0, pins=0):
    ec = uapi.kvm_enable_cap(cap=cap, flags=flags)
    ec.args[0] = pins
    return _try(lambda: sc.ioctl(fd, uapi.KVM_ENABLE_CAP, ec))


def _routes(sc, vm, entries):
    table = uapi.with_entries(uapi.kvm_irq_routing, len(entries))()
    table.nr = len(entries)
    for i, (gsi, kind, a, b) in enumerate(entries):
        e = table.entries[i]
        e.gsi, e.type = gsi, kind
        if kind == uapi.KVM_IRQ_ROUTING_MSI:
            e.u.msi.address_lo, e.u.msi.data = a, b
        else:
            e.u.irqchip.irqchip, e.u.irqchip.pin = a, b
    return _try(lambda: sc.ioctl(vm, uapi.KVM_SET_GSI_ROUTING, table))


def _line(sc, vm, irq, level):
    line = uapi.kvm_irq_level(irq=irq, level=level)
    r = _try(lambda: sc.ioctl(vm, uapi.KVM_IRQ_LINE_STATUS, line))
    return line.status if r == 0 else r


SPLIT = uapi.KVM_CAP_SPLIT_IRQCHIP


def probe(sc):
    out = {}
    kvm = sc.open("/dev/kvm")
    try:
        for name in ("SIGNAL_MSI", "SPLIT_IRQCHIP", "ENABLE_CAP_VM"):
            out["cap " + name] = sc.ioctl(kvm, uapi.KVM_CHECK_EXTENSION, getattr(uapi, "KVM_CAP_" + name))
        vm = sc.ioctl(kvm, uapi.KVM_CREATE_VM, 0)
        out["msi, no chip"] = _msi(sc, vm)
        out["enable unknown"] = _cap(sc, vm, 9999)
        out["enable efault"] = _try(lambda: sc.ioctl(vm, uapi.KVM_ENABLE_CAP, 8))
        out["split, flags"] = _cap(sc, vm, SPLIT, flags=1)
        out["split, 4097 pins"] = _cap(sc, vm, SPLIT, pins=4097)
        out["split"] = _cap(sc, vm, SPLIT, pins=24)
        out["split again"] = _cap(sc, vm, SPLIT, pins=24)
        out["create irqchip"] = _try(lambda: sc.ioctl(vm, uapi.KVM_CREATE_IRQCHIP, 0))
        out["create pit"] = _try(lambda: sc.ioctl(vm, uapi.KVM_CREATE_PIT2, uapi.kvm_pit_config()))
        out["get irqchip"] = _try(lambda: sc.ioctl(vm, uapi.KVM_GET_IRQCHIP, uapi.kvm_irqchip(chip_id=2)))
        out["line, no route"] = _line(sc, vm, 3, 1)
        out["msi, no vcpu"] = _msi(sc, vm)
        out["irqchip route"] = _routes(sc, vm, [(0, uapi.KVM_IRQ_ROUTING_IRQCHIP, 2, 0)])
        out["msi route"] = _routes(sc, vm, [(3, uapi.KVM_IRQ_ROUTING_MSI, 0xFEE00000, 0x30)])
        out["line, msi route, no vcpu"] = [_line(sc, vm, 3, 1), _line(sc, vm, 3, 0)]
        vcpu = sc.ioctl(vm, uapi.KVM_CREATE_VCPU, 0)
        out["interrupt (user space PIC)"] = [_try(lambda: sc.ioctl(vcpu, uapi.KVM_INTERRUPT, uapi.kvm_interrupt(irq=v)))
                                             for v in (0x30, 0x31, 256)]
        for fd in (vcpu, vm):
            sc.close(fd)
        vm = sc.ioctl(kvm, uapi.KVM_CREATE_VM, 0)
        vcpu = sc.ioctl(vm, uapi.KVM_CREATE_VCPU, 0)
        out["split after vcpu"] = _cap(sc, vm, SPLIT, pins=24)
        for fd in (vcpu, vm):
            sc.close(fd)
        vm = sc.ioctl(kvm, uapi.KVM_CREATE_VM, 0)
        sc.ioctl(vm, uapi.KVM_CREATE_IRQCHIP, 0)
        out["split after irqchip"] = _cap(sc, vm, SPLIT, pins=24)
        out["msi, chip, no vcpu"] = [_msi(sc, vm), _msi(sc, vm, flags=uapi.KVM_MSI_VALID_DEVID), _msi(sc, vm, flags=2)]
        out["msi efault"] = _try(lambda: sc.ioctl(vm, uapi.KVM_SIGNAL_MSI, 8))
        sc.close(vm)
    finally:
        sc.close(kvm)
    return out


HOST = {
    "cap SIGNAL_MSI": 1, "cap SPLIT_IRQCHIP": 1, "cap ENABLE_CAP_VM": 1,
    "msi, no chip": "EINVAL", "enable unknown": "EINVAL", "enable efault": "EFAULT",
    "split, flags": "EINVAL", "split, 4097 pins": "EINVAL", "split": 0, "split again": "EEXIST",
    "create irqchip": "EEXIST", "create pit": "ENOENT", "get irqchip": "ENXIO", "line, no route": -1,
    "msi, no vcpu": "EPERM", "irqchip route": "EINVAL", "msi route": 0, "line, msi route, no vcpu": [-1, -1],
    "interrupt (user space PIC)": [0, "EEXIST", "EINVAL"],
    "split after vcpu": "EEXIST", "split after irqchip": "EEXIST",
    "msi, chip, no vcpu": ["EPERM", "EPERM", "EINVAL"], "msi efault": "EFAULT",
}


@pytest.mark.parametrize("sc", BACKENDS)
def test_signal_msi_and_split_irqchip_as_on_the_host(sc):
    assert probe(sc) == HOST
