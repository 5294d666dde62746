"""Binary statistics (virt/kvm/binary_stats.c): the counters and the KVM_GET_STATS_FD file.

KVM keeps each VM's and vCPU's counters in ``kvm->stat`` / ``vcpu->stat`` and exposes them
through a read-only file whose bytes are, in order (``Documentation/virt/kvm/api.rst``):

    struct kvm_stats_header   flags, name_size, num_desc, id_offset, desc_offset, data_offset
    id string                 name_size bytes: "kvm-<pid>" or "kvm-<pid>/vcpu-<id>"
    descriptors               num_desc x (struct kvm_stats_desc + name[name_size])
    data                      one u64 per counter, at data_offset + desc.offset

kvmpy builds that image once, in a memfd, and keeps the counters *in* its data block:
``KvmStats`` is the dict-like ``vcpu.stat`` / ``kvm.stat`` and reads and writes the u64s of
the mapping.  Every KVM_GET_STATS_FD opens the memfd again, read-only, through
``/proc/self/fd`` (a new open file description, with its own offset, like the kernel's new
file per call), so ``os.read``/``os.pread`` on the descriptor see the live values with no
help from kvmpy.  Differences from the host's anonymous-inode file: ``fstat`` shows the
image's size rather than 0, and ``lseek`` moves the offset (the kernel's is a no-op).

The names are the host's, in the host's order; kvmpy lists only the counters its kernel
maintains (the host has more, e.g. the halt-polling histograms).
"""

from __future__ import annotations

import ctypes
import mmap
import os

from .. import uapi

__all__ = ["VM_STATS", "VCPU_STATS", "KvmStats", "stats_id_vm", "stats_id_vcpu"]

# Cumulative u64 counters, unit none, base 10, exponent 0 (flags 0 in the descriptor).
VM_STATS = (
    "remote_tlb_flush", "mmu_shadow_zapped", "mmu_pte_write", "mmu_pde_zapped", "mmu_flooded",
    "mmu_recycled", "mmu_cache_miss",
)
VCPU_STATS = (
    "pf_taken", "pf_fixed", "pf_emulate", "pf_guest", "tlb_flush", "invlpg", "exits", "io_exits",
    "mmio_exits", "signal_exits", "irq_window_exits", "nmi_window_exits", "halt_exits", "request_irq_exits",
    "irq_exits", "insn_emulation", "insn_emulation_fail", "hypercalls", "irq_injections",
    "nmi_injections", "directed_yield_attempted", "directed_yield_successful",
)

_FLAGS = uapi.KVM_STATS_TYPE_CUMULATIVE | uapi.KVM_STATS_UNIT_NONE | uapi.KVM_STATS_BASE_POW10
NAME_SIZE = uapi.KVM_STATS_NAME_SIZE


def stats_id_vm() -> str:
    return "kvm-%d" % os.getpid()


def stats_id_vcpu(vcpu_id: int) -> str:
    return "%s/vcpu-%d" % (stats_id_vm(), vcpu_id)


def _image_layout(n: int):
    """(id_offset, desc_offset, data_offset, size) of a stats file with ``n`` u64 counters."""
    id_offset = ctypes.sizeof(uapi.kvm_stats_header)
    desc_offset = id_offset + NAME_SIZE
    data_offset = desc_offset + n * (ctypes.sizeof(uapi.kvm_stats_desc) + NAME_SIZE)
    return id_offset, desc_offset, data_offset, data_offset + 8 * n


class KvmStats:
    """A VM's or vCPU's counters, stored in the data block of its stats file image.

    Used like the dict it replaces (``stat[name]``, ``stat.get(name, 0)``); a name the file
    does not describe is a KeyError on write, so a misspelt counter cannot go unnoticed.
    """

    __slots__ = ("names", "memfd", "_map", "_values", "_index")

    def __init__(self, stats_id: str, names):
        self.names = tuple(names)
        n = len(self.names)
        id_offset, desc_offset, data_offset, size = _image_layout(n)
        self.memfd = os.memfd_create(stats_id, os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, size)
        self._map = mmap.mmap(self.memfd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        header = uapi.kvm_stats_header(flags=0, name_size=NAME_SIZE, num_desc=n, id_offset=id_offset,
                                       desc_offset=desc_offset, data_offset=data_offset)
        self._map[0:id_offset] = bytes(header)
        self._map[id_offset:id_offset + NAME_SIZE] = stats_id.encode().ljust(NAME_SIZE, b"\0")[:NAME_SIZE]
        stride = ctypes.sizeof(uapi.kvm_stats_desc) + NAME_SIZE
        for i, name in enumerate(self.names):
            desc = uapi.kvm_stats_desc(flags=_FLAGS, exponent=0, size=1, offset=8 * i, bucket_size=0)
            at = desc_offset + i * stride
            self._map[at:at + stride] = bytes(desc) + name.encode().ljust(NAME_SIZE, b"\0")
        self._values = (ctypes.c_uint64 * n).from_buffer(self._map, data_offset)
        self._index = {name: i for i, name in enumerate(self.names)}

    def __getitem__(self, name: str) -> int:
        return self._values[self._index[name]]

    def __setitem__(self, name: str, value: int) -> None:
        self._values[self._index[name]] = value

    def get(self, name: str, default: int = 0) -> int:
        i = self._index.get(name)
        return default if i is None else self._values[i]

    def items(self):
        return [(name, self._values[i]) for i, name in enumerate(self.names)]

    def open_fd(self) -> int:
        """A new read-only descriptor on the image (the caller installs it as a kvmpy file)."""
        return os.open("/proc/self/fd/%d" % self.memfd, os.O_RDONLY | os.O_CLOEXEC)

    def free(self) -> None:
        """The VM is gone: release the memfd (the counters stay readable in memory)."""
        if self.memfd is not None:
            os.close(self.memfd)
            self.memfd = None
