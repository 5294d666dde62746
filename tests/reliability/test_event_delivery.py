"""Exits during event delivery, and KVM's exception merging (issue 7: the livelocks).

An exit that interrupts the delivery of an event (a stack, IDT or GDT outside RAM; a page
KVM has not mapped; an intercepted #PF) reports the event in the IDT-vectoring information
(VMX) or EXITINTINFO (SVM); KVM puts it back in its queue (vmx/svm_complete_interrupts),
merges what the exit adds with it (kvm_multiple_exception: #DF, then a triple fault), and
does not emulate an instruction that has nothing to do with the event.  Before, the
processor re-armed the event itself and KVM never learned of it: these guests livelocked.

Each reproducer's outcome on the host (AMD EPYC Zen 3, Linux 6.18, kvm_pvm) is recorded
here, so that kvmpy is checked everywhere; with the ``host`` marker they also run live, held
to what the host's vendor module and kernel give (``host_answers``).
"""

import ctypes
import types

import pytest

from kvmpy import syscalls
from kvmpy.hw.cpu import Processor
from kvmpy.hw.events import HW_EXC
from kvmpy.hw.x86defs import CS, SS
from kvmpy.hw.virt.svm import SvmExitFormat
from kvmpy.hw.virt.vmx import VmxExitFormat
from kvmpy.kernel import kvm_host
from kvmpy.kernel.x86 import x86
from kvmpy.uapi import kvm as uapi
from tests.reliability import guests
from tests.support import rawvmm

BOUND = 20.0            # seconds; each reproducer ends at once on the host
HOLE = 0xA0000          # guests.SLOTS leave 0xa0000-0xfffff without a memslot

# name: (mode, code, build_fixed options, the host's outcome, the host's RIP after it)
CASES = {
    # ud2 with the stack in the hole: mov ax, 0xa000; mov ss, ax; mov sp, 0x100; ud2
    "ud2-stack-in-hole-real": ("real", "b800a08ed0bc00010f0b", {}, "shutdown", 0x7008),
    "ud2-stack-in-hole-prot32": ("prot32", "bc00010a000f0b", {}, "shutdown", 0x7005),     # mov esp
    "ud2-stack-in-hole-long": ("long", "48c7c400010a000f0b", {}, "shutdown", 0x7007),     # mov rsp
    # the IVT/IDT or the GDT (the handler's CS) in the hole
    "ud2-idt-in-hole-real": ("real", "0f0b", {"idt_base": HOLE}, "shutdown", 0x7000),
    "ud2-idt-in-hole-prot32": ("prot32", "0f0b", {"idt_base": HOLE}, "shutdown", 0x7000),
    "ud2-idt-in-hole-long": ("long", "0f0b", {"idt_base": HOLE}, "shutdown", 0x7000),
    "ud2-gdt-in-hole-prot32": ("prot32", "0f0b", {"gdt_base": HOLE}, "shutdown", 0x7000),
    "ud2-gdt-in-hole-long": ("long", "0f0b", {"gdt_base": HOLE}, "shutdown", 0x7000),
    # the stack on a page the guest does not map: #UD, then #PF pushing it, then #DF, then a
    # triple fault (under shadow paging, each #PF an exit merged by kvm_multiple_exception)
    "ud2-stack-unmapped-long": ("long", "48c7c4000000020f0b", {}, "shutdown", 0x7007),
    # INT n with the stack in the hole: the instruction raises the event, so KVM emulates it;
    # its emulator has INT in real mode (the frame goes out as MMIO writes), not in long mode
    "int3-stack-in-hole-real": ("real", "b800a08ed0bc0001cc", {}, "hlt", guests.HANDLER + 1),
    "int-stack-in-hole-long": ("long", "48c7c400010a00cd40", {}, "internal-error/1", 0x7007),
    # IRETQ popping its frame from the hole: the emulator's em_iret is real mode only too
    "iretq-stack-in-hole-long": ("long", "48c7c400010a0048cf", {}, "internal-error/1", 0x7007),
    # a far return popping from the hole (emulated), to a null CS: #GP, whose frame cannot be
    # pushed there either
    "retf-stack-in-hole-prot32": ("prot32", "bc00010a00cb", {}, "shutdown", 0x7005),
    # every IDT entry a task gate to the busy TSS: the switch faults (#GP) before its commit
    # point while delivering #UD, then while delivering that #GP (#DF), then the #DF's.  (The
    # host's emulator does not check the busy bit, switches into the TSS it is in and ends
    # at another RIP, 0x1a, so RIP is not compared: None.)
    "ud2-task-gates-to-busy-tss-prot32": ("prot32", "0f0b", {"task_gates": True}, "shutdown", None),
    # the control: the same frame delivers #UD to its handler
    "ud2-real": ("real", "0f0b", {}, "hlt", guests.HANDLER + 1),
    "ud2-prot32": ("prot32", "0f0b", {}, "hlt", guests.HANDLER + 1),
    "ud2-long": ("long", "0f0b", {}, "hlt", guests.HANDLER + 1),
}
# The host's answer depends on its vendor module and kernel.  kvm_pvm gives the outcomes
# above (and kvmpy follows it, see kvm_prepare_event_vectoring_exit).  On VMX or SVM an
# exit for MMIO (the hole has no memslot) with an event being vectored cannot be emulated:
# since Linux 6.14 {vmx,svm}_check_emulate_instruction return X86EMUL_UNHANDLEABLE_VECTORING
# and x86_emulate_instruction reports KVM_INTERNAL_ERROR_DELIVERY_EV, for exceptions and
# software interrupts alike, with RIP at the instruction that raised the event.  Before 6.14
# VMX gave it for the EPT misconfiguration of a second try (after emulating the instruction
# once) and SVM had no such check, so there the answer may be either.  Events whose delivery
# stays in RAM end as the architecture says on any host.
DELIVERY_EV = "internal-error/%d" % uapi.KVM_INTERNAL_ERROR_DELIVERY_EV
TOUCHES_THE_HOLE = sorted(name for name in CASES if "-in-hole-" in name)
# the RIP of the INT3 itself where kvm_pvm's emulator delivered it to the handler
RAISING_RIP = {"int3-stack-in-hole-real": 0x7008}


