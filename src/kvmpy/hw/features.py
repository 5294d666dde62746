"""The CPUID feature bits of kvmpy's software processor.

``FEATURES`` names each architectural feature flag with its CPUID location
``(leaf, subleaf, register, bit)``; ``IMPLEMENTED`` is the set the processor actually
implements.  KVM's supported CPUID (``kvmpy.kernel.x86.cpuid``) advertises exactly these, so a
guest never sees a feature the "silicon" lacks.  Add a name to ``IMPLEMENTED`` in the same
change that implements the feature in ``kvmpy.hw``.
"""

from __future__ import annotations

EAX, EBX, ECX, EDX = "eax", "ebx", "ecx", "edx"

FEATURES: dict[str, tuple[int, int, str, int]] = {
    # leaf 1 EDX
    "fpu": (1, 0, EDX, 0), "vme": (1, 0, EDX, 1), "de": (1, 0, EDX, 2), "pse": (1, 0, EDX, 3),
    "tsc": (1, 0, EDX, 4), "msr": (1, 0, EDX, 5), "pae": (1, 0, EDX, 6), "mce": (1, 0, EDX, 7),
    "cx8": (1, 0, EDX, 8), "apic": (1, 0, EDX, 9), "sep": (1, 0, EDX, 11), "mtrr": (1, 0, EDX, 12),
    "pge": (1, 0, EDX, 13), "mca": (1, 0, EDX, 14), "cmov": (1, 0, EDX, 15), "pat": (1, 0, EDX, 16),
    "pse36": (1, 0, EDX, 17), "clflush": (1, 0, EDX, 19), "mmx": (1, 0, EDX, 23),
    "fxsr": (1, 0, EDX, 24), "sse": (1, 0, EDX, 25), "sse2": (1, 0, EDX, 26),
    # leaf 1 ECX
    "sse3": (1, 0, ECX, 0), "pclmulqdq": (1, 0, ECX, 1), "ssse3": (1, 0, ECX, 9),
    "cx16": (1, 0, ECX, 13), "pcid": (1, 0, ECX, 17), "sse4_1": (1, 0, ECX, 19), "sse4_2": (1, 0, ECX, 20),
    "x2apic": (1, 0, ECX, 21), "movbe": (1, 0, ECX, 22), "popcnt": (1, 0, ECX, 23),
    "tsc_deadline_timer": (1, 0, ECX, 24), "xsave": (1, 0, ECX, 26), "osxsave": (1, 0, ECX, 27),
    "avx": (1, 0, ECX, 28), "rdrand": (1, 0, ECX, 30), "hypervisor": (1, 0, ECX, 31),
    # leaf 7.0
    "fsgsbase": (7, 0, EBX, 0), "tsc_adjust": (7, 0, EBX, 1), "bmi1": (7, 0, EBX, 3), "smep": (7, 0, EBX, 7),
    "bmi2": (7, 0, EBX, 8), "erms": (7, 0, EBX, 9), "invpcid": (7, 0, EBX, 10),
    "smap": (7, 0, EBX, 20), "umip": (7, 0, ECX, 2), "rdpid": (7, 0, ECX, 22),
    "la57": (7, 0, ECX, 16),
    # leaf 0xD.1
    "xsaveopt": (0xD, 1, EAX, 0),
    # leaf 0x80000001
    "lahf_lm": (0x80000001, 0, ECX, 0), "abm": (0x80000001, 0, ECX, 5),
    "syscall": (0x80000001, 0, EDX, 11), "nx": (0x80000001, 0, EDX, 20),
    "pdpe1gb": (0x80000001, 0, EDX, 26), "rdtscp": (0x80000001, 0, EDX, 27),
    "lm": (0x80000001, 0, EDX, 29), "misalignsse": (0x80000001, 0, ECX, 7),
    # leaf 0x80000021 (AMD)
    "null_sel_clr_base": (0x80000021, 0, EAX, 6),
}

IMPLEMENTED: frozenset[str] = frozenset({
    "tsc", "tsc_adjust", "msr", "pae", "pse", "cx8", "apic", "sep", "mtrr", "pge", "cmov", "pat", "pse36",
    "clflush", "syscall", "nx", "lm", "lahf_lm", "hypervisor",
    # x87, MMX and SSE..SSE4.2 (kvmpy.hw.insn.x87 / mmx / sse, kvmpy.hw.fpu.sse42, FXSAVE in
    # kvmpy.hw.fpu.fxsave); XSAVE/XRSTOR/XSAVEOPT for x87 and SSE (kvmpy.hw.fpu.xsave; no AVX)
    "fpu", "mmx", "fxsr", "sse", "sse2", "sse3", "ssse3", "sse4_1", "sse4_2", "xsave", "xsaveopt",
    # MOVBE and CRC32 (kvmpy.hw.insn.movbe_crc32)
    "movbe",
    # integer instructions of those generations (kvmpy.hw.insn.bits / atomic)
    "popcnt", "abm", "cx16",
    # the in-kernel LAPIC's x2APIC mode and TSC-deadline timer (kernel/x86/lapic.py), which KVM
    # advertises whatever the host has
    "x2apic", "tsc_deadline_timer",
    # RDTSCP and RDPID, reading IA32_TSC_AUX (kvmpy.hw.insn.system / atomic)
    "rdtscp", "rdpid",
})


# Vendor-only features a CPU model may add (``kvmpy.hw.models``): misaligned SSE mode
# (MXCSR.MM, kvmpy.hw.insn.sse) and the null-selector base clearing (kvmpy.hw.system.segments)
MODEL_FEATURES: frozenset[str] = frozenset({"misalignsse", "null_sel_clr_base"})


def implemented(name: str) -> bool:
    return name in IMPLEMENTED


def linear_address_bits() -> int:
    """The width a processor with LA57 checks loaded bases against whatever CR4.LA57 says
    (descriptor-table bases of LGDT/LIDT, FS/GS and the SYSCALL MSRs: Intel's 5-level paging
    paper; KVM since 6.13, max_host_virt_addr_bits): 57 with the feature, else 48."""
    return 57 if implemented("la57") else 48


def feature_mask(leaf: int, subleaf: int, reg: str, names=IMPLEMENTED) -> int:
    """The bits of register ``reg`` of CPUID ``leaf.subleaf`` set for the features ``names``."""
    mask = 0
    for name in names:
        l, s, r, bit = FEATURES[name]
        if l == leaf and s == subleaf and r == reg:
            mask |= 1 << bit
    return mask
