"""Named CPU models: what a guest can tell about the processor it runs on.

A model is the processor's identity in CPUID (vendor, family/model/stepping, brand string,
cache and topology leaves, address sizes) and every behaviour in which Intel and AMD silicon
differ visibly, as a named field the processor reads where it matters (``cpu.model``)
instead of testing the vendor.  Names follow QEMU's ``-cpu`` spelling; ``host`` is the model
of the host machine's vendor and ``max`` the loaded vendor module's own model, both with every
feature the processor implements (``kvmpy.hw.features``), which is what every model
advertises: a model never shows a feature the processor lacks.

Where a behaviour comes from (``docs`` of each field): the AMD values were measured on an AMD
EPYC (Zen 3, family 25) with ``tests/oracle``; the Intel values come from the Intel SDM and
from figures measured on an Intel Xeon recorded in issue 6 (see
``tests/data/silicon/``).
"""

from __future__ import annotations

INTEL, AMD = "GenuineIntel", "AuthenticAMD"
VENDOR_OF_MODULE = {"vmx": INTEL, "svm": AMD}


def _cache4(kind: int, level: int, size_kib: int, ways: int, sharing: int = 1, inclusive: bool = False):
    """A deterministic cache-parameters entry (Intel leaf 4, AMD 0x8000001D), 64-byte lines."""
    sets = size_kib * 1024 // (64 * ways)
    eax = kind | level << 5 | 1 << 8 | (sharing - 1) << 14
    return (eax, 63 | (ways - 1) << 22, sets - 1, 2 if inclusive else 0)


