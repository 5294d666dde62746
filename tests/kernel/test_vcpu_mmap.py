"""mmap of a vCPU descriptor past its three pages (kvm_vcpu_mmap / kvm_vcpu_fault).

KVM accepts a mapping of any length: the pages at offsets 0, 1 and 2 are kvm_run, the PIO
data page and the coalesced MMIO ring, and touching any page past them is SIGBUS.  The touch
runs in a child process, on kvmpy and, where /dev/kvm exists, on the host.
"""

import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import mmap, os, sys
    from kvmpy import uapi as K
    if sys.argv[1] == "soft":
        from kvmpy import syscalls as s
        kvm = s.open("/dev/kvm", os.O_RDWR)
        ioctl, vmap = s.ioctl, lambda fd, n: s.mmap(fd, n)
    else:
        from kvmpy import compat
        kvm = os.open("/dev/kvm", os.O_RDWR)
        ioctl, vmap = compat.ioctl, lambda fd, n: mmap.mmap(fd, n)
    vcpu = ioctl(ioctl(kvm, K.KVM_CREATE_VM, 0), K.KVM_CREATE_VCPU, 0)
    m = vmap(vcpu, 4 * 4096)
    m[3 * 4096 - 1] = 1                 # the last byte of the coalesced MMIO ring: mapped
    print("ring ok", flush=True)
    m[3 * 4096] = 1                     # the fourth page: SIGBUS
    print("no fault")
""")


@pytest.mark.parametrize("backend", ["soft", pytest.param("host", marks=pytest.mark.host)])
def test_page_past_the_ring_is_sigbus(backend):
    r = subprocess.run([sys.executable, "-c", CHILD, backend], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout == "ring ok\n", r.stderr
    assert r.returncode == -signal.SIGBUS
