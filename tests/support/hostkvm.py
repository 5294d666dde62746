"""Whether the host's /dev/kvm, the oracle for the KVM API, can be used from this process."""

import os


def host_kvm_usable():
    """True when the host's /dev/kvm exists and this process may open it."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True
