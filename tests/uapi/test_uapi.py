"""kvmpy.uapi against the kernel's ABI: sizes and offsets from the facts file, and every
ioctl number and structure size compared with the C headers (when gcc and the headers exist)."""

import ctypes
import os
import shutil
import subprocess

import pytest

import kvmpy.uapi as uapi
import kvmpy.uapi.kvm as kvm_h
from kvmpy.uapi import kvm_run

# Sizes from /work/shared/kvm-api-facts.md
FACT_SIZES = {
    "kvm_regs": 144, "kvm_sregs": 312, "kvm_fpu": 416, "kvm_lapic_state": 1024,
    "kvm_irqchip": 520, "kvm_pit_state2": 112, "kvm_vcpu_events": 64, "kvm_debugregs": 128,
    "kvm_xcrs": 392, "kvm_userspace_memory_region": 32, "kvm_cpuid_entry2": 40,
    "kvm_cpuid2": 8, "kvm_msr_entry": 16, "kvm_msrs": 8, "kvm_irqfd": 32, "kvm_ioeventfd": 64,
    "kvm_pit_config": 64, "kvm_guest_debug": 72, "kvm_clock_data": 48, "kvm_run": 2352,
    "kvm_xsave": 4096, "kvm_segment": 24, "kvm_dtable": 16,
}

KVM_RUN_OFFSETS = {
    "request_interrupt_window": 0, "immediate_exit": 1, "exit_reason": 8,
    "ready_for_interrupt_injection": 12, "if_flag": 13, "cr8": 16, "apic_base": 24,
    "kvm_valid_regs": 288, "kvm_dirty_regs": 296, "s": 304,
}


@pytest.mark.parametrize("name,size", sorted(FACT_SIZES.items()))
def test_struct_sizes_match_facts(name, size):
    assert ctypes.sizeof(getattr(uapi, name)) == size


def test_kvm_run_layout():
    for field, off in KVM_RUN_OFFSETS.items():
        assert getattr(kvm_run, field).offset == off, field
    run = kvm_run()
    base = ctypes.addressof(run)
    assert ctypes.addressof(run.io) - base == 32
    assert ctypes.addressof(run.mmio) - base == 32
    assert kvm_h._run_io.data_offset.offset == 8          # io.data_offset @40
    assert kvm_h._run_mmio.len.offset == 16 and kvm_h._run_mmio.is_write.offset == 20
    assert kvm_h._run_internal.data.offset == 8            # internal.data @40
    assert ctypes.addressof(run.debug.arch) - base == 32 and uapi.kvm_debug_exit_arch.pc.offset == 8
    assert ctypes.addressof(run.s.regs.regs) - base == 304
    assert ctypes.addressof(run.s.regs.sregs) - base == 448
    assert ctypes.addressof(run.s.regs.events) - base == 760


def test_ioctl_sizes_match_structures():
    """The size encoded in each ioctl is its structure's size (checked independently)."""
    pairs = {
        "KVM_GET_REGS": "kvm_regs", "KVM_SET_REGS": "kvm_regs", "KVM_GET_SREGS": "kvm_sregs",
        "KVM_SET_SREGS": "kvm_sregs", "KVM_GET_FPU": "kvm_fpu", "KVM_SET_FPU": "kvm_fpu",
        "KVM_GET_LAPIC": "kvm_lapic_state", "KVM_GET_IRQCHIP": "kvm_irqchip",
        "KVM_SET_IRQCHIP": "kvm_irqchip", "KVM_GET_PIT2": "kvm_pit_state2",
        "KVM_GET_VCPU_EVENTS": "kvm_vcpu_events", "KVM_GET_DEBUGREGS": "kvm_debugregs",
        "KVM_GET_XCRS": "kvm_xcrs", "KVM_SET_USER_MEMORY_REGION": "kvm_userspace_memory_region",
        "KVM_SET_CPUID2": "kvm_cpuid2", "KVM_GET_MSRS": "kvm_msrs", "KVM_IRQFD": "kvm_irqfd",
        "KVM_IOEVENTFD": "kvm_ioeventfd", "KVM_CREATE_PIT2": "kvm_pit_config",
        "KVM_SET_GUEST_DEBUG": "kvm_guest_debug", "KVM_GET_CLOCK": "kvm_clock_data",
        "KVM_GET_XSAVE": "kvm_xsave",
    }
    for ioctl, struct in pairs.items():
        assert uapi._IOC_SIZE(getattr(uapi, ioctl)) == FACT_SIZES[struct], ioctl


