"""KVM_GET_SUPPORTED_CPUID reports the CPU model in use (``cpu`` module parameter, ``--cpu``):
every identity field of ``kvmpy.hw.models.CpuModel`` reaches the guest-visible CPUID table.

The behaviour fields are checked by what a guest sees (tests/guests/test_cpu_models.py,
tests/diff/test_silicon_records.py, tests/diff/test_undefined_flags.py).
"""

import pytest

from kvmpy.api import Kvm
from kvmpy.hw import models
from kvmpy.kernel.x86 import params


def _table(model_name):
    saved = params.cpu
    try:
        kvm = Kvm("soft", params={"cpu": model_name})
        try:
            cpuid = kvm.get_supported_cpuid()
        finally:
            kvm.close()
    finally:
        params.cpu = saved
    return {(e.function, e.index): (e.eax, e.ebx, e.ecx, e.edx) for e in cpuid.entries[:cpuid.nent]}


def _string(*words):
    return b"".join(w.to_bytes(4, "little") for w in words)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_supported_cpuid_is_the_model(name):
    m = models.MODELS[name]
    t = _table(name)
    eax, ebx, ecx, edx = t[(0, 0)]
    assert _string(ebx, edx, ecx).decode() == m.vendor
    assert t[(1, 0)][0] == m.signature
    family = (m.signature >> 8 & 15) + (m.signature >> 20 & 0xFF)
    model = (m.signature >> 4 & 15) | (m.signature >> 12 & 0xF0)
    assert (family, model, m.signature & 15) == (m.family, m.model, m.stepping)
    brand = _string(*[r for leaf in (0x80000002, 0x80000003, 0x80000004) for r in t[(leaf, 0)]])
    assert brand.rstrip(b"\0").decode() == m.brand
    assert t[(0x80000000, 0)][0] == m.max_ext_leaf
    assert max(f for f, _ in t if f >= 0x80000000) == m.max_ext_leaf
    # AMD puts its vendor string in 0x80000000 too (APM); Intel reserves it (SDM)
    assert _string(*t[(0x80000000, 0)][1:]) == (_string(ebx, ecx, edx) if m.is_amd else bytes(12))
    assert t[(0x80000008, 0)][0] & 0xFFFF == m.phys_bits | m.virt_bits << 8
    for key, regs in m.leaves.items():
        assert t[key] == regs, hex(key[0])
    misalignsse = t[(0x80000001, 0)][2] >> 7 & 1
    assert misalignsse == ("misalignsse" in m.features)
    if m.max_ext_leaf >= 0x80000021:
        assert t[(0x80000021, 0)][0] >> 6 & 1 == ("null_sel_clr_base" in m.features)


def test_cache_leaves_describe_caches():
    """Leaf 4 (Intel) / 0x8000001D (AMD) entries: type, level, 64-byte lines, and a
    terminating null entry (SDM vol. 2A CPUID leaf 04H; APM Fn8000_001D)."""
    for name, leaf in (("Skylake-Server", 4), ("EPYC-Milan", 0x8000001D)):
        t = _table(name)
        subs = sorted(s for f, s in t if f == leaf)
        kinds = [(t[(leaf, s)][0] & 0x1F, t[(leaf, s)][0] >> 5 & 7) for s in subs]
        assert kinds == [(1, 1), (2, 1), (3, 2), (3, 3), (0, 0)], name
        assert all(t[(leaf, s)][1] & 0xFFF == 63 for s in subs[:-1])


def test_unknown_model_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown CPU model 'Pentium'"):
        params.set(cpu="Pentium")
