"""Shared pytest configuration for kvmpy's tests."""

import pytest

from tests.support.hostkvm import host_kvm_usable


def pytest_runtest_setup(item):
    """Tests marked ``host`` need the host's /dev/kvm: skip them cleanly where it is absent."""
    if item.get_closest_marker("host") and not host_kvm_usable():
        pytest.skip("needs the host's /dev/kvm")


@pytest.fixture(scope="session")
def soft_kvm():
    """Make sure kvmpy's /dev/kvm is registered (the vendor module loaded, like modprobe)."""
    from kvmpy import syscalls
    from kvmpy.kernel import fs, kvm_main
    if not fs.misc_is_registered(syscalls.KVM_DEVICE):
        syscalls._load_kvm()
    return kvm_main


@pytest.fixture(params=["tdp", "shadow"])
def soft_mmu(request):
    """Run the soft kernel with two-dimensional paging, then with shadow paging."""
    from kvmpy.kernel.x86 import params
    saved = params.ept
    params.set(ept=request.param == "tdp")
    yield request.param
    params.set(ept=saved)