def host_answers(name, kvm_module, kernel):
    """The (outcome, RIP) pairs a host under ``kvm_module`` and ``kernel`` may give."""
    recorded = (CASES[name][3], CASES[name][4])
    if kvm_module == "kvm_pvm" or name not in TOUCHES_THE_HOLE:
        return {recorded}
    silicon = (DELIVERY_EV, RAISING_RIP.get(name, CASES[name][4]))
    return {silicon} if kernel >= (6, 14) else {recorded, silicon}


def run_case(sc, name):
    """The reproducer's outcome and RIP on backend ``sc``."""
    mode, code, options, _, _ = CASES[name]
    return guests.run_fixed(sc, mode, bytes.fromhex(code), bound=BOUND, **options)[:2]


@pytest.mark.parametrize("name", CASES)
def test_delivery_ends_as_on_the_host(soft_kvm, soft_mmu, name):
    outcome, rip = run_case(syscalls, name)
    assert outcome == CASES[name][3]
    assert rip == CASES[name][4] or CASES[name][4] is None


@pytest.mark.host
@pytest.mark.parametrize("name", CASES)
def test_delivery_on_the_host(name):
    from tests.support.hostinfo import kernel_version
    outcome, rip = run_case(rawvmm.HOST, name)
    answers = host_answers(name, rawvmm.host_kvm_module(), kernel_version())
    assert (outcome, rip) in answers or (outcome, None) in answers


def test_host_answers_by_module_and_kernel():
    assert host_answers("ud2-idt-in-hole-long", "kvm_pvm", (6, 18)) == {("shutdown", 0x7000)}
    assert host_answers("ud2-idt-in-hole-long", "kvm_intel", (6, 18)) == {(DELIVERY_EV, 0x7000)}
    assert host_answers("int3-stack-in-hole-real", "kvm_amd", (6, 14)) == {(DELIVERY_EV, 0x7008)}
    assert len(host_answers("int3-stack-in-hole-real", "kvm_amd", (6, 6))) == 2
    assert host_answers("ud2-stack-unmapped-long", "kvm_intel", (6, 18)) == {("shutdown", 0x7007)}


IRETD_STACK_IN_HOLE = "48c7c400010a00cf"    # mov rsp, 0xa0100; iretd (guest_fuzz seed 9 guest 19)


def test_iretd_stack_in_hole(soft_kvm, soft_mmu):
    """IRETD in 64-bit mode with its frame in the hole is emulated and, as em_iret has only
    real mode, fails: KVM on VMX and SVM exits with an emulation failure (CPL 0)."""
    assert guests.run_fixed(syscalls, "long", bytes.fromhex(IRETD_STACK_IN_HOLE), bound=BOUND)[:2] == \
        ("internal-error/%d" % uapi.KVM_INTERNAL_ERROR_EMULATION, 0x7007)