def test_shared_nr_ioctls_are_distinct():
    assert uapi._IOC_NR(uapi.KVM_GET_PIT2) == uapi._IOC_NR(uapi.KVM_GET_VCPU_EVENTS) == 0x9F
    assert uapi.KVM_GET_PIT2 != uapi.KVM_GET_VCPU_EVENTS
    assert uapi.KVM_IRQ_LINE_STATUS != uapi.KVM_REGISTER_COALESCED_MMIO
    assert uapi._IOC_DIR(uapi.KVM_SET_IRQCHIP) == uapi._IOC_READ
    assert uapi.KVM_RUN == 0xAE80 and uapi.KVM_CREATE_VM == 0xAE01


def test_known_encodings():
    assert uapi.KVM_GET_REGS == 0x8090AE81
    assert uapi.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert uapi.KVM_GET_SUPPORTED_CPUID == 0xC008AE05


def test_with_entries():
    t = uapi.with_entries(uapi.kvm_cpuid2, 5)
    assert ctypes.sizeof(t) == 8 + 5 * 40
    assert t is uapi.with_entries(uapi.kvm_cpuid2, 5)
    c = t(nent=5)
    c.entries[4].function = 0x80000001
    assert bytes(c)[8 + 4 * 40:8 + 4 * 40 + 4] == (0x80000001).to_bytes(4, "little")
    assert ctypes.sizeof(uapi.with_entries(uapi.kvm_msrs, 2)) == 8 + 2 * 16
    assert ctypes.sizeof(uapi.with_entries(uapi.kvm_msr_list, 3)) == 4 + 3 * 4


def test_exit_names():
    assert uapi.EXIT_REASON_NAMES[uapi.KVM_EXIT_IO] == "IO"
    assert uapi.EXIT_REASON_NAMES[17] == "INTERNAL_ERROR"
    assert uapi.ioctl_name(uapi.KVM_GET_PIT2) == "KVM_GET_PIT2"


# --- the C headers as oracle -----------------------------------------------------------------
HEADER = "/usr/include/linux/kvm.h"
C_STRUCTS = [n for n in dir(uapi) if n.startswith("kvm_") and isinstance(getattr(uapi, n), type)
             and issubclass(getattr(uapi, n), (ctypes.Structure, ctypes.Union))]


@pytest.fixture(scope="module")
def c_values(tmp_path_factory):
    if not (shutil.which("gcc") and os.path.exists(HEADER)):
        pytest.skip("gcc or linux/kvm.h missing")
    ioctls = sorted(n for n in uapi.IOCTL_NAMES.values())
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void){"]
    for n in ioctls:
        lines.append('#ifdef %s\nprintf("%s %%lu\\n", (unsigned long)%s);\n#endif' % (n, n, n))
    d = tmp_path_factory.mktemp("cprobe")
    # structures the installed header lacks would break the probe: find them first
    known = []
    for s in C_STRUCTS:
        t = d / ("t_%s.c" % s)
        t.write_text("#include <linux/kvm.h>\nunsigned long x = sizeof(struct %s);\n" % s)
        if subprocess.run(["gcc", "-c", "-o", os.devnull, str(t)], capture_output=True).returncode == 0:
            known.append(s)
    for s in known:
        lines.append('printf("sizeof_%s %%zu\\n", sizeof(struct %s));' % (s, s))
    lines.append("return 0;}")
    src = d / "probe.c"
    out = {}
    body = "\n".join(lines)
    src.write_text(body)
    exe = d / "probe"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n"):
        if line:
            k, v = line.split()
            out[k] = int(v)
    return out


def test_ioctl_numbers_match_c_header(c_values):
    checked = 0
    for n in set(uapi.IOCTL_NAMES.values()):
        if n in c_values:
            assert getattr(uapi, n) == c_values[n], n
            checked += 1
    assert checked > 80


def test_struct_sizes_match_c_header(c_values):
    checked = 0
    for s in C_STRUCTS:
        if "sizeof_" + s in c_values:
            assert ctypes.sizeof(getattr(uapi, s)) == c_values["sizeof_" + s], s
            checked += 1
    assert checked > 40
