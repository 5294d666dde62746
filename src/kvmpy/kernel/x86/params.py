"""Module parameters of kvmpy's KVM (like kvm_intel.ept= / kvm_amd.npt=).

Set before the first open of the device (``kvmpy.syscalls``); they take effect
for VMs created afterwards.
"""

from ...hw import models
from ..hrtimer import CLOCK_MODES

ept = True                 # two-dimensional paging (EPT/NPT); False = shadow paging
vendor = "vmx"             # which vendor module is loaded: "vmx" (kvm_intel) or "svm" (kvm_amd)
max_insns = 200_000        # instructions per VM entry before a preemption-timer exit
#: guest instructions a vCPU created from now on may retire over its whole life; when they are
#: done the kernel sends SIGXCPU to the vCPU thread (run.kvm_insn_limit_check).  None: no limit
insn_limit = None
clock = "virtual"          # the VM clock's time base (kernel/hrtimer.py): "virtual" or "host"
cpu = None                 # CPU model name (kvmpy.hw.models, QEMU's spelling); None: the vendor's


def set(**kw) -> None:       # noqa: A001  (mirrors "modprobe kvm_intel ept=0")
    g = globals()
    for k, v in kw.items():
        if k not in ("ept", "vendor", "max_insns", "insn_limit", "cpu", "clock"):
            raise ValueError("unknown kvm parameter %r" % k)
        if k == "vendor" and v not in ("vmx", "svm"):
            raise ValueError("vendor must be vmx or svm")
        if k == "clock" and v not in CLOCK_MODES:
            raise ValueError("clock must be one of %s" % ", ".join(CLOCK_MODES))
        if k == "cpu" and v is not None:
            try:
                models.lookup(v)
            except KeyError as e:
                raise ValueError(e.args[0]) from None
        if v is not None:
            g[k] = v
