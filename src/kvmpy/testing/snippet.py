"""Run a snippet of raw 64-bit (or 32-bit) code on the processor alone, from a given state.

The other half of the silicon oracle (``tests/oracle``): the same bytes run
natively in a test process and here, at the same addresses, and the results
are compared.  The processor runs at CPL 0 in 64-bit mode with KVM's shadow
table mapping code, data and stack pages directly (no guest page tables
needed); every exception is intercepted so the state at the faulting
instruction is returned, as the native side reports it.  With ``bits=32`` the
code runs in compatibility mode with flat 32-bit code, stack and data segments
(what a 32-bit protected-mode guest sees), at the same addresses.  The processor has the CPU
model of the host's vendor unless told another (``model``, a ``kvmpy.hw.models`` name), so
that it can be compared with the silicon it runs on.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

from kvmpy.hw import memory as hm, models
from kvmpy.hw.cpu import Processor
from kvmpy.hw.state import Segment
from kvmpy.hw.x86defs import CR0_PE, CR0_PG, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE, CS, EFER_LMA, EFER_LME
from kvmpy.hw.fpu.xsave import XCR0_SUPPORTED
from kvmpy.hw.virt.vmx import EXIT_REASON_EXCEPTION_NMI, EXIT_REASON_HLT, VmxExitFormat

CODE_ADDR = 0x10200000
DATA_ADDR = 0x10000000
STACK_ADDR = 0x10100000
STACK_SIZE = 0x10000
STACK_TOP = STACK_ADDR + 0x8000
REG_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass
class SnippetResult:
    regs: dict
    rflags: int
    mem: bytes
    rip: int
    exception: int | None
    icount: int = 0


def run_snippet(code: bytes, regs: dict, rflags: int, mem: bytes | None = None,
                budget: int = 1_000_000, bits: int = 64, code_writable: bool = False,
                model: str = "host") -> SnippetResult:
    """Run ``code`` at CODE_ADDR until its appended HLT or an exception.

    ``code_writable`` maps the code page writable, for self-modifying code.
    """
    mem = mem if mem is not None else bytes(4096)
    code_buf = mmap.mmap(-1, (len(code) + 1 + 4095) & ~4095 or 4096)
    code_buf[:len(code) + 1] = code + b"\xf4"          # HLT marks the end
    data_buf = mmap.mmap(-1, len(mem))
    data_buf[:] = mem
    stack_buf = mmap.mmap(-1, STACK_SIZE)
    cpu = Processor(VmxExitFormat(), models.lookup(model))
    cpu.tdp = False
    for base, buf, writable in ((CODE_ADDR, code_buf, code_writable), (DATA_ADDR, data_buf, True),
                                (STACK_ADDR, stack_buf, True)):
        host = hm.address_of(buf)
        for off in range(0, len(buf), 4096):
            cpu.shadow[(base + off) >> 12] = (host + off, writable, True, (base + off) >> 12)
    cpu.cr0 |= CR0_PE | CR0_PG
    cpu.cr4 |= 0x20 | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE   # as Linux runs user code
    cpu.xcr0 = XCR0_SUPPORTED
    cpu.efer = EFER_LME | EFER_LMA
    if bits == 64:
        cpu.seg[CS] = Segment(selector=8, base=0, limit=0xFFFFFFFF, type=0xB, l=1, db=0, g=1)
    else:
        for i in range(6):
            cpu.seg[i] = Segment(selector=0x10, base=0, limit=0xFFFFFFFF, type=3, db=1, g=1)
        cpu.seg[CS] = Segment(selector=0x18, base=0, limit=0xFFFFFFFF, type=0xB, db=1, g=1)
    cpu.refresh()
    for i, name in enumerate(REG_NAMES):
        cpu.regs[i] = regs.get(name, STACK_TOP if name == "rsp" else 0)
    cpu.set_rflags(rflags | 0x200)          # user code always runs with IF set
    cpu.rip = CODE_ADDR
    cpu.exception_bitmap = 0xFFFFFFFF
    x = cpu.run(budget)
    exc = x.intr_info & 0xFF if x.reason == EXIT_REASON_EXCEPTION_NMI else None
    if x.reason not in (EXIT_REASON_HLT, EXIT_REASON_EXCEPTION_NMI):
        raise RuntimeError("snippet ended with VM exit %r" % x)
    result = SnippetResult({n: cpu.regs[i] for i, n in enumerate(REG_NAMES)}, cpu.get_rflags(),
                           bytes(data_buf), cpu.rip, exc, cpu.icount)
    del cpu
    return result
