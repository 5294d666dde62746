"""KVM_GET_STATS_FD: the binary statistics files of a VM and a vCPU, on kvmpy and on the host.

The files are read with os.pread only, as a VMM (e.g. QEMU) does; their layout and the
user-visible exit counters must match the host's.
"""

import errno
import os

import pytest

from kvmpy import syscalls
from kvmpy.uapi import kvm as uapi
from tests.support import rawvmm
from tests.support.guestvm import Machine, assemble, prot32
from tests.support.statsfd import read_stats, values


# ------------------------------------------------------------------ statistics
VCPU_NAMES = {"exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits", "irq_window_exits", "nmi_window_exits",
              "signal_exits",
              "request_irq_exits", "pf_taken", "pf_fixed", "pf_emulate", "pf_guest", "tlb_flush", "invlpg",
              "insn_emulation", "insn_emulation_fail", "hypercalls", "irq_injections", "nmi_injections",
              "directed_yield_attempted", "directed_yield_successful"}
VM_NAMES = {"mmu_shadow_zapped", "mmu_pte_write", "mmu_pde_zapped", "mmu_flooded", "mmu_recycled",
            "mmu_cache_miss", "remote_tlb_flush"}

STATS_GUEST = prot32(" mov $0x41, %al\n out %al, $0x80\n hlt\n movl 0xd0000000, %eax\n"
                     " movl %eax, 0x9000\n hlt\n")


def _stats_run(sc):
    """Stats files of a VM and its vCPU, read before and after the stats guest runs."""
    m = Machine(sc, assemble(STATS_GUEST))
    close = syscalls.close if sc is syscalls else os.close
    fds = [sc.ioctl(m.vm_fd, uapi.KVM_GET_STATS_FD, 0), sc.ioctl(m.vcpu_fd, uapi.KVM_GET_STATS_FD, 0)]
    try:
        before = [read_stats(fd) for fd in fds]
        m.until("HLT")
        m.until("HLT")
        after = [read_stats(fd) for fd in fds]
    finally:
        for fd in fds:
            close(fd)
        m.close()
    return before, after


def _layout(s):
    return {k: s[k] for k in ("flags", "name_size", "id_offset", "desc_offset")}


@pytest.mark.host
def test_stats_layout_matches_host(soft_kvm):
    """The same reader parses both; kvmpy's header and each of its descriptors are the host's."""
    (host_vm, host_vcpu), _ = _stats_run(rawvmm.HOST)
    (soft_vm, soft_vcpu), _ = _stats_run(syscalls)
    for host, soft, names in ((host_vm, soft_vm, VM_NAMES), (host_vcpu, soft_vcpu, VCPU_NAMES)):
        assert _layout(soft) == _layout(host)
        assert soft["id"].split("/")[1:] == host["id"].split("/")[1:]      # "kvm-<pid>[/vcpu-0]"
        assert soft["data_offset"] == soft["desc_offset"] + soft["num_desc"] * (16 + soft["name_size"])
        assert set(soft["stats"]) == names and names <= set(host["stats"])
        for name, d in soft["stats"].items():
            assert {k: v for k, v in d.items() if k != "value"} == \
                {k: v for k, v in host["stats"][name].items() if k != "value"}, name
        host_order = [n for n in host["stats"] if n in names]
        assert list(soft["stats"]) == host_order


def test_soft_stats_live(soft_kvm, soft_mmu):
    """os.pread on the descriptor sees the counters move while the guest runs."""
    (vm0, vcpu0), (vm1, vcpu1) = _stats_run(syscalls)
    assert vm0["id"] == "kvm-%d" % os.getpid() and vcpu0["id"] == vm0["id"] + "/vcpu-0"
    assert all(d["value"] == 0 for d in vcpu0["stats"].values())
    v = {n: d["value"] for n, d in vcpu1["stats"].items()}
    assert v["io_exits"] == 1 and v["halt_exits"] == 2 and v["mmio_exits"] == 1
    assert v["insn_emulation"] >= 1 and v["pf_emulate"] >= 1
    assert v["pf_taken"] >= v["pf_fixed"] + v["pf_emulate"] and v["pf_fixed"] >= 2
    assert v["exits"] >= v["io_exits"] + v["halt_exits"] + v["pf_taken"]


@pytest.mark.host
def test_stats_user_exits_match_host(soft_kvm):
    """The exits user space sees are counted alike: halt and mmio exits. (Not io_exits: KVM
    counts those in the VMX/SVM I/O exit handler, which the host's kvm_pvm, running the guest
    in the emulator, never reaches -- it reports 0 for this guest's OUT.)"""
    keys = ("halt_exits", "mmio_exits")
    (_, _), (_, host) = _stats_run(rawvmm.HOST)
    (_, _), (_, soft) = _stats_run(syscalls)
    assert [soft["stats"][k]["value"] for k in keys] == [host["stats"][k]["value"] for k in keys]


def test_soft_stats_file_semantics(soft_kvm):
    """Read-only, ENOTTY for ioctls, sequential read() of the whole image, and the file keeps
    the VM alive after its other descriptors are closed."""
    m = Machine(syscalls, assemble(STATS_GUEST))
    assert syscalls.ioctl(m.kvm_fd, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_BINARY_STATS_FD) == 1
    fd = syscalls.ioctl(m.vcpu_fd, uapi.KVM_GET_STATS_FD, 0)
    vm_fd = syscalls.ioctl(m.vm_fd, uapi.KVM_GET_STATS_FD, 0)
    try:
        m.until("HLT")
        with pytest.raises(OSError) as e:
            os.write(fd, b"x")
        assert e.value.errno == errno.EBADF
        with pytest.raises(OSError) as e:
            syscalls.ioctl(fd, uapi.KVM_RUN, 0)
        assert e.value.errno == errno.ENOTTY
        s = read_stats(fd)
        whole = os.read(fd, 1 << 16)
        assert len(whole) == s["data_offset"] + 8 * s["num_desc"]
        assert whole == os.pread(fd, len(whole), 0)
        m.close()                                   # VM, vCPU and /dev/kvm descriptors closed
        assert values(fd)["halt_exits"] == 1
        assert set(values(vm_fd)) == VM_NAMES
    finally:
        syscalls.close(fd)
        syscalls.close(vm_fd)


def test_soft_remote_tlb_flush_on_dirty_log(soft_kvm, soft_mmu):
    """Harvesting a dirty log write-protects the pages again: one remote TLB flush."""
    m = Machine(syscalls, assemble(prot32(" movl $1, 0x200000\n hlt\n")))
    fd = syscalls.ioctl(m.vm_fd, uapi.KVM_GET_STATS_FD, 0)
    try:
        logged = m.memory(1 << 16)
        m.set_slot(1, 0x200000, logged, flags=uapi.KVM_MEM_LOG_DIRTY_PAGES)
        m.until("HLT")
        assert values(fd)["remote_tlb_flush"] == 0
        assert m.dirty_log(1, 16) == [0]
        assert values(fd)["remote_tlb_flush"] == 1
    finally:
        syscalls.close(fd)
        m.close()
