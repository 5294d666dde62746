"""KVM_RUN semantics, host /dev/kvm versus kvmpy, one small guest per rule.

Each scenario below builds a VM through raw ioctls (``rawvmm``'s system-call tables), runs a
tiny guest assembled here with GNU as, and returns what user space can observe: the exits
(reason, RIP, port or address, size, data, ``ready_for_interrupt_injection``/``if_flag``),
errnos of KVM_RUN, console bytes (OUT to 0x3f8), memory and final registers. Every scenario
runs once on the host's /dev/kvm, the oracle, and on kvmpy's soft kernel with both MMU modes;
the results must be equal. Host results are committed in tests/data/run_semantics.host.json,
with the machine and KVM vendor module they came from, so the soft half is checked where
/dev/kvm is absent; refresh them with

    KVMPY_RECORD=1 pytest tests/kernel/test_run_semantics.py -k host

Guests run in real mode at 0:0x7c00 or, for most, in flat 32-bit protected mode (CS 0x08,
data 0x10 from a GDT the harness writes at 0x500). RAM is slot 0, 1 MiB at 0; an MMIO device
answers reads at any unmapped address with ``rawvmm.mmio_answer`` and records writes.
"""

import json
import os
import pathlib
import shutil

import pytest

from kvmpy.uapi import kvm as uapi
from tests.support import rawvmm, records
from tests.support.guestvm import (CPUID_LM, EFER, GP_SKIP2, IN_PORT, RETURN32, TOUCH_STACK, assemble, machine,
                                   prot32, putc, real16)
from tests.support.hostkvm import host_kvm_usable

DATA_FILE = pathlib.Path(__file__).resolve().parents[1] / "data" / "run_semantics.host.json"
RECORD = os.environ.get("KVMPY_RECORD") == "1"
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rip", "rflags")


# ------------------------------------------------------------------ scenarios
@machine
def immediate_exit(make):
    """immediate_exit=1: EINTR + KVM_EXIT_INTR, after completing a pending IN or MMIO read."""
    m = make(assemble(prot32(f"mov $0x11223344, %eax\n mov ${IN_PORT}, %dx\n inb %dx, %al\n hlt\n"
                             " movl 0xd0000004, %ebx\n hlt\n")))
    m.run.immediate_exit = 1
    m.log.append(m.kvm_run())                   # nothing pending: EINTR before entering
    m.run.immediate_exit = 0
    m.step()                                    # IN
    m.run.immediate_exit = 1
    m.log.append(dict(m.kvm_run(), **m.regs("rax")))
    m.run.immediate_exit = 0
    m.step()                                    # HLT
    m.step()                                    # MMIO read
    m.run.immediate_exit = 1
    m.log.append(dict(m.kvm_run(), **m.regs("rbx")))
    m.run.immediate_exit = 0
    m.step()
    return m.result(*GPRS)


@machine
def in_dropped_after_rip_change(make):
    """User space moves RIP while an IN is pending: the completion is dropped."""
    m = make(assemble(prot32(f"mov $0x11223344, %eax\n mov ${IN_PORT}, %dx\n inb %dx, %al\n hlt\n"
                             " mov $0x55, %bl\n hlt\n")))
    rec = m.step()
    m.set_regs(rip=int(rec["rip"], 16) + 2)     # past "in; hlt"
    m.step()
    return m.result(*GPRS)


@machine
def pio_sizes(make):
    """IN of 1/2/4 bytes (4 zero-extends RAX); OUT data in the PIO page at data_offset."""
    m = make(assemble(prot32(f"mov ${IN_PORT}, %dx\n inb %dx, %al\n hlt\n inw %dx, %ax\n hlt\n"
                             " inl %dx, %eax\n hlt\n inb $0x71, %al\n hlt\n"
                             " mov $0xcafef00d, %eax\n outb %al, $0x80\n outw %ax, $0x82\n"
                             " mov $0x84, %dx\n outl %eax, %dx\n hlt\n")))
    seen = []
    for _ in range(4):
        m.set_regs(rax=0x1122334455667788)
        m.step()
        seen.append(m.until("HLT") and m.regs("rax")["rax"])
    m.until("HLT")
    return m.result(*GPRS, rax_after_in=seen)


