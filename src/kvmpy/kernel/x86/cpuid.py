"""CPUID for guests (arch/x86/kvm/cpuid.c).

``KVM_GET_SUPPORTED_CPUID`` tells user space what kvmpy can virtualise: the CPU model in use
(``kvmpy.hw.models``: identity, caches, topology, address sizes) with exactly the features
the software processor implements (``kvmpy.hw.features``); and ``KVM_SET_CPUID2`` gives a
vCPU the table its CPUID instruction answers from (the CPUID exit, ``kvm_emulate_cpuid`` in
``run.py``, asks ``kvm_cpuid``).  ``kvm_cpuid`` applies KVM's lookup rules,
including the one for leaves the table lacks (Intel guests get the highest basic leaf).
"""

from __future__ import annotations

import ctypes
import errno

from ... import uapi
from ...uapi.kvm_para import (KVM_FEATURE_CLOCKSOURCE, KVM_FEATURE_CLOCKSOURCE2,  # noqa: F401
                              KVM_FEATURE_CLOCKSOURCE_STABLE_BIT, KVM_FEATURE_NOP_IO_DELAY,
                              KVM_FEATURE_PV_SEND_IPI)
from kvmpy.hw import features, models, x86defs as hd
from kvmpy.hw.fpu import xsave
from ..fs import copy_from_user, copy_to_user, kernel_error
from ..trace import traced
from . import params

__all__ = [
    "KVM_MAX_CPUID_ENTRIES", "PHYS_ADDR_BITS", "CpuidEntry", "vendor_string", "kvm_cpu_model",
    "supported_cpuid", "kvm_dev_ioctl_get_supported_cpuid", "kvm_vcpu_ioctl_set_cpuid2",
    "kvm_vcpu_ioctl_get_cpuid2", "kvm_find_cpuid_entry", "guest_cpuid_has", "guest_maxphyaddr",
    "kvm_cpuid", "guest_cpuid_is_amd", "guest_cpuid_is_intel_compatible",
]

KVM_MAX_CPUID_ENTRIES = 256
PHYS_ADDR_BITS = 48                     # the host's: KVM's limit on guest-physical addresses
MAX_BASIC_LEAF = 0xD
FAMILY_MODEL_STEPPING = 0x600           # RDX at reset when the guest has no CPUID leaf 1
VENDORS = models.VENDOR_OF_MODULE
_ENTRY = ctypes.sizeof(uapi.kvm_cpuid_entry2)
_SIG = uapi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX


class CpuidEntry:
    """One guest CPUID entry (``struct kvm_cpuid_entry2`` without the padding)."""

    __slots__ = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")

    def __init__(self, function, index=0, flags=0, eax=0, ebx=0, ecx=0, edx=0):
        self.function, self.index, self.flags = function, index, flags
        self.eax, self.ebx, self.ecx, self.edx = eax, ebx, ecx, edx

    @classmethod
    def from_struct(cls, e) -> "CpuidEntry":
        return cls(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)

    def to_struct(self):
        return uapi.kvm_cpuid_entry2(self.function, self.index, self.flags, self.eax, self.ebx,
                                     self.ecx, self.edx)

    def matches(self, function: int, index: int) -> bool:
        return self.function == function and (self.index == index or not self.flags & _SIG)

    def __repr__(self):
        return "CpuidEntry(%#x.%d: %08x %08x %08x %08x)" % (
            self.function, self.index, self.eax, self.ebx, self.ecx, self.edx)


def vendor_string(vendor: str) -> tuple[int, int, int]:
    """(ebx, ecx, edx) of CPUID leaf 0 for a vendor string (``GenuineIntel``...)."""
    b = vendor.encode("ascii")
    return (int.from_bytes(b[0:4], "little"), int.from_bytes(b[8:12], "little"),
            int.from_bytes(b[4:8], "little"))


def kvm_cpu_model(vendor_name: str) -> models.CpuModel:
    """The CPU model the vCPUs run: the ``cpu`` module parameter, else the vendor module's
    own (kvm_intel: an Intel model, kvm_amd: an AMD one, as on real machines)."""
    return models.lookup(params.cpu or models.DEFAULT_FOR_MODULE[vendor_name], vendor_name)