@pytest.mark.host
def test_iretd_stack_in_hole_on_the_host():
    """The host agrees, except kvm_pvm, which shuts such a guest down (its IRETQ fails as
    KVM's does: ``iretq-stack-in-hole-long``); kvmpy follows KVM on silicon."""
    expected = {"internal-error/%d" % uapi.KVM_INTERNAL_ERROR_EMULATION}
    if rawvmm.host_kvm_module() == "kvm_pvm":
        expected.add("shutdown")
    outcome, rip, _ = guests.run_fixed(rawvmm.HOST, "long", bytes.fromhex(IRETD_STACK_IN_HOLE), bound=BOUND)
    assert (outcome in expected, rip) == (True, 0x7007)


# ------------------------------------------------------------------ the processor's side
@pytest.fixture
def real_mode_cpu(request):
    """A real-mode processor with page 0 (the IVT) and page 7 (code) of guest RAM mapped in
    its second-level table, SS:SP in the unmapped page 0xa0, and #UD about to be injected."""
    def make(fmt):
        ram = ctypes.create_string_buffer(0x8000)
        request.node.ram = ram              # keep the memory alive as long as the test
        cpu = Processor(fmt)
        cpu.reset()
        for gfn in range(8):
            cpu.ept[gfn] = ctypes.addressof(ram) + gfn * 0x1000
        cpu.set_real_seg(CS, 0)
        cpu.set_real_seg(SS, 0xA000)
        cpu.regs[4] = 0x100
        cpu.rip = 0x7000
        ram[0x7000:0x7002] = b"\xeb\xfe"
        cpu.pending_event = (HW_EXC, 6, None)
        return cpu
    return make


def test_vmx_exit_during_delivery_reports_idt_vectoring_info(real_mode_cpu):
    cpu = real_mode_cpu(VmxExitFormat())
    x = cpu.run(1000)
    assert (x.reason, x.guest_physical) == (48, 0xA00FA)       # EPT violation writing the 6-byte frame
    assert (x.idt_vectoring_info, cpu.pending_event) == (0x80000306, None)   # valid, HW exc, #UD


def test_svm_exit_during_delivery_reports_exitintinfo(real_mode_cpu):
    cpu = real_mode_cpu(SvmExitFormat())
    x = cpu.run(1000)
    assert (x.exit_code, x.exit_info_2) == (0x400, 0xA00FA)     # NPF writing the 6-byte frame
    assert (x.exit_int_info, cpu.pending_event) == (0x80000306, None)


def test_exit_without_delivery_has_no_vectoring_info(real_mode_cpu):
    cpu = real_mode_cpu(VmxExitFormat())
    cpu.pending_event = None
    x = cpu.run(1000)                       # jmp $ until the budget ends
    assert (x.reason, x.idt_vectoring_info) == (52, 0)


# ------------------------------------------------------------------ kvm_multiple_exception
def _vcpu():
    return types.SimpleNamespace(arch=types.SimpleNamespace(exception=None), requests=set())


@pytest.mark.parametrize("first,second,merged", [
    ((13, 0), (13, 0), (8, 0)),             # contributory on contributory: #DF
    ((14, 2), (13, 0), (8, 0)),             # contributory on #PF: #DF
    ((14, 2), (14, 0), (8, 0)),             # #PF on #PF: #DF
    ((13, 0), (14, 2), (14, 2)),            # #PF on contributory: the #PF
    ((6, None), (13, 0), (13, 0)),          # anything on a benign exception replaces it
    ((14, 2), (6, None), (6, None)),        # a benign exception on #PF replaces it
])
def test_exceptions_merge_as_the_processor_merges_them(first, second, merged):
    vcpu = _vcpu()
    x86.kvm_requeue_exception(vcpu, *first)
    x86.kvm_queue_exception(vcpu, *second)
    assert vcpu.arch.exception[:2] == merged
    assert vcpu.requests == set()


def test_exception_on_double_fault_is_a_triple_fault():
    vcpu = _vcpu()
    x86.kvm_requeue_exception(vcpu, 8, 0)
    x86.kvm_queue_exception(vcpu, 14, 0, 0x1000)
    assert kvm_host.kvm_check_request(x86.KVM_REQ_TRIPLE_FAULT, vcpu)


def test_requeue_replaces_without_merging():
    vcpu = _vcpu()
    x86.kvm_queue_exception(vcpu, 13, 0)
    x86.kvm_requeue_exception(vcpu, 14, 2)
    assert vcpu.arch.exception == (14, 2, None)