MMIO_BODY = """
 movb 0xd0000001, %al
 movw 0xd0000002, %bx
 movl 0xd0000004, %ecx
 movb $0x11, 0xd0000010
 movw $0x2233, 0xd0000012
 movl $0x44556677, 0xd0000014
 mov $0x12345678, %eax
 mov $0x9abcdef0, %edx
 mov $0x89abcdef, %ebx
 mov $0x01234567, %ecx
 cmpxchg8b 0xd0000020
 movl 0xd0000ffe, %esi
 movl $0xa1b2c3d4, 0xd0000ffe
 movl $0x01020304, 0xffffe
 movl 0xffffe, %edi
 addl $1, 0xd0000030
 mov $0xd0000040, %esi
 mov $0x8000, %edi
 movsl
 movl $0x99aabbcc, 0x8004
 mov $0x8000, %esi
 mov $0xd0000050, %edi
 mov $2, %ecx
 rep movsl
 hlt
"""


@machine
def mmio_accesses(make):
    """MMIO of 1/2/4/8 bytes, page-crossing fragments, RAM->MMIO crossing, RMW, string MMIO."""
    m = make(assemble(prot32(MMIO_BODY)))
    m.until("HLT")
    return m.result(*GPRS, ram=bytes(m.ram[0xFFFFC:0x100000]).hex(), copied=bytes(m.ram[0x8000:0x8008]).hex())


IRQ_HANDLERS_16 = "".join(f"movw $h{v:x}, {v * 4}\n movw $0, {v * 4 + 2}\n" for v in (0x40, 0x41))


@machine
def irq_window_real_mode(make):
    """request_interrupt_window with IF=0 runs to STI, then IRQ_WINDOW_OPEN; KVM_INTERRUPT via the IVT."""
    m = make(assemble(real16(IRQ_HANDLERS_16 + TOUCH_STACK + " cli\n" + putc("a") + " sti\n nop\n nop\n" + putc("b") +
                             " hlt\n" + putc("z") + " hlt\n"
                             + f"h40:\n{putc('@')} iret\nh41:\n{putc('A')} iret\n")), mode="real")
    m.run.request_interrupt_window = 1
    m.log.append(m.kvm_run())                           # the console 'a' with IF=0
    m.console += "a"
    if m.step()["reason"] == "IRQ_WINDOW_OPEN":
        m.run.request_interrupt_window = 0
        m.interrupt(0x41)
        m.until("HLT")
    m.run.request_interrupt_window = 0
    m.interrupt(0x40)
    m.until("HLT")
    return m.result(*GPRS)


def _irq_protected_mode(make, touch):
    handlers = {0x40: putc("@") + RETURN32, 0x41: putc("A") + RETURN32}
    m = make(assemble(prot32((TOUCH_STACK if touch else "") + " sti\n hlt\n" + putc("1") + " hlt\n"
                             + putc("2") + " hlt\n", handlers)))
    m.until("HLT")
    m.interrupt(0x41)
    m.until("HLT")
    m.interrupt(0x40)
    m.until("HLT")
    return m.result(*GPRS)


@machine
def irq_protected_mode(make):
    """KVM_INTERRUPT of vector N goes through the IDT; HLT exits with RIP past the HLT."""
    return _irq_protected_mode(make, touch=True)


@machine
def irq_unmapped_stack(make):
    """The same, but the first delivery also has to fault in the stack and GDT pages."""
    return _irq_protected_mode(make, touch=False)


@machine
def triple_fault(make):
    """#UD with an IDT limit of 0: #GP, #DF, then shutdown."""
    m = make(assemble(".code32\n lidt idtr\n ud2\nidtr: .word 0\n .long 0\n"))
    m.until("SHUTDOWN")
    return m.result()


@machine
def no_memslots(make):
    """KVM_RUN with no memory at all: KVM_EXIT_INTERNAL_ERROR."""
    m = make(ram=0, mode=None)
    m.step()
    return m.result()