def _regs(leaf: int, subleaf: int, names) -> dict:
    return {r: features.feature_mask(leaf, subleaf, r, names) for r in ("eax", "ebx", "ecx", "edx")}


def _xsave_leaves(names) -> list[CpuidEntry]:
    """Leaf 0xD: sub-leaf 0 has the XCR0 bits the processor supports and the area size
    (the same for every XCR0 it allows), sub-leaf 1 the XSAVE extensions (XSAVEOPT)."""
    if "xsave" not in names:
        return [CpuidEntry(0xD, 0, _SIG), CpuidEntry(0xD, 1, _SIG)]
    size = xsave.AREA_SIZE
    return [CpuidEntry(0xD, 0, _SIG, xsave.XCR0_SUPPORTED & 0xFFFFFFFF, size, size, xsave.XCR0_SUPPORTED >> 32),
            CpuidEntry(0xD, 1, _SIG, _regs(0xD, 1, names)["eax"])]


def _model_leaves(model, lo: int, hi: int) -> list[CpuidEntry]:
    """The model's own leaves (caches, topology) between ``lo`` and ``hi``; leaves with
    sub-leaves are marked index-significant."""
    subleafs = {leaf for leaf, sub in model.leaves if sub}
    return [CpuidEntry(leaf, sub, _SIG if leaf in subleafs else 0, *regs)
            for (leaf, sub), regs in sorted(model.leaves.items()) if lo <= leaf <= hi]


def supported_cpuid(model: models.CpuModel) -> list[CpuidEntry]:
    """The CPUID table kvmpy can give a guest of this CPU model: its identity and leaves, with
    exactly the features the processor implements (plus the model's vendor-only ones)."""
    names = features.IMPLEMENTED | model.features
    ebx, ecx, edx = vendor_string(model.vendor)
    leaf1 = _regs(1, 0, names)
    if "clflush" in names:
        leaf1["ebx"] |= 8 << 8                  # CLFLUSH line size: 8 quadwords
    ext = _regs(0x80000001, 0, names)
    amd = model.is_amd
    brand = [CpuidEntry(0x80000002 + i, 0, 0, *regs) for i, regs in enumerate(model.brand_leaves())]
    out = [
        CpuidEntry(0, 0, 0, MAX_BASIC_LEAF, ebx, ecx, edx),
        CpuidEntry(1, 0, 0, model.signature, leaf1["ebx"], leaf1["ecx"], leaf1["edx"]),
        *_model_leaves(model, 2, 6),
        CpuidEntry(7, 0, _SIG, 0, *(v for k, v in _regs(7, 0, names).items() if k != "eax")),
        *_model_leaves(model, 8, 0xC),
        *_xsave_leaves(names),
        CpuidEntry(0x80000000, 0, 0, model.max_ext_leaf, *((ebx, ecx, edx) if amd else (0, 0, 0))),
        CpuidEntry(0x80000001, 0, 0, model.signature if amd else 0, 0, ext["ecx"], ext["edx"]),
        *brand,
        *_model_leaves(model, 0x80000005, 0x80000007),
        CpuidEntry(0x80000008, 0, 0, model.phys_bits | model.virt_bits << 8),
        # up to the model's limit in 0x80000000 EAX, as KVM's loop over the extended leaves
        *_model_leaves(model, 0x80000009, min(0x8000001F, model.max_ext_leaf)),
    ]
    if model.max_ext_leaf >= 0x80000021:
        out.append(CpuidEntry(0x80000021, 0, 0, *_regs(0x80000021, 0, names).values()))
    return out + kvm_cpuid_leaves()


KVM_CPUID_SIGNATURE, KVM_CPUID_FEATURES = 0x40000000, 0x40000001


def kvm_cpuid_leaves():
    """KVM_CPUID_SIGNATURE ("KVMKVMKVM") and KVM_CPUID_FEATURES: the paravirtual features kvmpy
    has (kvmclock through the *_NEW MSRs, kernel/x86/kvmclock.py; port 0x80 needs no delay; the
    PV send-IPI hypercall, lapic.kvm_pv_send_ipi)."""
    sig = b"KVMKVMKVM\0\0\0"
    ebx, ecx, edx = (int.from_bytes(sig[i:i + 4], "little") for i in (0, 4, 8))
    features = (1 << KVM_FEATURE_NOP_IO_DELAY | 1 << KVM_FEATURE_CLOCKSOURCE2 | 1 << KVM_FEATURE_CLOCKSOURCE_STABLE_BIT
                | 1 << KVM_FEATURE_PV_SEND_IPI)
    return [CpuidEntry(KVM_CPUID_SIGNATURE, 0, 0, KVM_CPUID_FEATURES, ebx, ecx, edx),
            CpuidEntry(KVM_CPUID_FEATURES, 0, 0, features)]