class CpuModel:
    """One CPU model.  ``leaves`` maps (leaf, subleaf) to the (eax, ebx, ecx, edx) the model
    defines beyond the feature bits (caches, topology); behaviour fields:

    ``x87_cos_tiny_is_one``: FCOS/FSINCOS of a non-zero |x| < 2**-32 give +1.0 in every
        rounding mode (Intel, issue 6's figure) instead of cos(x) rounded as RC says (AMD,
        measured: 0.FFFF... toward -inf).
    ``xinuse_by_use``: XINUSE (XSAVE's XSTATE_BV) has a component's bit set by any
        instruction that uses it and cleared only by XRSTOR's init or reset (Intel: 3 after
        FNINIT + PXOR, issue 6), instead of by comparing the state with its initial
        configuration (AMD, measured: 0).  XSAVEOPT writes what XINUSE names.
    ``mxcsr_mask``: MXCSR's writable bits (FXSAVE bytes 28..31), from the features: 0x2FFFF
        with ``misalignsse`` (bit 17 is MM, misaligned SSE mode: AMD, measured), else 0xFFFF
        (Intel SDM; qemu64).
    ``fpu_pointers_need_es``: FXSAVE/XSAVE store FOP, FIP and FDP only while an unmasked
        x87 exception is pending (FSW.ES), zeros otherwise (AMD, measured; Linux's
        X86_BUG_FXSAVE_LEAK); Intel stores them always (SDM).
    ``sysenter_long_mode``: SYSENTER/SYSEXIT work in long mode (Intel SDM); AMD: #UD (APM).
    ``syscall_legacy``: SYSCALL/SYSRET work outside 64-bit mode (AMD APM); Intel: #UD unless
        in 64-bit mode (SDM).
    ``sysret_canonical_gp``: SYSRET to a non-canonical RCX is #GP(0) at CPL 0 (Intel SDM);
        AMD returns to CPL 3 and faults there, on the fetch (APM).
    ``mul_keeps_szap``: MUL and IMUL leave SF, ZF, AF and PF as they were (AMD, measured on
        Zen 3: no change in any of 280 random cases); else kvmpy computes them from the low
        half of the product (Intel: undefined in the SDM, no silicon measured).
    ``shift_flags_amd``: the flags the manuals leave undefined for counts above 1 follow
        AMD's silicon (measured on Zen 3): SHL/SHR/SAR/SHLD/SHRD set AF; OF is, for SHR, the
        sign before the last one-bit step (0), for SHLD the result's sign XOR CF, for SHRD
        and RCR whether the result's two top bits differ.  Else (Intel: not measured) AF = 0
        and OF is the 1-bit formula on the operand (kvmpy's choice).
    ``null_sel_clears_base``: loading a null selector into DS/ES/FS/GS in 64-bit mode zeroes
        the base (Intel; AMD with CPUID 0x80000021 EAX[6], measured on Zen 3); older AMD
        keeps the base (APM).  The limit is left as it was on both.
    """

    def __init__(self, name, vendor, family, model, stepping, brand, *, phys_bits, virt_bits=48,
                 leaves=None, features=(), max_ext_leaf=0x80000008, x87_cos_tiny_is_one,
                 xinuse_by_use, fpu_pointers_need_es, sysenter_long_mode, syscall_legacy,
                 sysret_canonical_gp, null_sel_clears_base, mul_keeps_szap, shift_flags_amd):
        self.name, self.vendor, self.brand = name, vendor, brand
        self.family, self.model, self.stepping = family, model, stepping
        self.phys_bits, self.virt_bits = phys_bits, virt_bits
        self.leaves = dict(leaves or {})
        self.features = frozenset(features)          # vendor-only feature names (hw.features)
        self.max_ext_leaf = max_ext_leaf
        self.x87_cos_tiny_is_one = x87_cos_tiny_is_one
        self.xinuse_by_use = xinuse_by_use
        self.mxcsr_mask = 0x2FFFF if "misalignsse" in self.features else 0xFFFF
        self.fpu_pointers_need_es = fpu_pointers_need_es
        self.sysenter_long_mode = sysenter_long_mode
        self.syscall_legacy = syscall_legacy
        self.sysret_canonical_gp = sysret_canonical_gp
        self.null_sel_clears_base = null_sel_clears_base
        self.mul_keeps_szap = mul_keeps_szap
        self.shift_flags_amd = shift_flags_amd

    @property
    def is_amd(self) -> bool:
        return self.vendor == AMD

    @property
    def signature(self) -> int:
        """CPUID.1:EAX (and EDX at reset): family, model and stepping with their extensions."""
        fam = min(self.family, 15)
        ext_fam = self.family - 15 if self.family > 15 else 0
        return ext_fam << 20 | (self.model >> 4) << 16 | fam << 8 | (self.model & 15) << 4 | self.stepping

    def brand_leaves(self) -> list[tuple[int, int, int, int]]:
        """CPUID 0x80000002..4: the brand string, NUL padded to 48 bytes."""
        raw = self.brand.encode("ascii").ljust(48, b"\0")
        words = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 48, 4)]
        return [tuple(words[i:i + 4]) for i in range(0, 12, 4)]

    def __repr__(self):
        return "CpuModel(%s)" % self.name


_INTEL_BEHAVIOUR = dict(x87_cos_tiny_is_one=True, xinuse_by_use=True,
                        fpu_pointers_need_es=False, sysenter_long_mode=True, syscall_legacy=False,
                        sysret_canonical_gp=True, null_sel_clears_base=True, mul_keeps_szap=False,
                        shift_flags_amd=False)
_AMD_BEHAVIOUR = dict(x87_cos_tiny_is_one=False, xinuse_by_use=False,
                      fpu_pointers_need_es=True, sysenter_long_mode=False, syscall_legacy=True,
                      sysret_canonical_gp=False, null_sel_clears_base=False, mul_keeps_szap=True,
                      shift_flags_amd=True)

# One thread, one core: Intel leaf 0xB (SMT and core levels, then the invalid level) and
# AMD 0x8000001E (extended APIC ID 0, one thread per compute unit, one node).
_INTEL_TOPOLOGY = {(0xB, 0): (0, 1, 0x100, 0), (0xB, 1): (0, 1, 0x201, 0), (0xB, 2): (0, 0, 2, 0)}
_AMD_TOPOLOGY = {(0x8000001E, 0): (0, 0, 0, 0)}


