"""x86.c's legacy performance-counter MSRs on a vCPU without a PMU.

kvmpy emulates no performance monitoring: it is KVM with ``enable_pmu=0`` (its supported
CPUID has no architectural PMU leaf nor AMD's PerfCtrExtCore).  KVM then still serves the
counters every x86 processor of the vendors had before those features -- AMD's four
K7 event selects and counters, Intel's two P6 ones -- as registers that read 0 and ignore
what is written, because guests probe them without checking CPUID (kvm-unit-tests'
start-up code writes the K7 event selects of an AMD guest).
"""

from __future__ import annotations

from ...hw.msr_index import MSR_K7_EVNTSEL0, MSR_K7_PERFCTR0, MSR_P6_EVNTSEL0, MSR_P6_PERFCTR0
from . import x86

DISABLED_PERFCTR_MSRS = (tuple(range(MSR_K7_EVNTSEL0, MSR_K7_EVNTSEL0 + 4))
                         + tuple(range(MSR_K7_PERFCTR0, MSR_K7_PERFCTR0 + 4))
                         + (MSR_P6_EVNTSEL0, MSR_P6_EVNTSEL0 + 1, MSR_P6_PERFCTR0, MSR_P6_PERFCTR0 + 1))


def get_disabled_perfctr(vcpu, index: int, host_initiated: bool):
    return 0, 0


def set_disabled_perfctr(vcpu, index: int, data: int, host_initiated: bool) -> int:
    return 0


x86.msr_handlers.update({index: (get_disabled_perfctr, set_disabled_perfctr)
                         for index in DISABLED_PERFCTR_MSRS})
