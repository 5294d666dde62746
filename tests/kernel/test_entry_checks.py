"""VM-entry guest-state checks: states KVM_SET_SREGS accepts but the silicon refuses.

Each case sets up one vCPU whose guest is a single HLT at 0:0x7c00 (``rawvmm``'s VM), bends
one piece of state with KVM_SET_SREGS / KVM_SET_REGS / KVM_SET_VCPU_EVENTS and enters once.
On VMX (the soft kernel's default vendor) the outcome must be what Intel's VM entry does
with unrestricted guest (SDM 27.3.1): ``KVM_EXIT_FAIL_ENTRY`` with
``hardware_entry_failure_reason`` 0x80000021 for a bad state, HLT for a good one.

The host oracle here is KVM with kvm_pvm, which runs guests in KVM's emulator and makes no
hardware entry checks: it enters (HLT) every state below that KVM_SET_SREGS lets through.
So the host half only checks the cases where VMX and the host agree (states that are valid,
and states KVM itself rejects with EINVAL); for the rest the test asserts VMX's behaviour
and the table says the host differs.  Cases whose state makes the host's emulator spin
inside KVM_RUN (real mode with SS.DPL=3) are left out of the host half.

SVM's VMRUN checks far less (APM 15.5.1); one child process with the SVM vendor loaded shows
a CS.L+CS.D long-mode state failing with SVM_EXIT_ERR and a VMX-only failure entering.
"""

import errno
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from tests.support import rawvmm
from kvmpy import syscalls
from kvmpy.hw.virt import entry
from kvmpy.hw.cpu import Processor
from kvmpy.hw.events import Intercept
from kvmpy.hw.virt.svm import SvmExitFormat
from kvmpy.hw.virt.vmx import VmxExitFormat
from kvmpy.uapi import kvm as uapi

HLT = b"\xf4"
VMX_FAIL = "FAIL_ENTRY 0x80000021"
SVM_FAIL = "FAIL_ENTRY 0xffffffffffffffff"
PML4, PDPT, PD = 0x1000, 0x2000, 0x3000
CR0_PE, CR0_PG, CR4_PAE, EFER_LME, EFER_LMA = 1, 1 << 31, 1 << 5, 1 << 8, 1 << 10
FLAT = 0xFFFFFFFF


# ------------------------------------------------------------------ state edits
def protected(s, ram):
    """Flat 32-bit protected mode, no paging, RIP unchanged."""
    s.cr0 |= CR0_PE
    s.cs.type, s.cs.db, s.cs.limit, s.cs.g = 11, 1, FLAT, 1
    for seg in (s.ds, s.es, s.ss, s.fs, s.gs):
        seg.type, seg.db, seg.limit, seg.g = 3, 1, FLAT, 1


def long_mode(s, ram):
    """64-bit mode with the first 2 MiB identity-mapped by one large page."""
    protected(s, ram)
    ram[PML4:PML4 + 8] = (PDPT | 3).to_bytes(8, "little")
    ram[PDPT:PDPT + 8] = (PD | 3).to_bytes(8, "little")
    ram[PD:PD + 8] = (0x83).to_bytes(8, "little")
    s.cr3, s.cr4, s.efer = PML4, s.cr4 | CR4_PAE, s.efer | EFER_LME | EFER_LMA
    s.cr0 |= CR0_PG
    s.cs.l, s.cs.db = 1, 0


def setting(seg, **fields):
    """An edit that sets fields of one segment (``seg`` names a kvm_sregs member)."""
    def edit(s, ram):
        for name, value in fields.items():
            setattr(getattr(s, seg), name, value)
    return edit


def then(*edits):
    def edit(s, ram):
        for e in edits:
            e(s, ram)
    return edit


def cr0_nw_without_cd(s, ram):
    s.cr0 = (s.cr0 & ~(1 << 30)) | (1 << 29)


def rip_above_4g(r):
    r.rip = 1 << 32 | rawvmm.LOAD_ADDRESS


def sti_blocking(ev):
    ev.flags = uapi.KVM_VCPUEVENT_VALID_SHADOW
    ev.interrupt.shadow = uapi.KVM_X86_SHADOW_INT_STI


