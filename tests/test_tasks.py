"""Call gates, hardware task switches and virtual-8086 mode (kvmpy/guests/tasks.S).

The host's /dev/kvm cannot be the oracle here: its instruction emulator stops at the first
far call through a gate (KVM_EXIT_INTERNAL_ERROR).  QEMU TCG runs the guest to the end, so
its console output and exit value are committed in tests/data/tasks.qemu.json; kvmpy must
print the same lines and exit the same way.  Where QEMU is installed the recording is
checked against a fresh run, and refreshed with

    KVMPY_RECORD=1 pytest tests/test_tasks.py -k qemu

QEMU runs the flat image without SeaBIOS: a 64 KiB "BIOS" whose reset vector jumps to
0:0x7c00, and the image placed there by QEMU's generic loader device, so the guest starts
as under kvmpy (real mode, empty IVT).  The unit tests below check error codes on the
processor alone.
"""

import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

import rawvmm
from kvmpy.guests import load_image
from kvmpy.hw import memory as hm
from kvmpy.hw.cpu import Processor
from kvmpy.hw.events import Fault
from kvmpy.hw.state import CR0_PE, CS, EFER_LMA, EFER_LME, SS, Segment
from kvmpy.hw.vmx import VmxExitFormat

RECORDED = pathlib.Path(__file__).resolve().parent / "data" / "tasks.qemu.json"
RECORD = os.environ.get("KVMPY_RECORD") == "1"
QEMU = "qemu-system-x86_64"
RESET_JUMP = bytes([0xEA, 0x00, 0x7C, 0x00, 0x00])      # jmp far 0000:7c00 at F000:FFF0

STEPS = ("call gate, same privilege", "call gate ring 3 -> 0, 2 parameters, #GP(gate)",
         "task gate CALL, IRET via back link", "JMP to TSS and back",
         "IDT task gates, #GP error code on the new stack", "vm86 IOPL 3, INT to ring 0 and back",
         "vm86 IOPL 0, CLI #GP", "64-bit call gate, same privilege",
         "64-bit call gate ring 3 -> 0, task switch #GP", "done")
CONSOLE = "".join(f"tasks: {s}\r\n" for s in STEPS)


def run_qemu(image):
    """Run ``image`` under QEMU TCG; return {"console", "exit_value"}."""
    with tempfile.TemporaryDirectory() as tmp:
        bios, guest = pathlib.Path(tmp, "bios.bin"), pathlib.Path(tmp, "guest.bin")
        bios.write_bytes(bytes(0xFFF0) + RESET_JUMP + bytes(11))
        guest.write_bytes(image)
        argv = [QEMU, "-machine", "pc", "-accel", "tcg", "-m", "16", "-display", "none", "-nographic",
                "-serial", "stdio", "-monitor", "none", "-net", "none",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-bios", str(bios),
                "-device", f"loader,file={guest},addr=0x7c00,force-raw=on"]
        proc = subprocess.run(argv, capture_output=True, timeout=60)
    status = proc.returncode
    return {"console": proc.stdout.decode("latin-1"), "exit_value": status >> 1 if status & 1 else None}


@pytest.mark.skipif(shutil.which(QEMU) is None, reason="QEMU is not installed")
def test_qemu_run():
    result = run_qemu(load_image("tasks"))

    assert result == {"console": CONSOLE, "exit_value": 0}
    if RECORD:
        RECORDED.write_text(json.dumps(result, indent=1) + "\n")
    else:
        assert result == json.loads(RECORDED.read_text())


def test_soft_matches_qemu(soft_mmu):
    from kvmpy import syscalls
    reference = json.loads(RECORDED.read_text())

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
