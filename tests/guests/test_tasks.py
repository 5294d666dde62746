"""Call gates, hardware task switches and virtual-8086 mode (kvmpy/guests/tasks.S).

The host's /dev/kvm cannot be the oracle here: its instruction emulator stops at the first
far call through a gate (KVM_EXIT_INTERNAL_ERROR).  QEMU TCG runs the guest to the end, so
its console output and exit value are committed in tests/data/tasks.qemu.json; kvmpy must
print the same lines and exit the same way.  Where QEMU is installed the recording is
checked against a fresh run, and refreshed with

    KVMPY_RECORD=1 pytest tests/guests/test_tasks.py -k qemu

QEMU runs the flat image as tests/support/qemuflat.py says.  The unit tests below check
error codes on the processor alone, the TASK_SWITCH exits of both vendors and their decoding
by the kernel, and a switch to a task with its own CR3 through KVM (TDP and shadow paging).
"""

import pytest

from tests.support import rawvmm
from tests.support.qemuflat import check_qemu_run, qemu_missing, recorded_run
from kvmpy.guests import load_image
from kvmpy.hw import memory as hm
from kvmpy.hw.cpu import Processor
from kvmpy.hw.events import Fault
from kvmpy.hw.state import Segment
from kvmpy.hw.x86defs import CR0_PE, CS, EFER_LMA, EFER_LME, SS
from kvmpy.hw.virt.vmx import VmxExitFormat


STEPS = ("call gate, same privilege", "call gate ring 3 -> 0, 2 parameters, #GP(gate)",
         "task gate CALL, IRET via back link", "JMP to TSS and back",
         "IDT task gates, #GP error code on the new stack", "vm86 IOPL 3, INT to ring 0 and back",
         "vm86 IOPL 0, CLI #GP", "64-bit call gate, same privilege",
         "64-bit call gate ring 3 -> 0, task switch #GP", "done")
CONSOLE = "".join(f"tasks: {s}\r\n" for s in STEPS)


@pytest.mark.skipif(qemu_missing(), reason="QEMU is not installed")
def test_qemu_run():
    check_qemu_run("tasks", CONSOLE)


def test_soft_matches_qemu(soft_mmu):
    from kvmpy import syscalls
    reference = recorded_run("tasks")

    result = rawvmm.run_guest(load_image("tasks"), syscalls)

    assert result["console"] == reference["console"]
    assert result["exit_value"] == reference["exit_value"]
    assert result["exits"][-1] == {"reason": "IO", "direction": "out", "port": "0xf4", "size": 1,
                                   "count": 1, "data": "00"}


# ---------------------------------------------------------------- processor alone
GDT = 0x10000
STACK = 0x20000
CODE0, DATA0, CODE3, DATA3, TSS_SEL, GATE0, GATE_NP, CODE64 = 0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38, 0x40
DESCRIPTORS = {
    CODE0: 0x00CF9A000000FFFF, DATA0: 0x00CF92000000FFFF, CODE3: 0x00CFFA000000FFFF,
    DATA3: 0x00CFF2000000FFFF, TSS_SEL: 0x0000890300000067,        # available 32-bit TSS at 0x30000
    GATE0: 0x00008C0000081234,                                     # 32-bit call gate, DPL 0 -> 0x08:0x1234
    GATE_NP: 0x00006C0000081234,                                   # DPL 3, not present
    CODE64: 0x00AF9A000000FFFF,
}


