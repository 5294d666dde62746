"""Shared pytest configuration for kvmpy's tests."""

import os

import pytest


def host_kvm_usable():
    """True when the host's /dev/kvm exists and this process may open it."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def pytest_runtest_setup(item):
    """Tests marked ``host`` need the host's /dev/kvm: skip them cleanly where it is absent."""
    if item.get_closest_marker("host") and not host_kvm_usable():
        pytest.skip("needs the host's /dev/kvm")
