"""A one-vCPU VM built from raw ioctls, for guests assembled on the fly with GNU as.

The harness of the KVM_RUN-semantics comparisons (tests/kernel/test_run_semantics.py and the
NMI, stats and translate tests): ``Machine(sc, image, mode)`` builds a VM on either backend
(``rawvmm.HOST`` or ``kvmpy.syscalls``) through the same system calls, so that the host's
/dev/kvm and kvmpy see exactly the same requests; ``kvm_run``/``step``/``until`` record the
exits user space observes.

Guests run in real mode at 0:0x7c00 or in flat 32-bit protected mode (CS 0x08, data 0x10 from a
GDT the harness writes at 0x500). RAM is slot 0, 1 MiB at 0.
"""

import ctypes
import errno
import functools
import os
import subprocess
import tempfile

import pytest

from kvmpy import syscalls
from kvmpy.uapi import kvm as uapi
from tests.support import rawvmm

# Parametrisation for tests that run a scenario on both kernels: the host's (skipped where
# /dev/kvm is absent) and kvmpy's.
BACKENDS = [pytest.param(rawvmm.HOST, id="host", marks=pytest.mark.host), pytest.param(syscalls, id="soft")]
RAM_SIZE = 1 << 20
LOAD = 0x7C00
GDT_ADDR = 0x500
GDT = [0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF]      # null, flat code32 (0x08), flat data (0x10)
COM1 = 0x3F8
IN_PORT = 0x510                                          # answers 0xFEEDC0DE (rawvmm.IN_ANSWERS)
CPUID_LM = 1 << 29                                       # CPUID 0x80000001 EDX: long mode
EFER = 0xC0000080