def _processor(cpl, long_mode=False):
    """A protected-mode (or long-mode) processor at ``cpl`` with the GDT above in RAM."""
    import mmap
    ram = mmap.mmap(-1, 0x40000)
    cpu = Processor(VmxExitFormat())
    cpu._ram = ram
    cpu.tdp = False
    host = hm.address_of(ram)
    for off in range(0, len(ram), 4096):
        cpu.shadow[off >> 12] = (host + off, True, True, off >> 12)
    for sel, d in DESCRIPTORS.items():
        ram[GDT + sel:GDT + sel + 8] = d.to_bytes(8, "little")
    cpu.gdt_base, cpu.gdt_limit = GDT, 0xFF
    cpu.cr0 |= CR0_PE
    if long_mode:
        cpu.efer = EFER_LME | EFER_LMA
        cpu.seg[CS] = Segment(selector=CODE64, limit=0xFFFFFFFF, type=0xB, l=1, g=1)
    else:
        code, data = (CODE3 | 3, DATA3 | 3) if cpl == 3 else (CODE0, DATA0)
        cpu.seg[CS] = Segment(selector=code, limit=0xFFFFFFFF, type=0xB, db=1, g=1, dpl=cpl)
        cpu.seg[SS] = Segment(selector=data, limit=0xFFFFFFFF, type=3, db=1, g=1, dpl=cpl)
    cpu.regs[4] = STACK
    cpu.refresh()
    return cpu


def _fault(fn, *args):
    with pytest.raises(Fault) as info:
        fn(*args)
    return info.value.vector, info.value.error_code


def test_call_gate_dpl_below_cpl_is_gp_with_gate_selector():
    cpu = _processor(cpl=3)
    assert _fault(cpu.far_call, GATE0 | 3, 0, 4, 0x100) == (13, GATE0)
    assert cpu.seg[CS].selector == CODE3 | 3 and cpu.regs[4] == STACK     # nothing changed


def test_call_gate_not_present_is_np():
    cpu = _processor(cpl=3)
    assert _fault(cpu.far_jump, GATE_NP | 3, 0, 4, 0x100) == (11, GATE_NP)


def test_call_gate_same_privilege_pushes_and_jumps():
    cpu = _processor(cpl=0)
    cpu.far_call(GATE0, 0xDEAD, 4, 0x4321)
    assert (cpu.seg[CS].selector, cpu.rip, cpu.regs[4]) == (CODE0, 0x1234, STACK - 8)
    assert cpu.read_slow(STACK - 8, 4) == 0x4321 and cpu.read_slow(STACK - 4, 4) == CODE0


def test_task_switch_in_long_mode_is_gp():
    cpu = _processor(cpl=0, long_mode=True)
    assert _fault(cpu.far_jump, TSS_SEL, 0, 4, 0x100) == (13, TSS_SEL)


def test_jump_to_tss_with_small_limit_is_ts():
    cpu = _processor(cpl=0)
    small = DESCRIPTORS[TSS_SEL] & ~0xFFFF | 0x20
    cpu._ram[GDT + TSS_SEL:GDT + TSS_SEL + 8] = small.to_bytes(8, "little")
    assert _fault(cpu.far_jump, TSS_SEL, 0, 4, 0x100) == (10, TSS_SEL)


# ---------------------------------------------------------------- TASK_SWITCH exits
def _task_switch_exit(fmt, source, event=None, error_code=None, next_ip=0x1007):
    """The exit ``fmt`` reports for a task switch to TSS 0x30 by an instruction at 0x1000."""
    from kvmpy.hw.events import Intercept
    cpu = Processor(fmt)
    cpu.rip = 0x1000
    e = Intercept("task_switch", selector=0x30, source=source, error_code=error_code, next_ip=next_ip)
    if event is not None:           # through an IDT task gate: the processor's vectoring record
        e.info["vectoring"] = event + (error_code, next_ip)
    return cpu, fmt.format(cpu, e)


@pytest.mark.parametrize("source,bits", [("call", 0), ("iret", 1), ("jmp", 2)])
def test_vmx_task_switch_exit_encoding(source, bits):
    _, x = _task_switch_exit(VmxExitFormat(), source)

    assert (x.reason, x.qualification, x.instruction_len, x.idt_vectoring_info) == (9, 0x30 | bits << 30, 7, 0)


def test_vmx_task_gate_exit_reports_the_event_in_idt_vectoring_info():
    _, x = _task_switch_exit(VmxExitFormat(), "gate", event=(3, 13), error_code=0x18, next_ip=0x1000)

    assert (x.reason, x.qualification, x.instruction_len) == (9, 0x30 | 3 << 30, 0)
    assert (x.idt_vectoring_info, x.idt_vectoring_error_code) == (0x80000B0D, 0x18)   # valid, code, HW exc 13


