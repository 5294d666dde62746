"""A VM whose guest memory the VMM changes under it: munmap, mprotect, memslot delete/move.

Built through raw ioctls (``rawvmm``'s system-call tables), so one scenario runs on kvmpy's
soft kernel and on the host's /dev/kvm.  Memory is one anonymous reservation::

    guard | slot 0: code, 64 KiB at gpa 0 | guard | slot 1: data, 64 KiB at gpa 0x20000 | guard

The guard pages hold a canary that no access may change (a change is a write outside every
slot).  The guest runs in real mode: DS = 0x2000 addresses slot 1.  ``guest(ops)`` assembles a
program from a list of ``("w", offset, byte)`` (store), ``("r", offset)`` (load into AL),
``("out",)`` (OUT to port 0x80: an exit to the VMM, which may then change memory),
``("loop", offset, count)`` (store to ``offset`` ``count`` times, incrementing the byte),
``("spin", offset)`` (the same, for ever: only an exit to the VMM stops it) and ends with OUT
to port 0xf4 and HLT.

Outcomes are what the host's KVM gives for data in memory that is not there: an MMIO exit
(kvm_pvm, and kvmpy) or EFAULT (KVM with EPT/NPT: KVM_EXIT_MEMORY_FAULT); an instruction
fetch from it ends in INTERNAL_ERROR (emulation failure) or EFAULT.
"""

import ctypes
import errno
import gc

from kvmpy.uapi import kvm as uapi

