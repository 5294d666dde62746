"""Creating a VM and a vCPU records the seed's call chains, in order (seed steps 1-6)."""

import os

import pytest

from kvmpy import syscalls as S
from kvmpy import uapi as K
from kvmpy.kernel import trace


def _calls(records):
    return [(r.depth, r.name) for r in records if r.kind == "call"]


def _in_order(names, expected):
    """``expected`` appears in ``names`` as a subsequence."""
    it = iter(names)
    return all(any(n == e for n in it) for e in expected)


def test_module_init_chain(soft_kvm):
    """kvm_init -> kvm_arch_init -> kvm_irqfd_init -> kvm_arch_hardware_setup (then misc_register)."""
    from kvmpy.kernel import fs, kvm_main
    from kvmpy.kernel.x86 import x86
    ops = x86.kvm_x86_ops()
    if kvm_main.vm_list:
        pytest.skip("VMs left open by other tests keep the module in use")
    kvm_main.kvm_exit()
    assert not fs.misc_is_registered("/dev/kvm")
    with trace.tracing() as t:
        kvm_main.kvm_init(ops)
    assert fs.misc_is_registered("/dev/kvm")
    assert _calls(t.records) == [(0, "kvm_init"), (1, "kvm_arch_init"), (1, "kvm_irqfd_init"),
                                 (1, "kvm_arch_hardware_setup")]


def test_create_vm_and_vcpu_chains(soft_kvm):
    kvm = S.open("/dev/kvm", os.O_RDWR)
    with trace.tracing() as t:
        vm = S.ioctl(kvm, K.KVM_CREATE_VM)
        vcpu = S.ioctl(vm, K.KVM_CREATE_VCPU, 0)
    calls = _calls(t.records)
    names = [n for _, n in calls]
    # seed step 3
    assert calls[:6] == [(0, "kvm_dev_ioctl"), (1, "kvm_dev_ioctl_create_vm"), (2, "kvm_create_vm"),
                         (3, "kvm_arch_init_vm"), (3, "hardware_enable_all"), (3, "kvm_arch_post_init_vm")]
    # seed step 5, at the right depths
    depth = dict((n, d) for d, n in calls)
    step5 = ["kvm_vm_ioctl", "kvm_vm_ioctl_create_vcpu", "kvm_arch_vcpu_precreate", "kvm_vcpu_init",
             "kvm_arch_vcpu_create", "kvm_get_kvm", "create_vcpu_fd", "kvm_arch_vcpu_postcreate"]
    assert _in_order(names, step5)
    assert {depth[n] for n in step5[2:]} == {depth["kvm_vm_ioctl_create_vcpu"] + 1}
    inside = ["kvm_mmu_create", "fpu_alloc_guest_fpstate", "kvm_pmu_init", "kvm_hv_vcpu_init",
              "kvm_vcpu_mtrr_init", "vcpu_load", "kvm_vcpu_reset", "kvm_init_mmu"]
    assert _in_order(names, inside)
    assert {depth[n] for n in inside} == {depth["kvm_arch_vcpu_create"] + 1}
    assert "init_kvm_tdp_mmu" in names or "init_kvm_softmmu" in names
    # and the formatter shows the tree
    text = trace.format_records(t.records)
    assert "    kvm_create_vm()" in text.splitlines()[2]
    for fd in (vcpu, vm, kvm):
        S.close(fd)


def test_tracing_off_records_nothing(soft_kvm):
    kvm = S.open("/dev/kvm", os.O_RDWR)
    trace.start()
    trace.stop()
    vm = S.ioctl(kvm, K.KVM_CREATE_VM)
    assert trace.stop() == [] and not trace.is_on()
    S.close(vm)
    S.close(kvm)


def test_events_are_recorded_with_depth():
    with trace.tracing() as t:
        trace.event("kvm_exit", reason="HLT", rip=0x1000)
    assert t.records == [trace.Record("event", 0, "kvm_exit", {"reason": "HLT", "rip": 0x1000}, t.records[0].thread)]
    assert trace.format_records(t.records) == "kvm_exit: reason=HLT rip=0x1000"
