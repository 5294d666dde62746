"""KVM_RUN follows the seed's chain (steps 7 and 8), recorded by the tracer."""

from kvmpy import syscalls
from kvmpy.guests import load_image
from kvmpy.kernel import trace
from tests.support import rawvmm


def _names(records):
    return [r.name for r in records if r.kind == "call"]


def test_kvm_run_chain_and_exit_paths():
    trace.start()
    try:
        result = rawvmm.run_guest(load_image("longmode"), syscalls)
    finally:
        records = trace.stop()
    assert result["exit_value"] == 0
    names = _names(records)
    chain = ["kvm_vcpu_ioctl", "kvm_arch_vcpu_ioctl_run", "vcpu_run", "vcpu_enter_guest", "vmx_vcpu_run",
             "vmx_handle_exit"]
    i = names.index("kvm_arch_vcpu_ioctl_run") - 1
    assert names[i:i + len(chain)] == chain
    # both I/O paths of seed step 8: the fast path and the emulator (string I/O, MMIO)
    assert "kvm_fast_pio" in names
    assert "kvm_emulate_instruction" in names
    assert "kvm_tdp_page_fault" in names
    events = {r.name for r in records if r.kind == "event"}
    assert {"kvm_entry", "kvm_exit", "kvm_pio", "kvm_mmio", "kvm_userspace_exit"} <= events
