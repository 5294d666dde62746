"""The SVM vendor module (kvm_amd): its exit format, and guests run on it end to end.

A process loads one vendor module, as the kernel does, and the test process has VMX loaded,
so every run on SVM happens in a child process.  The guests must end exactly as on the host
(tests/data/<guest>.host.json, the same oracle test_host_vs_soft.py uses), with NPT and with
shadow paging, and must really have gone through svm_vcpu_run / svm_handle_exit.
"""

import json
import os
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import pytest

from kvmpy.hw.virt import svm as hwsvm
from kvmpy.hw.cpu import Processor
from kvmpy.hw.events import Intercept
from kvmpy.kernel.x86.svm import svm
from tests.support import rawvmm, records

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "tests" / "data"
GUESTS = ("demo", "longmode")
MMU_MODES = {"npt": True, "shadow": False}

# Runs one guest on SVM through tests/support/rawvmm.py, with the tracer on; prints the rawvmm
# result plus the loaded vendor, the traced kernel functions and the exit codes seen.
GUEST_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tests.support import rawvmm, records
from kvmpy import syscalls
from kvmpy.guests import load_image
from kvmpy.kernel import trace
from kvmpy.kernel.x86 import params, x86
params.set(vendor="svm", ept=sys.argv[3] == "1")
trace.start()
result = rawvmm.run_guest(load_image(sys.argv[2]), syscalls)
records = trace.stop()
result["vendor"] = x86.vendor_name()
result["calls"] = sorted({r.name for r in records if r.kind == "call"})
result["exit_codes"] = sorted({r.fields["reason"] for r in records
                               if r.kind == "event" and r.name == "kvm_exit"})
