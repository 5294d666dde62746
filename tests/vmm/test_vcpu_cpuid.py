"""Each vCPU's CPUID names its own APIC ID (vmm/cpu_setup.cpuid_for_vcpu), as QEMU sets it:
kvm-unit-tests' apic test checks it on CPU 1 (leaf 1 EBX[31:24], leaf 0xB EDX)."""

import pytest

from kvmpy import guests
from kvmpy.uapi import kvm as uapi
from kvmpy.vmm.machine import Machine


def _cpuid2(vcpu):
    buf = uapi.with_entries(uapi.kvm_cpuid2, 256)()
    buf.nent = 256
    vcpu._ioctl(uapi.KVM_GET_CPUID2, buf)
    return buf.entries[:buf.nent]


@pytest.mark.parametrize("cpu", ["Skylake-Server", "EPYC-Milan"])
def test_every_vcpu_reports_its_apic_id(soft_kvm, cpu):
    with Machine(guests.image_path("biosboot"), smp=3, params={"cpu": cpu}) as m:
        for i, vcpu in enumerate(m.vcpus):
            entries = _cpuid2(vcpu)
            leaf1 = next(e for e in entries if e.function == 1)
            assert leaf1.ebx >> 24 == i
            assert all(e.edx == i for e in entries if e.function in (0xB, 0x1F))
            assert all(e.eax == i for e in entries if e.function == 0x8000001E)
            assert any(e.function in (0xB, 0x8000001E) for e in entries)