@machine
def readonly_slot(make):
    """KVM_MEM_READONLY: reads see the memory, writes become MMIO write exits."""
    m = make(assemble(prot32(" movl 0x100000, %ebx\n movl $0xdeadbeef, 0x100004\n movl 0x100004, %ecx\n"
                             " movb $1, 0x100ff0\n hlt\n")))
    page = m.memory(0x1000)
    page[0:8] = bytes(range(1, 9))
    m.set_slot(1, 0x100000, page, flags=uapi.KVM_MEM_READONLY)
    m.until("HLT")
    return m.result(*GPRS, memory=bytes(page[0:8]).hex())


@machine
def memslot_changes(make):
    """Delete, re-add and move a slot between runs: the guest sees each new mapping."""
    m = make(assemble(prot32("1: movl 0x100000, %ebx\n movl 0x200000, %ecx\n hlt\n jmp 1b\n")), ram=0x100000)
    a, b = m.memory(0x1000), m.memory(0x1000)
    a[0:4], b[0:4] = b"AAAA", b"BBBB"
    m.set_slot(1, 0x100000, a)
    seen = []
    for change in (lambda: None,
                   lambda: m.set_slot(1, 0x100000, None, size=0),      # delete
                   lambda: m.set_slot(1, 0x100000, b),                 # re-add, other memory
                   lambda: m.set_slot(1, 0x200000, b)):                # move
        change()
        m.until("HLT")
        seen.append(m.regs("rbx", "rcx"))
    return m.result(seen=seen)


@machine
def dirty_log(make):
    """KVM_GET_DIRTY_LOG reports written pages, clears them, then reports only new writes."""
    m = make(assemble(prot32(" movl $1, 0x100000\n movl $1, 0x103000\n movl 0x104000, %eax\n"
                             " movl $1, 0x105ffc\n hlt\n movl $2, 0x103000\n movw $2, 0x107fff\n hlt\n")))
    mem = m.memory(0x10000)
    m.set_slot(1, 0x100000, mem, flags=uapi.KVM_MEM_LOG_DIRTY_PAGES)
    logs = [m.dirty_log(1, 16)]
    m.until("HLT")
    logs += [m.dirty_log(1, 16), m.dirty_log(1, 16)]
    m.until("HLT")
    logs.append(m.dirty_log(1, 16))
    return m.result(logs=logs, memory=[mem[0x3000], mem[0x7FFF], mem[0x8000]])


CPUID_LEAVES = (0, 1, 0x80000000, 0x80000001)
CPUID_BODY = "".join(f" mov ${leaf:#x}, %eax\n xor %ecx, %ecx\n cpuid\n mov %eax, {0x9000 + 16 * i:#x}\n"
                     f" mov %ebx, {0x9004 + 16 * i:#x}\n mov %ecx, {0x9008 + 16 * i:#x}\n"
                     f" mov %edx, {0x900c + 16 * i:#x}\n" for i, leaf in enumerate(CPUID_LEAVES))


def _cpuid_mismatches(m):
    """Leaves the guest read with CPUID that differ from KVM_GET_CPUID2's entries."""
    table = uapi.with_entries(uapi.kvm_cpuid2, 256)()
    table.nent = 256
    m.sc.ioctl(m.vcpu_fd, uapi.KVM_GET_CPUID2, table)
    entries = {table.entries[i].function: table.entries[i] for i in range(table.nent)
               if table.entries[i].index == 0}
    bad = []
    for i, leaf in enumerate(CPUID_LEAVES):
        seen = [int.from_bytes(m.ram[0x9000 + 16 * i + 4 * k:0x9004 + 16 * i + 4 * k], "little") for k in range(4)]
        e = entries[leaf]
        if seen != [e.eax, e.ebx, e.ecx, e.edx]:
            bad.append(hex(leaf))
    return bad


