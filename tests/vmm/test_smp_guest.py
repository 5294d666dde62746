"""kvmpy/guests/smp.S through ``kvmpy run -smp N``: the boot processor starts the others with
INIT and SIPI, IPIs go both ways, and every CPU's LOCK INCs add up to the exact total; on
kvmpy under both vendor modules and MMU modes, and on the host's /dev/kvm.  The machine
makes one thread per vCPU and the in-kernel irqchip (several CPUs need it); fw_cfg tells
the guest how many CPUs there are."""

import pytest

from kvmpy import guests
from tests.support.cli import kvmpy_run
from tests.support.hostkvm import host_kvm_usable

GUEST = str(guests.image_path("smp"))
DEBUG_EXIT_OK = 1               # isa-debug-exit of 0: QEMU's (0 << 1) | 1


def _line(cpus):
    return f"smp: {cpus} cpus, {cpus - 1} ipis, counter {1000 * cpus}\n"     # (text mode: CR LF read as LF)


@pytest.mark.parametrize("vendor,mmu", [("vmx", "tdp"), ("svm", "shadow")])
@pytest.mark.parametrize("cpus", [2, 4])
def test_smp_guest_on_kvmpy(cpus, vendor, mmu):
    status, out, err = kvmpy_run("--vendor", vendor, "--mmu", mmu, "-smp", str(cpus), GUEST, timeout=300)
    assert (status, out) == (DEBUG_EXIT_OK, _line(cpus)), err


def test_one_cpu_has_nobody_to_start():
    status, out, err = kvmpy_run("-smp", "1", "-machine", "kernel-irqchip=on", GUEST, timeout=120)
    assert (status, out) == (DEBUG_EXIT_OK, _line(1)), err


@pytest.mark.host
def test_smp_guest_on_the_host():
    if not host_kvm_usable():
        pytest.skip("no usable /dev/kvm")
    status, out, err = kvmpy_run("--accel", "host", "-smp", "4", GUEST, timeout=120)
    assert (status, out) == (DEBUG_EXIT_OK, _line(4)), err


def test_several_cpus_need_the_in_kernel_irqchip():
    status, out, err = kvmpy_run("-smp", "2", "-machine", "kernel-irqchip=off", GUEST, timeout=60)
    assert status == 2 and "kernel-irqchip" in err and len(err.strip().splitlines()) == 1