def _intel_caches(l2_kib, l3_kib, l3_ways):
    """Leaf 2 says "see leaf 4" (descriptor 0xFF); leaf 4 lists L1d, L1i, L2, L3."""
    caches = [_cache4(1, 1, 32, 8), _cache4(2, 1, 32, 8), _cache4(3, 2, l2_kib, 16),
              _cache4(3, 3, l3_kib, l3_ways, inclusive=False)]
    out = {(2, 0): (0x00FF0001, 0, 0, 0)}
    out.update({(4, i): c for i, c in enumerate(caches)})
    out[(4, len(caches))] = (0, 0, 0, 0)
    return out


def _amd_caches(l2_kib, l3_kib, topoext=True):
    """0x80000005 (L1 TLBs and caches), 0x80000006 (L2, L3; 8 = 16-way), and with
    ``topoext`` (a model whose extended leaves reach it) 0x8000001D."""
    l1 = 32 << 24 | 8 << 16 | 1 << 8 | 64
    out = {(0x80000005, 0): (0xFF40FF40, 0xFF40FF40, l1, l1),
           (0x80000006, 0): (0x48002200, 0x68004200, l2_kib << 16 | 6 << 12 | 1 << 8 | 64,
                             (l3_kib // 512) << 18 | 8 << 12 | 1 << 8 | 64)}
    if topoext:
        caches = [_cache4(1, 1, 32, 8), _cache4(2, 1, 32, 8),
                  _cache4(3, 2, l2_kib, 8, inclusive=True), _cache4(3, 3, l3_kib, 16)]
        out.update({(0x8000001D, i): c for i, c in enumerate(caches)})
        out[(0x8000001D, len(caches))] = (0, 0, 0, 0)
    return out


MODELS = {m.name: m for m in (
    CpuModel("Skylake-Server", INTEL, 6, 85, 4, "Intel Xeon Processor (Skylake)", phys_bits=46,
             leaves={**_intel_caches(1024, 16384, 11), **_INTEL_TOPOLOGY}, **_INTEL_BEHAVIOUR),
    CpuModel("EPYC", AMD, 23, 1, 2, "AMD EPYC Processor", phys_bits=48, max_ext_leaf=0x8000001E,
             leaves={**_amd_caches(512, 8192), **_AMD_TOPOLOGY}, features=("misalignsse",),
             **_AMD_BEHAVIOUR),
    CpuModel("EPYC-Milan", AMD, 25, 1, 1, "AMD EPYC-Milan Processor", phys_bits=48,
             max_ext_leaf=0x80000021, leaves={**_amd_caches(512, 32768), **_AMD_TOPOLOGY},
             features=("misalignsse", "null_sel_clr_base"),
             **dict(_AMD_BEHAVIOUR, null_sel_clears_base=True)),
    CpuModel("qemu64", AMD, 15, 107, 1, "QEMU Virtual CPU version 2.5+", phys_bits=40,
             leaves=_amd_caches(512, 16384, topoext=False), **_AMD_BEHAVIOUR),
)}

# The model each vendor module runs unless told otherwise (kvm_intel: Intel, kvm_amd: AMD)
DEFAULT_FOR_MODULE = {"vmx": "Skylake-Server", "svm": "EPYC-Milan"}
DEFAULT_FOR_VENDOR = {INTEL: "Skylake-Server", AMD: "EPYC-Milan"}


def host_vendor() -> str:
    """The vendor of the machine kvmpy runs on (``/proc/cpuinfo``), INTEL if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return INTEL


def names() -> list[str]:
    return sorted(MODELS) + ["host", "max"]


def lookup(name: str, module: str = "vmx") -> CpuModel:
    """The model called ``name`` (``host``: the host vendor's, ``max``: the vendor module's
    own); KeyError with a one-line message for an unknown name."""
    if name == "host":
        name = DEFAULT_FOR_VENDOR.get(host_vendor(), DEFAULT_FOR_VENDOR[INTEL])
    elif name == "max":
        name = DEFAULT_FOR_MODULE[module]
    if name not in MODELS:
        raise KeyError("unknown CPU model %r (known: %s)" % (name, ", ".join(names())))
    return MODELS[name]