@pytest.mark.parametrize("source,info2", [("call", 0), ("iret", 1 << 36), ("jmp", 1 << 38)])
def test_svm_task_switch_exit_encoding(source, info2):
    from kvmpy.hw.virt.svm import SvmExitFormat
    _, x = _task_switch_exit(SvmExitFormat(), source)

    assert (x.exit_code, x.exit_info_1, x.exit_info_2, x.next_rip, x.exit_int_info) == (0x7D, 0x30, info2, 0x1007, 0)


def test_svm_task_gate_exit_has_error_code_and_exitintinfo():
    from kvmpy.hw.virt.svm import SvmExitFormat
    _, x = _task_switch_exit(SvmExitFormat(), "gate", event=(3, 13), error_code=0x18, next_ip=0x1000)

    assert (x.exit_code, x.exit_info_1, x.exit_info_2) == (0x7D, 0x30, 1 << 44 | 0x18)
    assert (x.exit_int_info, x.exit_int_info_err) == (0x80000B0D, 0x18)


@pytest.mark.parametrize("vendor", ["vmx", "svm"])
@pytest.mark.parametrize("source,event,error_code,insn_len", [
    ("call", None, None, 7), ("jmp", None, None, 7), ("iret", None, None, 7),
    ("gate", (3, 13), 0x18, 0),           # #GP through a task gate: nothing to retire, error code kept
    ("gate", (4, 0x40), None, 7),         # INT 0x40 through a task gate: retired
])
def test_kernel_decodes_what_the_processor_encodes(monkeypatch, vendor, source, event, error_code, insn_len):
    """The vendor's handler hands kvm_task_switch what the processor's exit said."""
    import types
    from kvmpy.hw.virt.svm import SvmExitFormat
    from kvmpy.kernel.x86 import run as common
    from kvmpy.kernel.x86.svm import svm
    from kvmpy.kernel.x86.vmx import vmx
    fmt, handler = {"vmx": (VmxExitFormat(), vmx.handle_task_switch),
                    "svm": (SvmExitFormat(), svm.task_switch_interception)}[vendor]
    cpu, x = _task_switch_exit(fmt, source, event, error_code, next_ip=0x1000 + insn_len)
    calls = []
    monkeypatch.setattr(common, "kvm_task_switch", lambda vcpu, *args: calls.append(args) or 1)

    assert handler(types.SimpleNamespace(arch=types.SimpleNamespace(cpu=cpu)), x) == 1
    assert calls == [(0x30, source, error_code, insn_len, event[0] if event else None)]


# ---------------------------------------------------------------- a new CR3 through the kernel
PD_A, PD_B = 0x10000, 0x12000            # page directories; their tables follow them
TSS_A, TSS_B = 0x3000, 0x3100
SEL_TSS_A, SEL_TSS_B = 0x28, 0x30
CODE_A = bytes([0xA0, 0x00, 0x50, 0x00, 0x00,                   # mov al, [0x5000]: shadow linear page 5
                0xEA, 0x00, 0x00, 0x00, 0x00, SEL_TSS_B, 0x00,  # jmp far TSS_B:0
                0xF4])


def _paged_task_vm(ram):
    """Two tasks with their own page directory: linear page 5 is physical 0x5000 for task A
    and 0x6000 for task B, which starts there.  Each page says which it is on port 0xf4."""
    def put(addr, value, size):
        ram[addr:addr + size] = value.to_bytes(size, "little")
    ram[0x1000:0x1000 + len(CODE_A)] = CODE_A
    for sel, d in {0x08: 0x00CF9A000000FFFF, 0x10: 0x00CF92000000FFFF,
                   SEL_TSS_A: 0x00008B0030000067, SEL_TSS_B: 0x0000890031000067}.items():
        put(0x2000 + sel, d, 8)
    for pd in (PD_A, PD_B):
        put(pd, pd + 0x1000 | 3, 4)
        for page in range(512):
            put(pd + 0x1000 + 4 * page, page << 12 | 3, 4)
    put(PD_B + 0x1000 + 4 * 5, 0x6000 | 3, 4)
    for page, tag in ((0x5000, 0xA), (0x6000, 0xB)):
        ram[page:page + 5] = bytes([0xB0, tag, 0xE6, 0xF4, 0xF4])     # mov al, tag; out 0xf4, al; hlt
    put(TSS_B + 0x1C, PD_B, 4)
    put(TSS_B + 0x20, 0x5000, 4)
    put(TSS_B + 0x24, 0x2, 4)
    put(TSS_B + 0x38, 0x8000, 4)                                    # ESP
    for i, sel in enumerate((0x10, 0x08, 0x10, 0x10, 0x10, 0x10)):  # ES CS SS DS FS GS
        put(TSS_B + 0x48 + 4 * i, sel, 2)