# name: (edit of sregs, edit of regs, edit of events, VMX outcome, host outcome or None = not run)
CASES = {
    "real mode": (None, None, None, "HLT", "HLT"),
    "protected mode": (protected, None, None, "HLT", "HLT"),
    "long mode": (long_mode, None, None, "HLT", "HLT"),
    "real mode, LDTR unusable": (setting("ldt", unusable=1, present=0), None, None, "HLT", "HLT"),
    "protected, DS not present": (then(protected, setting("ds", present=0, type=0)), None, None, "HLT",
                                  "HLT"),
    "CR0.NW without CD": (cr0_nw_without_cd, None, None, "SET_SREGS EINVAL", "SET_SREGS EINVAL"),
    "TR unusable in protected mode": (then(protected, setting("tr", unusable=1, present=0)), None, None,
                                      VMX_FAIL, "HLT"),
    "TR.S=1": (then(protected, setting("tr", s=1)), None, None, VMX_FAIL, "HLT"),
    "TR type 3 in IA-32e mode": (then(long_mode, setting("tr", type=3)), None, None, VMX_FAIL, "HLT"),
    "LDTR usable with type 3": (then(protected, setting("ldt", type=3)), None, None, VMX_FAIL, "HLT"),
    "SS.DPL != CS.DPL": (then(protected, setting("ss", dpl=3)), None, None, VMX_FAIL, "SHUTDOWN"),
    "SS.DPL 3 in real mode": (setting("ss", dpl=3), None, None, VMX_FAIL, None),
    "CS type 1": (then(protected, setting("cs", type=1)), None, None, VMX_FAIL, "HLT"),
    "CS not present": (then(protected, setting("cs", present=0)), None, None, VMX_FAIL, "HLT"),
    "CS.G=0 with a 4 GiB limit": (then(protected, setting("cs", g=0)), None, None, VMX_FAIL, "HLT"),
    "SS type 11": (then(protected, setting("ss", type=11)), None, None, VMX_FAIL, "HLT"),
    "DS execute-only code": (then(protected, setting("ds", type=9)), None, None, VMX_FAIL, "HLT"),
    "CS.L and CS.D in IA-32e mode": (then(long_mode, setting("cs", db=1)), None, None, VMX_FAIL, "HLT"),
    "RIP above 4 GiB outside 64-bit mode": (None, rip_above_4g, None, VMX_FAIL, "HLT"),
    "STI blocking with IF=0": (None, None, sti_blocking, VMX_FAIL, "HLT"),
}


# ------------------------------------------------------------------ one entry
def enter(sc, case):
    """Set the case's state up through raw ioctls on ``sc``, KVM_RUN once, describe the outcome."""
    sregs_edit, regs_edit, events_edit = CASES[case][:3]
    vm = rawvmm._Vm(sc)
    try:
        vcpu, run_buf = rawvmm._setup(vm, HLT)
        s = uapi.kvm_sregs()
        sc.ioctl(vcpu, uapi.KVM_GET_SREGS, s)
        if sregs_edit:
            sregs_edit(s, vm.maps[0])
        try:
            sc.ioctl(vcpu, uapi.KVM_SET_SREGS, s)
        except OSError as e:
            return "SET_SREGS " + errno.errorcode[e.errno]
        if regs_edit:
            r = uapi.kvm_regs()
            sc.ioctl(vcpu, uapi.KVM_GET_REGS, r)
            regs_edit(r)
            sc.ioctl(vcpu, uapi.KVM_SET_REGS, r)
        if events_edit:
            ev = uapi.kvm_vcpu_events()
            sc.ioctl(vcpu, uapi.KVM_GET_VCPU_EVENTS, ev)
            events_edit(ev)
            sc.ioctl(vcpu, uapi.KVM_SET_VCPU_EVENTS, ev)
        sc.ioctl(vcpu, uapi.KVM_RUN, 0)
        run = uapi.kvm_run.from_buffer(run_buf)
        outcome = uapi.EXIT_REASON_NAMES.get(run.exit_reason, str(run.exit_reason))
        if run.exit_reason == uapi.KVM_EXIT_FAIL_ENTRY:
            outcome += " %#x" % run.fail_entry.hardware_entry_failure_reason
            assert run.fail_entry.cpu == 0
        del run
        return outcome
    finally:
        vm.close()


class _Stuck(Exception):
    pass


def _stuck(signum, frame):
    raise _Stuck