PAGE = 0x1000
SLOT_SIZE = 0x10000
CODE_GPA, DATA_GPA, MOVED_GPA = 0x0, 0x20000, 0x40000
ENTRY = 0x7C00
PROGRESS_PORT, DONE_PORT = 0x80, 0xF4
CANARY = bytes(range(0x5A, 0x5A + 16)) * (PAGE // 16)
PROT_NONE, PROT_READ, PROT_RW = 0, 1, 3
CPUID_MAX_ENTRIES = 256

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_PRIVATE_ANON, MAP_FIXED = 0x22, 0x10


def guest(ops) -> bytes:
    """Real-mode machine code for ``ops`` (see the module doc)."""
    code = bytearray(b"\xb8\x00\x20\x8e\xd8")                    # mov ax, 0x2000; mov ds, ax
    for op in ops:
        if op[0] == "w":
            code += b"\xc6\x06" + op[1].to_bytes(2, "little") + bytes([op[2]])   # mov byte [o], b
        elif op[0] == "r":
            code += b"\xa0" + op[1].to_bytes(2, "little")                        # mov al, [o]
        elif op[0] == "out":
            code += b"\xe6" + bytes([PROGRESS_PORT])                              # out 0x80, al
        elif op[0] == "loop":
            code += b"\xb9" + op[2].to_bytes(2, "little")                        # mov cx, count
            code += b"\xfe\x06" + op[1].to_bytes(2, "little")                    # inc byte [o]
            code += b"\xe2\xfa"                                                   # loop back
        elif op[0] == "spin":
            code += b"\xfe\x06" + op[1].to_bytes(2, "little") + b"\xeb\xfa"         # inc [o]; jmp back
        else:
            raise ValueError(op)
    return bytes(code + bytes([0xE6, DONE_PORT, 0xF4]))


class MemoryVm:
    """One VM with one vCPU on backend ``sc``, code in slot 0, data in slot 1, guard pages."""

    def __init__(self, sc, code: bytes, data_mapped=True):
        self.sc = sc
        self.size = 5 * PAGE + 2 * SLOT_SIZE
        self.base = _libc.mmap(None, self.size, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
        self.code_addr = self.base + PAGE
        self.data_addr = self.code_addr + SLOT_SIZE + PAGE
        self.guards = [self.base, self.code_addr + SLOT_SIZE, self.data_addr + SLOT_SIZE]
        for g in self.guards:
            ctypes.memmove(g, CANARY, PAGE)
        ctypes.memmove(self.code_addr + ENTRY, code, len(code))
        self.data_mapped = self.code_mapped = True
        if not data_mapped:
            self.munmap_data()
        self.kvm = sc.open("/dev/kvm")
        self.vm = sc.ioctl(self.kvm, uapi.KVM_CREATE_VM, 0)
        self.set_slot(0, CODE_GPA, self.code_addr)
        self.set_slot(1, DATA_GPA, self.data_addr)
        self.vcpu = sc.ioctl(self.vm, uapi.KVM_CREATE_VCPU, 0)
        self.run_buf = sc.mmap(self.vcpu, sc.ioctl(self.kvm, uapi.KVM_GET_VCPU_MMAP_SIZE, 0))
        self.run = uapi.kvm_run.from_buffer(self.run_buf)
        cpuid = uapi.with_entries(uapi.kvm_cpuid2, CPUID_MAX_ENTRIES)()
        cpuid.nent = CPUID_MAX_ENTRIES
        sc.ioctl(self.kvm, uapi.KVM_GET_SUPPORTED_CPUID, cpuid)
        sc.ioctl(self.vcpu, uapi.KVM_SET_CPUID2, cpuid)
        sregs = uapi.kvm_sregs()
        sc.ioctl(self.vcpu, uapi.KVM_GET_SREGS, sregs)
        sregs.cs.base = sregs.cs.selector = 0
        sc.ioctl(self.vcpu, uapi.KVM_SET_SREGS, sregs)
        sc.ioctl(self.vcpu, uapi.KVM_SET_REGS, uapi.kvm_regs(rip=ENTRY, rflags=0x2))

    # ---------------------------------------------------------------- the VMM's memory changes
    def set_slot(self, slot, gpa, addr, size=SLOT_SIZE):
        region = uapi.kvm_userspace_memory_region(slot=slot, guest_phys_addr=gpa, memory_size=size,
                                                  userspace_addr=addr)
        self.sc.ioctl(self.vm, uapi.KVM_SET_USER_MEMORY_REGION, region)

    def delete_data_slot(self):
        self.set_slot(1, DATA_GPA, self.data_addr, 0)

    def move_data_slot(self, gpa=MOVED_GPA):
        self.set_slot(1, gpa, self.data_addr)

    def munmap_data(self):
        self.data_mapped = False
        _libc.munmap(self.data_addr, SLOT_SIZE)

    def munmap_code(self):
        self.code_mapped = False
        _libc.munmap(self.code_addr, SLOT_SIZE)

    def remap_data(self):
        """Fresh zero pages at the data slot's address (MAP_FIXED)."""
        _libc.mmap(self.data_addr, SLOT_SIZE, PROT_RW, MAP_PRIVATE_ANON | MAP_FIXED, -1, 0)
        self.data_mapped = True

    def mprotect_data(self, prot):
        _libc.mprotect(self.data_addr, SLOT_SIZE, prot)

    def data(self) -> bytes:
        """The data slot's memory as the VMM sees it (readable only while mapped readable)."""
        return ctypes.string_at(self.data_addr, SLOT_SIZE)

    def canaries_intact(self) -> bool:
        return all(ctypes.string_at(g, PAGE) == CANARY for g in self.guards)

    # ---------------------------------------------------------------- running
    def run_once(self) -> str:
        """One KVM_RUN: the exit as a short string (``EFAULT`` etc. for an error return)."""
        try:
            self.sc.ioctl(self.vcpu, uapi.KVM_RUN, 0)
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
        run = self.run
        reason = run.exit_reason
        if reason == uapi.KVM_EXIT_IO:
            return "IO %#x" % run.io.port
        if reason == uapi.KVM_EXIT_MMIO:
            if not run.mmio.is_write:
                run.mmio.data[0] = 0xFF
            return "MMIO %s %#x" % ("w" if run.mmio.is_write else "r", run.mmio.phys_addr)
        if reason == uapi.KVM_EXIT_INTERNAL_ERROR:
            return "INTERNAL_ERROR %d" % run.internal.suberror
        return uapi.EXIT_REASON_NAMES.get(reason, str(reason))

    def guest_insns(self) -> int:
        """Instructions the guest retired (kvmpy's processor counts them; 0 on the host)."""
        from kvmpy.kernel import fs
        f = fs.fdget(self.vcpu) if getattr(self.sc, "__name__", "") == "kvmpy.syscalls" else None
        return f.private_data.arch.cpu.icount if f is not None else 0

    def close(self):
        self.run = None
        gc.collect()                # ctypes views of kvm_run left in frames of the vCPU thread
        try:
            self.run_buf.close()
        except BufferError:         # a view still exported after a threaded run: left to exit
            pass
        for fd in (self.vcpu, self.vm, self.kvm):
            self.sc.close(fd)
        # only what is still ours: a hole the test unmapped may hold someone else's mapping now
        for addr, size, ours in ((self.base, PAGE, True), (self.code_addr, SLOT_SIZE, self.code_mapped),
                                 (self.guards[1], PAGE, True), (self.data_addr, SLOT_SIZE, self.data_mapped),
                                 (self.guards[2], PAGE, True)):
            if ours:
                _libc.munmap(addr, size)


def final(outcome: str) -> bool:
    """An exit after which the guest cannot go on (the scenario's run ends)."""
    return not (outcome.startswith("IO 0x80") or outcome.startswith("MMIO"))


def host_like(outcome: str) -> bool:
    """An answer the host's KVM gives in these scenarios."""
    return (outcome.startswith(("IO ", "MMIO ", "INTERNAL_ERROR 1")) or outcome in ("HLT", "EFAULT"))
