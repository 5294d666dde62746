"""Random guests for the reliability fuzzers: a VM with canary-guarded memory, built through
raw ioctls so that the same guest runs on kvmpy's soft kernel and on the host's /dev/kvm.

Memory is one anonymous mapping: a guard page, slot 0 (640 KiB at guest-physical 0), a guard
page, slot 1 (256 KiB at 1 MiB), a guard page.  Everything else is an MMIO hole (the VGA
window 0xa0000-0xfffff among it, where a real-mode stack can point).  The guard pages hold a
canary pattern that no guest access may change: a changed byte is memory kvmpy wrote outside
every memslot.

A guest is a random mix (``GuestGenerator``) of instructions that matter to the run loop --
exceptions, INT n, IRET, far jumps, task switches through the busy TSS, loads of SS, CR0/CR3,
LGDT/LIDT, stack pointers into MMIO, port and MMIO accesses, tight loops, REP strings -- and
of raw random bytes, with random descriptor tables, IDT/IVT entries and page tables, started
in one of four modes: real, 32-bit protected, 32-bit paged (PSE), long mode.
"""

import ctypes
import errno
import mmap
import random
import struct
import threading

from kvmpy.uapi import kvm as uapi

MODES = ("real", "prot32", "paged32", "long")
PAGE = 0x1000
SLOTS = ((0, 0x0, 0xA0000), (1, 0x100000, 0x40000))     # (slot, guest-physical, size)
CANARY = bytes(range(0xA5, 0xA5 + 16)) * (PAGE // 16)
GDT, TSS, IDT, PD32, PML4, PDPT, PD64 = 0x500, 0x600, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000
CODE, CODE_SIZE = 0x7000, 0x1000
MMIO_ANSWER = 0xFF
CPUID_MAX_ENTRIES = 256
SEL_CODE32, SEL_DATA32, SEL_CODE64, SEL_TSS, SEL_DATA16 = 0x08, 0x10, 0x18, 0x20, 0x38
# values a register or an immediate takes: RAM, MMIO holes, edges
INTERESTING = (0, 1, 0x7C00, CODE, CODE + 0x800, 0x9FFF0, 0xA0000, 0xB8000, 0xFFFF0, 0x100000, 0x13FFF0,
               0x140000, 0xFFFFF000, 0xFFFFFFFF, 0x80000000, SEL_CODE32, SEL_DATA32, SEL_TSS, 0x7FFF)


class GuestVm:
    """A VM with one vCPU on the backend ``sc`` (rawvmm's system-call tables)."""

    def __init__(self, sc):
        self.sc = sc
        self.fds = []
        self.kvm = self._fd(sc.open("/dev/kvm"))
        self.vm = self._fd(sc.ioctl(self.kvm, uapi.KVM_CREATE_VM, 0))
        total = PAGE + sum(size + PAGE for _, _, size in SLOTS)
        self.mem = mmap.mmap(-1, total, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
        self.guards, self.slot_offset = [0], {}
        off = PAGE
        for slot, gpa, size in SLOTS:
            self.slot_offset[gpa] = off
            region = uapi.kvm_userspace_memory_region(slot=slot, flags=0, guest_phys_addr=gpa,
                                                      memory_size=size, userspace_addr=self.base + off)
            sc.ioctl(self.vm, uapi.KVM_SET_USER_MEMORY_REGION, region)
            off += size
            self.guards.append(off)
            off += PAGE
        for g in self.guards:
            self.mem[g:g + PAGE] = CANARY
        self.vcpu = self._fd(sc.ioctl(self.vm, uapi.KVM_CREATE_VCPU, 0))
        self.run_buf = sc.mmap(self.vcpu, sc.ioctl(self.kvm, uapi.KVM_GET_VCPU_MMAP_SIZE, 0))
        self.run = uapi.kvm_run.from_buffer(self.run_buf)
        cpuid = uapi.with_entries(uapi.kvm_cpuid2, CPUID_MAX_ENTRIES)()
        cpuid.nent = CPUID_MAX_ENTRIES
        sc.ioctl(self.kvm, uapi.KVM_GET_SUPPORTED_CPUID, cpuid)
        sc.ioctl(self.vcpu, uapi.KVM_SET_CPUID2, cpuid)

    def _fd(self, fd):
        self.fds.append(fd)
        return fd

    def write(self, gpa, data):
        """Copy ``data`` into guest RAM at ``gpa`` (clipped to the slot that holds it)."""
        for _, start, size in SLOTS:
            if start <= gpa < start + size:
                off = self.slot_offset[start] + gpa - start
                n = min(len(data), start + size - gpa)
                self.mem[off:off + n] = data[:n]
                return

    def canaries_intact(self) -> bool:
        return all(self.mem[g:g + PAGE] == CANARY for g in self.guards)

    def ioctl(self, request, arg=0):
        return self.sc.ioctl(self.vcpu, request, arg)

    def close(self):
        del self.run
        self.run_buf.close()
        for fd in reversed(self.fds):
            self.sc.close(fd)
        self.mem.close()


# ------------------------------------------------------------------ descriptors and tables
def _seg(selector, base=0, limit=0xFFFFFFFF, type_=3, s=1, dpl=0, db=1, l_=0, g=1, present=1):
    return dict(selector=selector, base=base, limit=limit, type=type_, s=s, dpl=dpl, db=db, l=l_, g=g,
                present=present, avl=0, unusable=0 if present else 1)


def _desc(base, limit, access, flags):
    return struct.pack("<Q", (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | access << 40 | (limit >> 16 & 0xF) << 48
                       | flags << 52 | (base >> 24 & 0xFF) << 56)


def _gdt(rng):
    entries = [bytes(8), _desc(0, 0xFFFFF, 0x9B, 0xC), _desc(0, 0xFFFFF, 0x93, 0xC), _desc(0, 0xFFFFF, 0x9B, 0xA),
               _desc(TSS, 0x67, 0x8B, 0), bytes(8), rng.randbytes(8), _desc(0, 0xFFFF, 0x93, 0)]
    return b"".join(entries)


def _idt(rng, long_mode):
    size = 16 if long_mode else 8
    out = bytearray()
    for _ in range(256):
        kind = rng.random()
        target = rng.choice((CODE + rng.randrange(CODE_SIZE), rng.choice(INTERESTING), rng.getrandbits(32)))
        sel = SEL_CODE64 if long_mode else SEL_CODE32
        if kind < 0.08:
            gate = (SEL_TSS << 16) | (0x85 << 40)                     # task gate to the (busy) TSS
        elif kind < 0.12:
            gate = rng.getrandbits(64)
        elif kind < 0.15:
            gate = 0                                                   # not present
        else:
            type_ = rng.choice((0x8E, 0x8F, 0xEE))
            gate = (target & 0xFFFF) | (rng.choice((sel, sel, SEL_DATA32, 0)) << 16) | type_ << 40 | \
                (target >> 16 & 0xFFFF) << 48
        out += struct.pack("<Q", gate)
        if long_mode:
            out += struct.pack("<Q", 0)
    assert len(out) == 256 * size
    return bytes(out)


def _paging(rng, vm, mode):
    """Identity maps of the low memory, with random holes in them."""
    if mode == "paged32":
        pd = bytearray()
        for i in range(1024):
            pde = (i << 22) | 0x87 if i < 4 or i == 1023 else (rng.getrandbits(32) if rng.random() < 0.1 else 0)
            pd += struct.pack("<I", pde & 0xFFFFFFFF)
        vm.write(PD32, bytes(pd))
    elif mode == "long":
        vm.write(PML4, struct.pack("<Q", PDPT | 7))
        vm.write(PDPT, struct.pack("<QQQQ", PD64 | 7, 0, 0, rng.getrandbits(64) if rng.random() < 0.2 else 0))
        pd = b"".join(struct.pack("<Q", (i << 21) | 0x87 if i < 8 else 0) for i in range(512))
        vm.write(PD64, pd)


def set_state(vm, mode, rng):
    """Tables in guest RAM, then SREGS and REGS for ``mode``."""
    long_mode = mode == "long"
    vm.write(GDT, _gdt(rng))
    vm.write(TSS, rng.randbytes(0x68))
    vm.write(IDT, _idt(rng, long_mode))
    vm.write(0, b"".join(struct.pack("<HH", CODE + rng.randrange(CODE_SIZE) if rng.random() < 0.8
                                      else rng.getrandbits(16), 0) for _ in range(256)) if mode == "real"
             else struct.pack("<I", 0))
    _paging(rng, vm, mode)
    sregs = uapi.kvm_sregs()
    vm.ioctl(uapi.KVM_GET_SREGS, sregs)
    if mode == "real":
        segs = {n: _seg(0, 0, 0xFFFF, 3, db=0, g=0) for n in ("ds", "es", "fs", "gs", "ss")}
        segs["cs"] = _seg(0, 0, 0xFFFF, 0xB, db=0, g=0)
        cr0, cr3, cr4, efer = 0x60000010, 0, 0, 0
    else:
        data = _seg(SEL_DATA32)
        segs = {n: dict(data) for n in ("ds", "es", "fs", "gs", "ss")}
        segs["cs"] = _seg(SEL_CODE64, type_=0xB, db=0, l_=1) if long_mode else _seg(SEL_CODE32, type_=0xB)
        cr0 = 0x80000011 if mode in ("paged32", "long") else 0x11
        cr3 = {"paged32": PD32, "long": PML4}.get(mode, 0)
        cr4 = {"paged32": 0x10, "long": 0x20}.get(mode, 0)
        efer = 0x500 if long_mode else 0
    for name, fields in segs.items():
        seg = getattr(sregs, name)
        for k, v in fields.items():
            setattr(seg, k, v)
    sregs.tr.selector, sregs.tr.base, sregs.tr.limit, sregs.tr.type = SEL_TSS, TSS, 0x67, 0xB
    sregs.tr.present, sregs.tr.s, sregs.tr.unusable, sregs.tr.g = 1, 0, 0, 0
    sregs.ldt.unusable, sregs.ldt.present = 1, 0
    sregs.gdt.base, sregs.gdt.limit = GDT, 0x3F
    sregs.idt.base, sregs.idt.limit = (0, 0x3FF) if mode == "real" else (IDT, 0xFFF if long_mode else 0x7FF)
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = cr0, cr3, cr4, efer
    vm.ioctl(uapi.KVM_SET_SREGS, sregs)
    regs = uapi.kvm_regs()
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp"):
        setattr(regs, name, rng.choice(INTERESTING) if rng.random() < 0.7 else rng.getrandbits(32))
    regs.rsp = rng.choice((0x9FF00, 0x7000, 0xA0100, 0xB8000, 0x13FF00, 0x200000, 0))
    regs.rip, regs.rflags = CODE, 0x2 | (0x200 if rng.random() < 0.3 else 0)
    vm.ioctl(uapi.KVM_SET_REGS, regs)


# ------------------------------------------------------------------ code
class GuestGenerator:
    """Code for the guest's code page: a random mix of pieces (see the module docstring)."""

    def __init__(self, rng, mode):
        self.rng, self.mode = rng, mode
        self.imm = 2 if mode == "real" else 4

    def immediate(self):
        v = self.rng.choice(INTERESTING) if self.rng.random() < 0.8 else self.rng.getrandbits(32)
        return (v & ((1 << (8 * self.imm)) - 1)).to_bytes(self.imm, "little")

    def piece(self):
        r = self.rng
        simple = (b"\x90", b"\x01\xd8", b"\x31\xc0", b"\x29\xc8", b"\xf7\xe3", b"\xd1\xe0", b"\x0f\x0b", b"\xcc",
                  b"\xce", b"\xf4", b"\xee", b"\xec", b"\x6c", b"\x0f\xa2", b"\x0f\x32", b"\x0f\x30", b"\x0f\x31",
                  b"\x8e\xd0", b"\x8e\xd8", b"\x8e\xc0", b"\xf3\xa4", b"\xf3\xab", b"\xf3\xa6", b"\xf3\x6e",
                  b"\x9c", b"\x9d", b"\xcf", b"\xc3", b"\xcb", b"\xfa", b"\xfb", b"\x0f\x01\x17", b"\x0f\x01\x1f",
                  b"\x0f\x00\xd8", b"\x0f\x00\xd0", b"\x0f\x22\xc0", b"\x0f\x22\xd8", b"\x0f\x22\xe0",
                  b"\x0f\x20\xc0", b"\x0f\x01\x38", b"\x8b\x07", b"\x89\x07", b"\xff\xe0", b"\xff\xd0",
                  b"\x50", b"\x5b", b"\x53", b"\x58", b"\xe2\xfe", b"\xeb\xfe", b"\x0f\xae\xf8")
        k = r.random()
        if k < 0.45:
            return r.choice(simple)
        if k < 0.65:
            return bytes([0xB8 + r.randrange(8)]) + self.immediate()          # mov reg, imm
        if k < 0.70:
            return bytes([0xCD, r.randrange(256)])                             # int n
        if k < 0.75:
            return bytes([0xE6 if r.random() < 0.5 else 0xE4, r.randrange(256)])
        if k < 0.80 and self.mode != "long":
            sel = r.choice((0, SEL_CODE32, SEL_DATA32, SEL_TSS, 0x28, 0x30, 0xE000, r.getrandbits(16)))
            off = r.choice((CODE, 0, 0xFFF0, r.getrandbits(16)))
            return b"\xea" + off.to_bytes(self.imm, "little") + sel.to_bytes(2, "little")
        if k < 0.85:
            return bytes([0xEB, r.randrange(256)])                             # jmp short
        if k < 0.90:                                                           # a counted loop
            return b"\xb9" + (r.randrange(1, 3000)).to_bytes(self.imm, "little") + b"\x01\xd8\xe2\xfc"
        return r.randbytes(r.randrange(1, 8))

    def code(self):
        out = bytearray()
        while len(out) < CODE_SIZE - 16:
            out += self.piece()
        return bytes(out[:CODE_SIZE])


#: the code of a control guest: the random guest's tables and registers, but ``jmp $``
CONTROL_CODE = b"\xeb\xfe"


def build(vm, mode, rng, control=False):
    """A random guest of ``mode`` in ``vm``: code page, tables, registers; with ``control``,
    the same tables and registers with ``CONTROL_CODE`` at the entry point."""
    code = GuestGenerator(rng, mode).code()
    vm.write(CODE, CONTROL_CODE if control else code)
    vm.write(0x9000, rng.randbytes(0x1000))
    set_state(vm, mode, rng)


#: where the handler of every vector is in a fixed guest (``build_fixed``): ``hlt``
HANDLER = 0x8000


def _gates_to(handler, mode, task_gates=False):
    """An IVT (real mode) or IDT whose every entry leads to ``handler`` (or, with
    ``task_gates``, is a task gate to the guest's own, busy, TSS)."""
    if mode == "real":
        return struct.pack("<HH", handler, 0) * 256
    long_mode = mode == "long"
    sel = SEL_CODE64 if long_mode else SEL_CODE32
    gate = struct.pack("<Q", (SEL_TSS << 16 | 0x85 << 40) if task_gates else
                       (handler & 0xFFFF) | sel << 16 | 0x8E << 40 | (handler >> 16) << 48)
    return (gate + (bytes(8) if long_mode else b"")) * 256


def build_fixed(vm, mode, code, idt_base=None, gdt_base=None, task_gates=False):
    """A guest of ``mode`` with sound tables (every vector handled by ``hlt`` at HANDLER, the
    stack at 0x7000) running ``code``: the frame of a minimal reproducer.  ``idt_base`` and
    ``gdt_base`` move the IDT/IVT or GDT base (into an MMIO hole, say); ``task_gates`` makes
    every IDT entry a task gate to the busy TSS."""
    set_state(vm, mode, random.Random(0))
    vm.write(0 if mode == "real" else IDT, _gates_to(HANDLER, mode, task_gates))
    vm.write(GDT + 0x30, bytes(8))              # the random GDT entry
    vm.write(HANDLER, b"\xf4")
    vm.write(CODE, code)
    vm.ioctl(uapi.KVM_SET_REGS, uapi.kvm_regs(rip=CODE, rflags=2, rsp=0x7000))
    if idt_base is not None or gdt_base is not None:
        sregs = uapi.kvm_sregs()
        vm.ioctl(uapi.KVM_GET_SREGS, sregs)
        if idt_base is not None:
            sregs.idt.base = idt_base
        if gdt_base is not None:
            sregs.gdt.base = gdt_base
        vm.ioctl(uapi.KVM_SET_SREGS, sregs)


def run_fixed(sc, mode, code, memory=(), frame=0, bound=20.0, max_exits=50, **options):
    """Build a ``build_fixed`` guest on backend ``sc`` (``memory``: (gpa, bytes) to write as
    well) and run it, serving IO and MMIO exits, until another exit; immediate_exit ends a
    run still going after ``bound`` seconds.  Returns (outcome, RIP, the ``frame`` bytes at
    the stack pointer)."""
    vm = GuestVm(sc)
    timer = threading.Timer(bound, lambda: setattr(vm.run, "immediate_exit", 1))
    try:
        build_fixed(vm, mode, code, **options)
        for gpa, data in memory:
            vm.write(gpa, data)
        timer.start()
        outcome = None
        for _ in range(max_exits):
            try:
                vm.ioctl(uapi.KVM_RUN, 0)
            except OSError as e:
                outcome = errno_class(e)
                break
            outcome = serve_exit(vm)
            if outcome is not None:
                break
        regs = uapi.kvm_regs()
        vm.ioctl(uapi.KVM_GET_REGS, regs)
        at = vm.slot_offset[0] + regs.rsp
        return outcome, regs.rip, bytes(vm.mem[at:at + frame]) if frame else b""
    finally:
        timer.cancel()
        vm.close()


# ------------------------------------------------------------------ exits
TERMINAL = {uapi.KVM_EXIT_HLT: "hlt", uapi.KVM_EXIT_SHUTDOWN: "shutdown", uapi.KVM_EXIT_INTERNAL_ERROR: "internal-error",
            uapi.KVM_EXIT_FAIL_ENTRY: "fail-entry"}


def serve_exit(vm):
    """Answer an IO or MMIO exit; return the run's outcome class if the exit ends it."""
    run = vm.run
    reason = run.exit_reason
    if reason == uapi.KVM_EXIT_IO:
        if run.io.direction == uapi.KVM_EXIT_IO_IN:
            n = run.io.size * run.io.count
            vm.run_buf[run.io.data_offset:run.io.data_offset + n] = bytes([MMIO_ANSWER]) * n
        return None
    if reason == uapi.KVM_EXIT_MMIO:
        if not run.mmio.is_write:
            ctypes.memmove(run.mmio.data, bytes([MMIO_ANSWER]) * 8, 8)
        return None
    if reason == uapi.KVM_EXIT_INTERNAL_ERROR:
        return "internal-error/%d" % run.internal.suberror
    return TERMINAL.get(reason, uapi.EXIT_REASON_NAMES.get(reason, str(reason)))


def errno_class(exc):
    return "errno-" + errno.errorcode.get(exc.errno, str(exc.errno))


def seeded(seed, index):
    """The generator of guest ``index`` of a run with ``seed`` (a guest is reproducible alone)."""
    return random.Random("%d:%d" % (seed, index))
