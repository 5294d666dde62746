"""The legacy performance-counter MSRs on kvmpy, which has no PMU (kernel/x86/pmu.py): as
on the host, writing 0 to each and reading it back works, from the VMM and from the guest;
on kvmpy, as on KVM with enable_pmu=0, a value written is dropped."""

import pytest

from kvmpy.kernel.x86 import pmu
from tests.support import guestvm
from tests.support.guestvm import BACKENDS

MSRS = pmu.DISABLED_PERFCTR_MSRS


# the guest writes 0 to each and reads it back: no #GP ("G"), EDX:EAX all zero
GUEST = guestvm.assemble(guestvm.prot32("xor %esi, %esi\n" + "".join(f"""
 mov ${index:#x}, %ecx
 xor %eax, %eax
 xor %edx, %edx
 wrmsr
 rdmsr
 or %eax, %esi
 or %edx, %esi
""" for index in MSRS) + " hlt\n", handlers={13: guestvm.GP_SKIP2}))


@pytest.mark.parametrize("sc", BACKENDS)
def test_the_counters_take_zero_as_on_the_host(sc):
    m = guestvm.Machine(sc, GUEST)
    try:
        vmm = (m.msrs(0, *MSRS), m.msrs(None, *MSRS))
        m.until("HLT")
        guest = (m.console, m.regs("rsi"))
    finally:
        m.close()
    assert vmm == ((len(MSRS), [0] * len(MSRS)), (len(MSRS), [0] * len(MSRS)))
    assert guest == ("", {"rsi": "0x0"})


def test_kvmpy_drops_what_is_written(soft_kvm):
    from kvmpy import syscalls
    m = guestvm.Machine(syscalls, mode=None, ram=0)
    try:
        got = (m.msrs(0x1234, *MSRS), m.msrs(None, *MSRS))
    finally:
        m.close()
    assert got == ((len(MSRS), [0x1234] * len(MSRS)), (len(MSRS), [0] * len(MSRS)))