def _read_cpuid2_header(arg: int) -> uapi.kvm_cpuid2:
    return uapi.kvm_cpuid2.from_buffer_copy(copy_from_user(arg, ctypes.sizeof(uapi.kvm_cpuid2)))


def _write_entries(arg: int, entries: list[CpuidEntry]) -> None:
    hdr = uapi.kvm_cpuid2(nent=len(entries))
    copy_to_user(arg + ctypes.sizeof(hdr), b"".join(bytes(e.to_struct()) for e in entries))
    copy_to_user(arg, hdr)


@traced
def kvm_dev_ioctl_get_supported_cpuid(arg: int, vendor_name: str) -> int:
    """KVM_GET_SUPPORTED_CPUID: E2BIG (nent untouched) when the caller's array is too small."""
    nent = _read_cpuid2_header(arg).nent
    entries = supported_cpuid(kvm_cpu_model(vendor_name))
    if nent < 1 or nent < len(entries):
        raise kernel_error(errno.E2BIG)
    _write_entries(arg, entries)
    return 0


def kvm_vcpu_ioctl_set_cpuid2(vcpu, arg: int) -> int:
    nent = _read_cpuid2_header(arg).nent
    if nent > KVM_MAX_CPUID_ENTRIES:
        raise kernel_error(errno.E2BIG)
    raw = copy_from_user(arg + ctypes.sizeof(uapi.kvm_cpuid2), nent * _ENTRY)
    entries = [CpuidEntry.from_struct(uapi.kvm_cpuid_entry2.from_buffer_copy(raw, i * _ENTRY))
               for i in range(nent)]
    if vcpu.arch.has_run and not _same_table(entries, vcpu.arch.cpuid_entries):
        raise kernel_error(errno.EINVAL)        # CPUID is frozen once the vCPU has run
    vcpu.arch.cpuid_entries = entries
    kvm_vcpu_after_set_cpuid(vcpu)
    return 0


def _same_table(a, b) -> bool:
    key = lambda e: (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)  # noqa: E731
    return [key(e) for e in a] == [key(e) for e in b]


def kvm_vcpu_after_set_cpuid(vcpu) -> None:
    """Recompute what depends on the guest's CPUID (address width, feature checks; the
    reserved bits of the guest's page-table entries follow both)."""
    vcpu.arch.maxphyaddr = guest_maxphyaddr(vcpu)
    vcpu.arch.gbpages = guest_cpuid_has(vcpu, "pdpe1gb")
    vcpu.arch.cr4_guest_rsvd_bits = cr4_reserved_bits(lambda name: guest_cpuid_has(vcpu, name))
    # VMX's "enable RDTSCP" follows either feature, as vmx_secondary_exec_control sets it (on
    # SVM, KVM's RDTSCP intercept gives the guest the same #UD)
    vcpu.arch.cpu.rdtscp_enabled = guest_cpuid_has(vcpu, "rdtscp") or guest_cpuid_has(vcpu, "rdpid")
    for hook in after_set_cpuid_hooks:
        hook(vcpu)


# what layers above follow the guest's CPUID with (the LAPIC's version and timer modes)
after_set_cpuid_hooks: list = []


# CR4 bits reserved unless the CPUID has their feature (KVM's __cr4_reserved_bits; the other
# bits of that list kvmpy never supports, see x86.CR4_RESERVED)
CR4_FEATURE_BITS = ((hd.CR4_OSXSAVE, "xsave"), (hd.CR4_SMEP, "smep"), (hd.CR4_SMAP, "smap"),
                    (hd.CR4_FSGSBASE, "fsgsbase"), (hd.CR4_UMIP, "umip"), (hd.CR4_PCIDE, "pcid"))