def _efer_guest(make, long_mode):
    def edit(cpuid):
        if not long_mode:
            for i in range(cpuid.nent):
                if cpuid.entries[i].function == 0x80000001:
                    cpuid.entries[i].edx &= ~CPUID_LM
    m = make(assemble(prot32(f" mov ${EFER:#x}, %ecx\n rdmsr\n or $0x100, %eax\n wrmsr\n{putc('w')}"
                             f" mov $0x12345, %ecx\n rdmsr\n{putc('r')}{CPUID_BODY} hlt\n",
                             {13: GP_SKIP2})), cpuid_edit=edit)
    m.until("HLT")
    lm_seen = int.from_bytes(m.ram[0x903C:0x9040], "little") & CPUID_LM
    return m.result(efer=hex(m.get(uapi.KVM_GET_SREGS, uapi.kvm_sregs).efer),
                    cpuid_mismatches=_cpuid_mismatches(m), guest_sees_lm=bool(lm_seen))


@machine
def cpuid_without_lm(make):
    """No LM in the guest CPUID: WRMSR EFER.LME is #GP; unknown RDMSR is #GP; CPUID = GET_CPUID2."""
    return _efer_guest(make, long_mode=False)


@machine
def cpuid_with_lm(make):
    """LM in the guest CPUID: WRMSR EFER.LME succeeds."""
    return _efer_guest(make, long_mode=True)


def _sync_view(m):
    s = m.run.s.regs
    return {"rip": hex(s.regs.rip), "rax": hex(s.regs.rax), "cr0": hex(s.sregs.cr0),
            "cs": hex(s.sregs.cs.selector), "if_shadow": s.events.interrupt.shadow}


@machine
def sync_regs(make):
    """kvm_valid_regs fills run->s.regs; kvm_dirty_regs loads it; unknown bits are EINVAL."""
    m = make(assemble(prot32(f" mov ${IN_PORT}, %dx\n inb %dx, %al\n hlt\n mov %ebx, %eax\n"
                             " outb %al, $0x80\n hlt\n")))
    m.run.kvm_valid_regs = uapi.KVM_SYNC_X86_VALID_FIELDS
    m.step()
    views = [dict(_sync_view(m), **m.regs("rip", "rax"))]
    m.run.s.regs.regs.rbx = 0x42
    m.run.kvm_dirty_regs = uapi.KVM_SYNC_X86_REGS
    m.until("HLT")
    views.append(dict(_sync_view(m), dirty_after=m.run.kvm_dirty_regs))
    m.until("HLT")
    errs = []
    for field in ("kvm_valid_regs", "kvm_dirty_regs"):
        setattr(m.run, field, 8)
        errs.append(m.kvm_run())
        setattr(m.run, field, 0)
    return m.result(*GPRS, views=views, errors=errs)


# ------------------------------------------------------------------ where the host is not KVM on VMX/SVM
# kvm_pvm runs guests with every guest instruction in KVM's emulator. Where that gives a
# result KVM on VMX or SVM (kvmpy's model under either vendor module) would not, a kvm_pvm
# result is corrected to what KVM on the processor does; each correction says why, from the
# code both vendor modules share (x86.c's fast PIO, the emulation-failure exit).  A result
# from kvm_intel or kvm_amd is taken as it is.

def _vmx_out_rip(lengths):
    """Plain OUT: VMX and SVM (handle_io, io_interception: kvm_fast_pio) exit to user space
    with RIP still at the OUT (kvm_fast_pio_out skips it in complete_fast_pio_out); the
    emulator has already retired it. ``lengths`` are the
    non-console OUTs' instruction lengths, in order."""
    def correct(result):
        outs = [r for r in result["log"] if r.get("dir") == "out"]
        assert len(outs) == len(lengths)
        for rec, n in zip(outs, lengths):
            rec["rip"] = hex(int(rec["rip"], 16) - n)
        return result
    return correct


def _in_dropped(result):
    """VMX and SVM take a plain IN through kvm_fast_pio_in, whose completion is dropped when RIP
    moved (cui_linear_rip); the host's emulated-PIO completion (complete_emulated_pio) has no
    such check and retires the old IN instead. So on VMX the guest goes on at the new RIP."""
    result["log"][-1]["rip"] = "0x7e3c"
    result["regs"].update(rbx="0x55", rip="0x7e3c")
    return result


def _sync_regs(result):
    """Besides OUT's RIP: KVM_SYNC_X86_REGS loads RAX=0 from run->s.regs before the pending
    IN completes, and complete_fast_pio_in then merges the port's 0xde into AL; the host's
    emulated completion after a register load leaves AL alone."""
    result = _vmx_out_rip([2])(result)
    result["views"][1]["rax"] = "0xde"
    return result