def _flat(seg, sel, type_):
    seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, sel, type_
    seg.present, seg.dpl, seg.db, seg.s, seg.g, seg.l, seg.unusable = 1, 0, 1, 1, 1, 0, 0


def test_task_switch_to_a_new_cr3_through_kvm(soft_mmu):
    """JMP to a TSS whose CR3 maps an already-used linear page elsewhere: the new task runs
    from its own mapping (under shadow paging KVM must see the CR3 load), the old task keeps
    the EIP after the JMP, and TR/CR3/busy bits are the new task's."""
    from kvmpy import syscalls
    from kvmpy.uapi import kvm as uapi
    vm = rawvmm._Vm(syscalls)
    try:
        kvm_fd = vm.open("/dev/kvm")
        vm_fd = vm.adopt(syscalls.ioctl(kvm_fd, uapi.KVM_CREATE_VM, 0))
        ram = vm.map(-1, 1 << 20)
        _paged_task_vm(ram)
        syscalls.ioctl(vm_fd, uapi.KVM_SET_USER_MEMORY_REGION, uapi.kvm_userspace_memory_region(
            slot=0, guest_phys_addr=0, memory_size=len(ram), userspace_addr=rawvmm._address_of(ram)))
        vcpu_fd = vm.adopt(syscalls.ioctl(vm_fd, uapi.KVM_CREATE_VCPU, 0))
        run_buf = vm.map(vcpu_fd, syscalls.ioctl(kvm_fd, uapi.KVM_GET_VCPU_MMAP_SIZE, 0))
        sregs = uapi.kvm_sregs()
        syscalls.ioctl(vcpu_fd, uapi.KVM_GET_SREGS, sregs)
        _flat(sregs.cs, 0x08, 0xB)
        for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            _flat(seg, 0x10, 0x3)
        sregs.tr.base, sregs.tr.limit, sregs.tr.selector, sregs.tr.type = TSS_A, 0x67, SEL_TSS_A, 0xB
        sregs.tr.present, sregs.tr.s, sregs.tr.unusable = 1, 0, 0
        sregs.gdt.base, sregs.gdt.limit = 0x2000, 0x37
        sregs.cr0, sregs.cr3 = 0x80000011, PD_A
        syscalls.ioctl(vcpu_fd, uapi.KVM_SET_SREGS, sregs)
        syscalls.ioctl(vcpu_fd, uapi.KVM_SET_REGS, uapi.kvm_regs(rip=0x1000, rflags=0x2, rsp=0x9000))
        run = uapi.kvm_run.from_buffer(run_buf)
        syscalls.ioctl(vcpu_fd, uapi.KVM_RUN, 0)
        reason, port, data = run.exit_reason, run.io.port, run_buf[run.io.data_offset]
        del run
        syscalls.ioctl(vcpu_fd, uapi.KVM_GET_SREGS, sregs)

        assert (reason, port, data) == (uapi.KVM_EXIT_IO, 0xF4, 0xB)
        assert (sregs.cr3, sregs.tr.selector, sregs.tr.base) == (PD_B, SEL_TSS_B, TSS_B)
        assert int.from_bytes(ram[TSS_A + 0x20:TSS_A + 0x24], "little") == 0x1000 + len(CODE_A) - 1
        assert (ram[0x2000 + SEL_TSS_A + 5], ram[0x2000 + SEL_TSS_B + 5]) == (0x89, 0x8B)   # busy moved
    finally:
        vm.close()