print(json.dumps(result))
"""


def _child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "KVMPY_VENDOR"}
    env.update(extra)
    return env


def _python(code, *args, **env):
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, env=_child_env(**env))


@pytest.fixture(scope="module")
def svm_runs():
    """{(guest, mmu): the child's result}; the four children run at the same time."""
    procs = {(g, m): subprocess.Popen([sys.executable, "-c", GUEST_CHILD, str(REPO), g,
                                       "1" if ept else "0"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=_child_env())
             for g in GUESTS for m, ept in MMU_MODES.items()}
    results = {}
    for key, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results[key] = json.loads(out)
    return results


@pytest.mark.parametrize("mmu", MMU_MODES)
@pytest.mark.parametrize("guest", GUESTS)
def test_guest_on_svm_matches_host(svm_runs, guest, mmu):
    result = svm_runs[guest, mmu]
    reference = records.read(DATA_DIR / f"{guest}.host.json")[0]
    assert result["vendor"] == "svm"
    assert reference["exit_value"] == 0
    rawvmm.assert_same_run(result, reference)


@pytest.mark.parametrize("guest", GUESTS)
def test_svm_exits_go_through_svm_handlers(svm_runs, guest):
    npt, shadow = svm_runs[guest, "npt"], svm_runs[guest, "shadow"]
    for result in (npt, shadow):
        assert {"svm_init", "svm_vcpu_run", "svm_handle_exit"} <= set(result["calls"])
        assert not [name for name in result["calls"] if name.startswith("vmx_")]
        assert {hwsvm.SVM_EXIT_IOIO, hwsvm.SVM_EXIT_MSR} <= set(result["exit_codes"])   # OUT, WRMSR EFER
    # NPT: guest-physical misses are nested page faults; shadow: #PF and MOV-to-CR intercepts
    assert hwsvm.SVM_EXIT_NPF in npt["exit_codes"]
    assert hwsvm.SVM_EXIT_EXCP_BASE + 14 not in npt["exit_codes"]
    assert {hwsvm.SVM_EXIT_EXCP_BASE + 14, hwsvm.SVM_EXIT_WRITE_CR0,
            hwsvm.SVM_EXIT_WRITE_CR0 + 3, hwsvm.SVM_EXIT_WRITE_CR0 + 4} <= set(shadow["exit_codes"])
    assert hwsvm.SVM_EXIT_NPF not in shadow["exit_codes"]


# -- the command line and the device --------------------------------------------------


def test_kvmpy_run_vendor_svm_runs_the_demo():
    result = subprocess.run([sys.executable, "-m", "kvmpy.vmm.cli", "run", "--vendor", "svm",
                             "--trace", "--timeout", "60"],
                            capture_output=True, text=True, timeout=90, env=_child_env())
    assert result.returncode == 0, result.stderr
    assert "demo ok, exiting with value 0" in result.stdout
    assert "svm_handle_exit" in result.stderr and "vmx_handle_exit" not in result.stderr


SUPPORTED_CPUID_LEAF0 = """
import ctypes, os
from kvmpy import syscalls
from kvmpy.uapi import kvm as uapi
fd = syscalls.open("/dev/kvm", os.O_RDWR)
cpuid = uapi.with_entries(uapi.kvm_cpuid2, 256)()
cpuid.nent = 256
syscalls.ioctl(fd, uapi.KVM_GET_SUPPORTED_CPUID, cpuid)
leaf0 = next(cpuid.entries[i] for i in range(cpuid.nent) if cpuid.entries[i].function == 0)
print(b"".join(r.to_bytes(4, "little") for r in (leaf0.ebx, leaf0.edx, leaf0.ecx)).decode())
"""


@pytest.mark.parametrize("env,vendor_id", [({"KVMPY_VENDOR": "svm"}, "AuthenticAMD"),
                                           ({}, "GenuineIntel")])
def test_supported_cpuid_vendor_follows_the_loaded_module(env, vendor_id):
    result = _python(SUPPORTED_CPUID_LEAF0, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == vendor_id


SECOND_VENDOR = """
import errno, os
from kvmpy import syscalls
from kvmpy.kernel.x86 import params
syscalls.close(syscalls.open("/dev/kvm", os.O_RDWR))
params.set(vendor="svm")
try:
    syscalls.open("/dev/kvm", os.O_RDWR)
except OSError as e:
    print(errno.errorcode[e.errno], e.strerror)
else:
    print("opened")
"""


def test_other_vendor_after_one_is_loaded_fails_with_eexist():
    result = _python(SECOND_VENDOR)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("EEXIST kvm_intel is loaded: cannot load kvm_amd")


def test_unknown_vendor_is_enodev():
    result = _python("from kvmpy import syscalls\nsyscalls.open('/dev/kvm')", KVMPY_VENDOR="x86")
    assert result.returncode == 1
    assert "OSError: [Errno 19]" in result.stderr


# -- SvmExitFormat: the VMCB exit fields ------------------------------------------------


@pytest.fixture
def cpu():
    c = Processor(hwsvm.SvmExitFormat())
    c.rip = 0x7C10
    return c


def vmexit(cpu, kind, **info):
    return cpu.exit_format.format(cpu, Intercept(kind, **info))


@pytest.mark.parametrize("info,exit_info_1", [
    (dict(port=0x3FD, size=1, input=True, string=False, rep=False), 0x03FD0000 | 0x10 | 1),
    (dict(port=0x510, size=2, input=True, string=True, rep=True), 0x05100000 | 0x20 | 8 | 4 | 1),
    (dict(port=0xF4, size=4, input=False, string=False, rep=False), 0x00F40000 | 0x40),
    (dict(port=0x3F8, size=1, input=False, string=True, rep=False), 0x03F80000 | 0x10 | 4),
])
def test_ioio_exit_info(cpu, info, exit_info_1):
    x = vmexit(cpu, "io", insn_len=2, **info)
    assert (x.exit_code, x.exit_info_1, x.exit_info_2, x.next_rip) == (0x7B, exit_info_1, 0x7C12, 0x7C12)


@pytest.mark.parametrize("kind,code,info1", [
    ("hlt", 0x78, 0), ("cpuid", 0x72, 0), ("rdmsr", 0x7C, 0), ("wrmsr", 0x7C, 1),
    ("vmcall", 0x81, 0), ("xsetbv", 0x8D, 0),
])
def test_instruction_intercepts_save_next_rip(cpu, kind, code, info1):
    x = vmexit(cpu, kind, insn_len=3)
    assert (x.exit_code, x.exit_info_1, x.next_rip) == (code, info1, 0x7C13)
    assert svm.svm_insn_len(SimpleNamespace(arch=SimpleNamespace(cpu=cpu)), x) == 3


def test_mov_to_cr_and_invlpg_carry_their_operand(cpu):
    x = vmexit(cpu, "cr", cr=3, write=True, reg=5, insn_len=3)
    assert (x.exit_code, x.exit_info_1, x.next_rip) == (0x13, (1 << 63) | 5, 0x7C13)
    assert vmexit(cpu, "cr", cr=4, write=True, reg=0, insn_len=3).exit_code == 0x14
    x = vmexit(cpu, "invlpg", addr=0xFFFF800000123456, insn_len=3)
    assert (x.exit_code, x.exit_info_1) == (0x79, 0xFFFF800000123456)


@pytest.mark.parametrize("vector,error_code,cr2,code,info1,info2", [
    (14, 0x6, 0xDEAD000, 0x4E, 0x6, 0xDEAD000),
    (13, 0x18, None, 0x4D, 0x18, 0),
    (6, None, None, 0x46, 0, 0),
])
def test_exception_exit_info(cpu, vector, error_code, cr2, code, info1, info2):
    x = vmexit(cpu, "exception", vector=vector, error_code=error_code, cr2=cr2)
    assert (x.exit_code, x.exit_info_1, x.exit_info_2, x.next_rip) == (code, info1, info2, 0)


@pytest.mark.parametrize("fault,info1", [
    (dict(gla=0x401234, write=True, fetch=False, present=True), 1 | 2 | (1 << 32)),
    (dict(gla=0x401234, write=False, fetch=True, present=False), 0x10 | (1 << 32)),
    (dict(gla=None, write=False, fetch=False, present=False), 4 | (1 << 33)),   # a guest PTE read
])
def test_npf_exit_info(cpu, fault, info1):
    x = vmexit(cpu, "ept_violation", gpa=0xD0000234, **fault)
    assert (x.exit_code, x.exit_info_1, x.exit_info_2) == (0x400, info1, 0xD0000234)


@pytest.mark.parametrize("kind,code", [
    ("preemption", 0x60), ("interrupt_window", 0x64), ("triple_fault", 0x7F), ("internal", -1),
])
def test_event_exits(cpu, kind, code):
    assert vmexit(cpu, kind).exit_code == code


def test_every_exit_the_processor_makes_has_a_handler(cpu):
    intercepts = [Intercept(kind) for kind in ("hlt", "cpuid", "rdmsr", "wrmsr", "vmcall", "xsetbv",
                                                "triple_fault", "preemption", "interrupt_window",
                                                "internal")]
    intercepts += [Intercept("io", port=0x80, size=1, input=False, string=False, rep=False),
                   Intercept("invlpg", addr=0), Intercept("ept_violation", gpa=0, gla=0, write=False,
                                                          fetch=False, present=False)]
    intercepts += [Intercept("cr", cr=cr, write=True, reg=0) for cr in (0, 3, 4)]
    intercepts += [Intercept("exception", vector=v, error_code=None, cr2=None) for v in range(32)]
    for e in intercepts:
        assert cpu.exit_format.format(cpu, e).exit_code in svm.svm_exit_handlers, e.kind