def enter_host(case):
    """``enter`` on the host's /dev/kvm, with KVM_RUN interrupted after 2 s (a signal makes
    it return EINTR) so that a guest spinning in the host's emulator cannot hang the test."""
    previous = signal.signal(signal.SIGALRM, _stuck)
    signal.setitimer(signal.ITIMER_REAL, 2)
    try:
        return enter(rawvmm.HOST, case)
    except _Stuck:
        return "no exit within 2 s"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES)
def test_vmx_entry(soft_kvm, case):
    assert enter(syscalls, case) == CASES[case][3]


@pytest.mark.host
@pytest.mark.parametrize("case", [c for c, v in CASES.items() if v[4] is not None])
def test_host_entry(case):
    """The host's outcome; where it is not VMX's, the host (kvm_pvm) is the one that differs."""
    assert enter_host(case) == CASES[case][4]


# ------------------------------------------------------------------ the processor itself
def test_failed_entry_runs_nothing():
    """A refused entry leaves the guest untouched: no instruction retired, no event delivered."""
    cpu = Processor(VmxExitFormat())
    cpu.reset()
    cpu.seg[1].dpl = cpu.seg[2].dpl = 3          # CS and SS agree, but real mode wants SS.DPL 0
    cpu.pending_event = (3, 13, 0)
    x = cpu.run(1000)
    assert (x.reason, x.detail["reason"]) == (0x80000021, "SS.DPL != 0 in real mode or with a data-type CS")
    assert (cpu.icount, cpu.rip, cpu.pending_event) == (0, 0xFFF0, (3, 13, 0))


def test_injected_external_interrupt_needs_if():
    cpu = Processor(VmxExitFormat())
    cpu.reset()
    cpu.pending_event = (0, 0x20, None)
    with pytest.raises(Intercept) as e:
        entry.check_guest_state(cpu)
    assert e.value.info["reason"] == "external interrupt injected with RFLAGS.IF=0"


def test_svm_checks_less_than_vmx():
    """VMRUN has no segment checks: an unusable TR enters on SVM, fails on VMX."""
    states = []
    for fmt in (VmxExitFormat(), SvmExitFormat()):
        cpu = Processor(fmt)
        cpu.reset()
        cpu.tr.unusable, cpu.tr.present = 1, 0
        states.append(cpu)
    with pytest.raises(Intercept):
        entry.check_guest_state(states[0])
    entry.check_guest_state(states[1])


SVM_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from kvmpy import syscalls
from tests.kernel import test_entry_checks as t
print(json.dumps({c: t.enter(syscalls, c) for c in sys.argv[2:]}))
"""


def test_svm_vendor_end_to_end():
    """With kvm_amd loaded: SVM_EXIT_ERR -> KVM_EXIT_FAIL_ENTRY with reason -1 (as u64)."""
    cases = ["long mode", "CS.L and CS.D in IA-32e mode", "TR unusable in protected mode"]
    repo = str(pathlib.Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", SVM_CHILD, repo, *cases], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "KVMPY_VENDOR": "svm"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"long mode": "HLT", "CS.L and CS.D in IA-32e mode": SVM_FAIL,
                                       "TR unusable in protected mode": "HLT"}


@pytest.mark.parametrize("edit", [
    lambda cpu: setattr(cpu.seg[2], "dpl", 3),            # SS, in place: real mode wants DPL 0
    lambda cpu: setattr(cpu.tr, "present", 0),
    lambda cpu: setattr(cpu, "cr4", cpu.cr4 | 1 << 30),     # a reserved CR4 bit
    lambda cpu: setattr(cpu, "idt_base", 1 << 60),
], ids=["ss-dpl", "tr-present", "cr4", "idt-base"])
def test_checks_follow_state_changed_after_a_good_entry(edit):
    """The static checks' answer is kept between entries only while what they read is
    unchanged: a segment edited in place, TR, CR4 or IDTR fail the next entry, and the
    state put back enters again."""
    cpu = Processor(VmxExitFormat())
    cpu.reset()
    entry.check_guest_state(cpu)
    saved = (cpu.seg[2].copy(), cpu.tr.copy(), cpu.cr4, cpu.idt_base)
    edit(cpu)
    with pytest.raises(Intercept):
        entry.check_guest_state(cpu)
    cpu.seg[2], cpu.tr, cpu.cr4, cpu.idt_base = saved
    entry.check_guest_state(cpu)