# ------------------------------------------------------------------ guest images
@functools.lru_cache(maxsize=None)
def assemble(source):
    """Flat image of ``source`` (GNU as, AT&T) linked at 0x7c00."""
    with tempfile.TemporaryDirectory() as d:
        src, obj, img = (os.path.join(d, n) for n in ("g.S", "g.o", "g.bin"))
        with open(src, "w") as f:
            f.write(".globl _start\n_start:\n" + source + "\n")
        for argv in (["as", "--64", "-o", obj, src],
                     ["ld", "-m", "elf_x86_64", f"-Ttext={LOAD:#x}", "-e", "_start", "--oformat",
                      "binary", "-o", img, obj]):
            proc = subprocess.run(argv, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
        with open(img, "rb") as f:
            return f.read()


def errno_name(call):
    """``call()``'s result, or the name of the errno it failed with ("EINVAL"), for tables of
    ioctl outcomes that compare kvmpy with the host."""
    try:
        return call()
    except OSError as e:
        return errno.errorcode[e.errno]


def putc(ch):
    """Guest code (any mode) writing one console byte; clobbers AL and DX."""
    return f"mov ${ord(ch)}, %al\n mov ${COM1}, %dx\n out %al, %dx\n"


def prot32(body, handlers=None, vectors=0x42):
    """A 32-bit guest with an IDT of ``vectors`` gates; ``handlers`` maps vector -> asm.

    Vectors without a handler print '!' and halt.
    """
    handlers = handlers or {}
    gates = "\n".join(f".word h{v if v in handlers else 'x'}, 8, 0x8e00, 0" for v in range(vectors))
    stubs = "\n".join(f"h{v}:\n{code}" for v, code in handlers.items())
    return (f".code32\n lidt idtr\n jmp main\n.p2align 3\nidt:\n{gates}\nidtr: .word {8 * vectors - 1}\n"
            f" .long idt\nhx:\n{putc('!')} hlt\n{stubs}\nmain:\n{body}")


def real16(body):
    return f".code16\n xor %ax, %ax\n mov %ax, %ds\n mov %ax, %ss\n mov $0x7000, %sp\n{body}"


# Return from a 32-bit handler without IRET: KVM's emulator implements IRET only in real mode,
# so on the host (where guests run in that emulator) a protected-mode IRET is an emulation
# failure. Clobbers ECX.
RETURN32 = " pop %ecx\n add $4, %esp\n popf\n jmp *%ecx\n"
# #GP handler: print G, drop the error code and skip the 2-byte faulting RDMSR/WRMSR.
GP_SKIP2 = putc("G") + " add $4, %esp\n addl $2, (%esp)\n" + RETURN32


# ------------------------------------------------------------------ the harness
class Machine:
    """One VM with one vCPU on a backend (``sc``: rawvmm.HOST or kvmpy.syscalls)."""

    def __init__(self, sc, image=b"", mode="prot32", ram=RAM_SIZE, cpuid_edit=None, vm_setup=None):
        self.sc = sc
        self.vm = rawvmm._Vm(sc)
        self.console = ""
        self.log = []
        self.kvm_fd = self.vm.open("/dev/kvm")
        self.vm_fd = self.vm.adopt(sc.ioctl(self.kvm_fd, uapi.KVM_CREATE_VM, 0))
        self.ram = None
        if ram:
            self.ram = self.memory(ram)
            self.ram[LOAD:LOAD + len(image)] = image
            for i, d in enumerate(GDT):
                self.ram[GDT_ADDR + 8 * i:GDT_ADDR + 8 * i + 8] = d.to_bytes(8, "little")
            self.set_slot(0, 0, self.ram)
        if vm_setup:
            vm_setup(self)              # VM ioctls that must come before the first vCPU
        self.vcpu_fd = self.vm.adopt(sc.ioctl(self.vm_fd, uapi.KVM_CREATE_VCPU, 0))
        self.run_buf = self.vm.map(self.vcpu_fd, sc.ioctl(self.kvm_fd, uapi.KVM_GET_VCPU_MMAP_SIZE, 0))
        self.run = uapi.kvm_run.from_buffer(self.run_buf)
        cpuid = uapi.with_entries(uapi.kvm_cpuid2, 256)()
        cpuid.nent = 256
        sc.ioctl(self.kvm_fd, uapi.KVM_GET_SUPPORTED_CPUID, cpuid)
        if cpuid_edit:
            cpuid_edit(cpuid)
        sc.ioctl(self.vcpu_fd, uapi.KVM_SET_CPUID2, cpuid)
        if mode is not None:
            self._enter(mode)

    def _enter(self, mode):
        sregs = self.get(uapi.KVM_GET_SREGS, uapi.kvm_sregs)
        if mode == "real":
            sregs.cs.base = sregs.cs.selector = 0
        else:
            sregs.cr0 |= 1
            sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, 8 * len(GDT) - 1
            for seg, sel in ((sregs.cs, 8), (sregs.ds, 16), (sregs.es, 16), (sregs.ss, 16), (sregs.fs, 16),
                             (sregs.gs, 16)):
                seg.selector, seg.base, seg.limit, seg.present, seg.s, seg.g = sel, 0, 0xFFFFFFFF, 1, 1, 1
                seg.db, seg.type, seg.dpl = 1, (11 if sel == 8 else 3), 0
        self.sc.ioctl(self.vcpu_fd, uapi.KVM_SET_SREGS, sregs)
        self.sc.ioctl(self.vcpu_fd, uapi.KVM_SET_REGS, uapi.kvm_regs(rip=LOAD, rflags=2, rsp=0x7000))

    def close(self):
        self.run = None
        self.vm.close()

    # ---- ioctls
    def memory(self, size):
        return self.vm.map(-1, size)

    def set_slot(self, slot, gpa, buf, flags=0, size=None):
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf)) if buf is not None else 0
        size = len(buf) if size is None else size
        region = uapi.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=gpa,
                                                  memory_size=size, userspace_addr=addr)
        self.sc.ioctl(self.vm_fd, uapi.KVM_SET_USER_MEMORY_REGION, region)

    def get(self, request, ctype):
        obj = ctype()
        self.sc.ioctl(self.vcpu_fd, request, obj)
        return obj

    def msrs(self, write, *indices):
        """KVM_SET_MSRS of ``write`` to each of ``indices`` (KVM_GET_MSRS if ``write`` is
        None): (how many entries the kernel processed, their values)."""
        buf = uapi.with_entries(uapi.kvm_msrs, len(indices))()
        buf.nmsrs = len(indices)
        for i, index in enumerate(indices):
            buf.entries[i].index = index
            buf.entries[i].data = write or 0
        request = uapi.KVM_SET_MSRS if write is not None else uapi.KVM_GET_MSRS
        n = self.sc.ioctl(self.vcpu_fd, request, buf)
        return n, [buf.entries[i].data for i in range(n)]

    def regs(self, *names):
        r = self.get(uapi.KVM_GET_REGS, uapi.kvm_regs)
        return {n: hex(getattr(r, n)) for n in names}

    def set_regs(self, **values):
        r = self.get(uapi.KVM_GET_REGS, uapi.kvm_regs)
        for n, v in values.items():
            setattr(r, n, v)
        self.sc.ioctl(self.vcpu_fd, uapi.KVM_SET_REGS, r)

    def interrupt(self, vector):
        self.sc.ioctl(self.vcpu_fd, uapi.KVM_INTERRUPT, uapi.kvm_interrupt(irq=vector))

    def dirty_log(self, slot, npages):
        bitmap = ctypes.create_string_buffer(((npages + 63) // 64) * 8)
        self.sc.ioctl(self.vm_fd, uapi.KVM_GET_DIRTY_LOG,
                      uapi.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(bitmap)))
        return [i for i in range(npages) if bitmap.raw[i >> 3] >> (i & 7) & 1]

    # ---- running
    def kvm_run(self):
        """One KVM_RUN: the exit as a record (console OUTs included), or the errno."""
        try:
            self.sc.ioctl(self.vcpu_fd, uapi.KVM_RUN, 0)
        except OSError as exc:
            return {"errno": errno.errorcode[exc.errno], "reason": self._reason(),
                    "rip": self.regs("rip")["rip"]}
        run = self.run
        rec = {"reason": self._reason(), "rip": self.regs("rip")["rip"],
               "ready": run.ready_for_interrupt_injection, "if": run.if_flag}
        if run.exit_reason == uapi.KVM_EXIT_IO:
            io = run.io
            rec.update(dir="out" if io.direction else "in", port=hex(io.port), size=io.size, count=io.count)
            at, n = io.data_offset, io.size * io.count
            if io.direction:
                rec["data"] = bytes(self.run_buf[at:at + n]).hex()
            else:
                self.run_buf[at:at + n] = rawvmm.in_answer(io.port, io.size) * io.count
        elif run.exit_reason == uapi.KVM_EXIT_MMIO:
            m = run.mmio
            rec.update(addr=hex(m.phys_addr), len=m.len, write=bool(m.is_write))
            if m.is_write:
                rec["data"] = bytes(m.data[:m.len]).hex()
            else:
                ctypes.memmove(m.data, rawvmm.mmio_answer(m.phys_addr, m.len), m.len)
        elif run.exit_reason == uapi.KVM_EXIT_INTERNAL_ERROR:
            rec.update(suberror=run.internal.suberror, ndata=run.internal.ndata)
        return rec

    def _reason(self):
        return uapi.EXIT_REASON_NAMES.get(self.run.exit_reason, str(self.run.exit_reason))

    def step(self):
        """KVM_RUN until an exit other than a console byte; log and return that exit."""
        for _ in range(200):
            rec = self.kvm_run()
            if rec.get("port") == hex(COM1) and rec.get("dir") == "out" and rec["size"] == 1:
                self.console += bytes.fromhex(rec["data"]).decode("latin-1")
                continue
            self.log.append(rec)
            return rec
        raise AssertionError("guest printed too much")

    def until(self, reason, limit=40):
        """Steps until an exit named ``reason``; return it."""
        for _ in range(limit):
            rec = self.step()
            if rec["reason"] == reason:
                return rec
        raise AssertionError(f"no {reason} exit: {self.log[-5:]}")

    def result(self, *reg_names, **extra):
        return dict(log=self.log, console=self.console, regs=self.regs(*reg_names), **extra)


def machine(factory):
    """Decorator: run a scenario with a Machine it builds and always close the VM."""
    @functools.wraps(factory)
    def scenario(sc):
        machines = []

        def make(*a, **kw):
            machines.append(Machine(sc, *a, **kw))
            return machines[-1]
        try:
            return factory(make)
        finally:
            for m in machines:
                m.close()
    return scenario


# Event delivery that needs a page KVM has not mapped yet loses the event in kvmpy (see
# test_soft_injection_into_unmapped_stack), so the interrupt scenarios touch the stack and
# GDT pages first.
TOUCH_STACK = " movw $0, 0x6ffe\n movw 0x500, %ax\n"


def create_irqchip(m):
    """``vm_setup`` for a VM with the in-kernel irqchip (KVM_CREATE_IRQCHIP)."""
    m.sc.ioctl(m.vm_fd, uapi.KVM_CREATE_IRQCHIP, 0)


def create_irqchip_and_pit(m):
    """``vm_setup``: KVM_CREATE_IRQCHIP, then KVM_CREATE_PIT2 with the speaker port in the kernel."""
    create_irqchip(m)
    m.sc.ioctl(m.vm_fd, uapi.KVM_CREATE_PIT2, uapi.kvm_pit_config(flags=uapi.KVM_PIT_SPEAKER_DUMMY))