def _no_memslots(result):
    """kvm_pvm fails KVM_RUN with ENOSPC when the VM has no memory at all. KVM on VMX or SVM
    takes the fetch at 0xffff_fff0 (an EPT violation or NPF outside every memslot) as MMIO, cannot fetch the instruction and reports an
    emulation failure: suberror 1, ndata 6 (flags 0, no instruction bytes, 5 exit-info
    words)."""
    assert result["log"] == [{"errno": "ENOSPC", "reason": "UNKNOWN", "rip": "0xfff0"}]
    result["log"] = [{"reason": "INTERNAL_ERROR", "rip": "0xfff0", "ready": 0, "if": 0, "suberror": 1,
                      "ndata": 6}]
    return result


def _irq_window(result):
    """kvm_pvm never reports KVM_EXIT_IRQ_WINDOW_OPEN for an emulated guest (it runs on to
    the HLT). KVM exits at the first instruction boundary with IF=1 and no STI shadow (VMX's
    interrupt-window exiting, SVM's V_IRQ with the VINTR intercept):
    after "sti; nop", at the second NOP (0x7c33); vector 0x41 then prints 'A' before 'b'."""
    assert [r["reason"] for r in result["log"]] == ["IO", "HLT", "HLT"]
    result = _vmx_out_rip([1])(result)          # the console OUT (out dx, al) exits at the OUT
    result["log"][1:1] = [{"reason": "IRQ_WINDOW_OPEN", "rip": "0x7c33", "ready": 1, "if": 1}]
    result["console"] = "aAb@z"
    return result


PVM_CORRECTIONS = {
    "irq_window_real_mode": _irq_window,
    "pio_sizes": _vmx_out_rip([2, 3, 1]),
    "in_dropped_after_rip_change": _in_dropped,
    "sync_regs": _sync_regs,
    "no_memslots": _no_memslots,
}

SCENARIOS = {f.__name__: f for f in (
    immediate_exit, in_dropped_after_rip_change, pio_sizes, mmio_accesses, irq_window_real_mode,
    irq_protected_mode, irq_unmapped_stack, triple_fault, no_memslots, readonly_slot, memslot_changes, dirty_log,
    cpuid_without_lm, cpuid_with_lm, sync_regs)}

# ------------------------------------------------------------------ tests
pytestmark = pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None,
                                reason="needs GNU as and ld")


def _recorded():
    """{scenario: result} and the machine they were recorded on (records.py)."""
    data = json.loads(DATA_FILE.read_text()) if DATA_FILE.exists() else {}
    return data, data.pop(records.KEY, None)


def _as_on_silicon(name, result, kvm_module):
    """A host's result as KVM on VMX/SVM gives it: kvm_pvm's corrected (PVM_CORRECTIONS)."""
    if kvm_module == "kvm_pvm" and name in PVM_CORRECTIONS:
        return PVM_CORRECTIONS[name](result)
    return result


@pytest.mark.host
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_host(name):
    """The live host against the record: as they are under the recording's vendor module,
    else both as KVM on the processor gives them."""
    result = SCENARIOS[name](rawvmm.HOST)
    data, origin = _recorded()
    if RECORD:
        data[name] = result
        data[records.KEY] = records.machine()
        DATA_FILE.parent.mkdir(exist_ok=True)
        DATA_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    elif records.same_kind(origin):
        assert result == data[name], "host differs from tests/data; re-record with KVMPY_RECORD=1"
    else:
        assert (_as_on_silicon(name, result, rawvmm.host_kvm_module())
                == _as_on_silicon(name, data[name], origin["kvm_module"]))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_soft_matches_host(name, soft_mmu, request):
    from kvmpy import syscalls
    if host_kvm_usable():
        reference = _as_on_silicon(name, SCENARIOS[name](rawvmm.HOST), rawvmm.host_kvm_module())
    else:
        data, origin = _recorded()
        reference = _as_on_silicon(name, data[name], origin["kvm_module"])
    assert SCENARIOS[name](syscalls) == reference