def cr4_reserved_bits(has) -> int:
    """The CR4 feature bits whose feature ``has(name)`` denies: over the supported features
    (kvm_caps: what any vCPU may set, before KVM_SET_CPUID2 too) or a guest's CPUID (once
    KVM_SET_CPUID2 gave it one)."""
    return sum(bit for bit, name in CR4_FEATURE_BITS if not has(name))


def kvm_vcpu_ioctl_get_cpuid2(vcpu, arg: int) -> int:
    nent = _read_cpuid2_header(arg).nent
    entries = vcpu.arch.cpuid_entries
    if nent < len(entries):
        raise kernel_error(errno.E2BIG)
    _write_entries(arg, entries)
    return 0


def kvm_find_cpuid_entry(vcpu, function: int, index: int = 0) -> CpuidEntry | None:
    for e in vcpu.arch.cpuid_entries:
        if e.matches(function, index):
            return e
    return None


def guest_cpuid_has(vcpu, feature_name: str) -> bool:
    """Does the guest's CPUID (as set by KVM_SET_CPUID2) show this feature?"""
    leaf, subleaf, reg, bit = features.FEATURES[feature_name]
    e = kvm_find_cpuid_entry(vcpu, leaf, subleaf)
    return e is not None and bool(getattr(e, reg) >> bit & 1)


def guest_maxphyaddr(vcpu) -> int:
    e = kvm_find_cpuid_entry(vcpu, 0x80000008)
    return (e.eax & 0xFF) if e is not None and e.eax & 0xFF else 36


def guest_cpuid_is_amd(vcpu) -> bool:
    e = kvm_find_cpuid_entry(vcpu, 0)
    return e is not None and (e.ebx, e.ecx, e.edx) == vendor_string(models.AMD)


# the vendors whose CPUs follow Intel's rules where KVM distinguishes (is_intel_compatible)
_INTEL_COMPATIBLE = (models.INTEL, "CentaurHauls", "  Shanghai  ")


def guest_cpuid_is_intel_compatible(vcpu) -> bool:
    """KVM applies Intel-only checks (TSC_AUX's reserved high half) only to a guest whose CPUID
    vendor is Intel's or a compatible one; a vCPU without CPUID is none of them."""
    e = kvm_find_cpuid_entry(vcpu, 0)
    return e is not None and (e.ebx, e.ecx, e.edx) in [vendor_string(v) for v in _INTEL_COMPATIBLE]


def _out_of_range_entry(vcpu, function: int, index: int):
    """KVM's rule for a leaf with no entry: Intel guests get the highest basic leaf, unless the
    leaf is in the hypervisor range or within its class's advertised maximum."""
    basic = kvm_find_cpuid_entry(vcpu, 0)
    if basic is None or guest_cpuid_is_amd(vcpu):
        return None
    if 0x40000000 <= function <= 0x4FFFFFFF:
        return None
    cls = kvm_find_cpuid_entry(vcpu, function & 0x80000000)
    if cls is not None and function <= cls.eax:
        return None
    return kvm_find_cpuid_entry(vcpu, basic.eax, index)


def kvm_cpuid(vcpu, eax: int, ecx: int) -> tuple[int, int, int, int]:
    """What CPUID with these inputs returns in the guest."""
    function, index = eax & 0xFFFFFFFF, ecx & 0xFFFFFFFF
    entry = kvm_find_cpuid_entry(vcpu, function, index) or _out_of_range_entry(vcpu, function, index)
    if entry is None:
        out = (0, 0, 0, 0)
    else:
        out = (entry.eax, entry.ebx, entry.ecx, entry.edx)
        if entry.function == 1:
            out = _runtime_leaf1(vcpu, out)
    return out


def _runtime_leaf1(vcpu, out):
    """Bits of leaf 1 that follow the vCPU's state (kvm_update_cpuid_runtime)."""
    a, b, c, d = out
    cpu = vcpu.arch.cpu
    if d >> 9 & 1 and not cpu.apic_base & 0x800:
        d &= ~(1 << 9)                              # APIC disabled in IA32_APIC_BASE
    if c >> 26 & 1:                                 # XSAVE: OSXSAVE mirrors CR4.OSXSAVE
        c = (c & ~(1 << 27)) | ((cpu.cr4 >> 18 & 1) << 27)
    return a, b, c, d
