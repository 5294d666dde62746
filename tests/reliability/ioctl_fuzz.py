"""Differential fuzzer of the ioctl surface: kvmpy's /dev/kvm against the host's.

    python -m tests.reliability.ioctl_fuzz --count N --seed S [--no-host]

A seed gives one sequence of operations (``generate``), independent of any result: ioctls
with request numbers drawn from the KVM ioctls kvmpy implements, from the rest of
``kvmpy.uapi``, from those with their direction or size bits changed, from random numbers in
the KVMIO (0xAE) space and from the VFS's generic ioctls; arguments that are scalars,
pointers (NULL, unmapped, kernel, non-canonical, near the end of a buffer followed by a guard
page) or buffers of odd sizes holding zeros, garbage or nearly valid structs; descriptors of
every kvm kind, closed ones, ones closed behind kvmpy's back and ones of the wrong kind;
memslot changes; mmap of each descriptor; and now and then a KVM_RUN of a two-instruction
guest.  Each backend runs the sequence in its own child process (``--worker``), which
prints one outcome per operation; the parent checks that

* no child crashed or hung (a crash names the operation it died in),
* no Python exception other than OSError escaped kvmpy, unless the host's own wrappers
  (fcntl, mmap) raise the same type for the same call,
* kvmpy's outcome (success or errno) equals the host's, except for the reasons in
  ``explain``.

Pointers never point at memory the process uses: a kernel that writes through one (KVM_GET_*
into the scratch buffer, KVM_GET_DIRTY_LOG's bitmap) writes only fuzz-owned pages, and
memslots only ever map the fuzz's guest RAM or pages nobody can touch.  Known ioctls kvmpy
does not implement run on kvmpy only (checked for escapes and crashes), so that the host's
VM never gets state kvmpy's lacks.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import mmap
import os
import random
import subprocess
import sys
import time

from kvmpy import uapi as K

PAGE = 4096
RAM_PAGES = 64
SCRATCH_PAGES = 16
RESET_EVERY = 100
CLOSED_FD = 1000                          # a number no descriptor of the workers ever has

FIONBIO, FIOASYNC, FIOQSIZE, FIGETBSZ = 0x5421, 0x5452, 0x5460, 0x0002
FIOCLEX, FIONCLEX, FIONREAD, FS_IOC_FIEMAP = 0x5451, 0x5450, 0x541B, 0xC020660B
GENERIC = (FIONBIO, FIOASYNC, FIOQSIZE, FIGETBSZ, FIOCLEX, FIONCLEX, FIONREAD, FS_IOC_FIEMAP)

TARGETS = ("kvm", "vm", "vcpu", "vm2", "vcpu2", "stats", "devnull", "memfd", "closed")
KVM_ROLES = ("kvm", "vm", "vcpu", "vm2", "vcpu2", "stats")
# A value that equals one of these is the generator's own pointer, resolved by each worker.
POINTERS = ("scratch", "scratch_end", "nowhere", "ram")
SCALARS = (0, 1, 2, 3, 7, 4095, 4096, 4097, 32763, 32764, 0x10000, 0xFFFFD000, 0xFFFFD001,
           0xFFFFF000, (1 << 31) - 1, -1, -4096, (1 << 32) - 1, 1 << 47, (1 << 63), (1 << 64) - 1)
BAD_POINTERS = (0, 1, 0xFFF, 0xFFFF800000000000, 0x0000900000000000, (1 << 64) - 8)
RAM_OFFSET_OF_CODE = 0x1000
GUEST_CODE = bytes([0xE6, 0x10, 0xF4])            # out 0x10, al; hlt
HLT_STUB = 0x500                                   # every IVT vector points here: hlt

KVM_REQUESTS = {n: v for n, v in vars(K).items()
                if n.startswith("KVM_") and isinstance(v, int) and 0 <= v <= 0xFFFFFFFF
                and v >> 8 & 0xFF == K.KVMIO}


def implemented() -> frozenset:
    """The ioctls kvmpy answers on some descriptor (the rest of kvmpy.uapi is kvmpy-only)."""
    # kvm_main imports every module that registers ioctl handlers (run, i8254, kvmclock...),
    # so the parent and the workers draw from the same list whatever they imported before
    from kvmpy.kernel import kvm_main  # noqa: F401
    from kvmpy.kernel.x86 import x86
    names = ("GET_API_VERSION", "CREATE_VM", "CHECK_EXTENSION", "GET_VCPU_MMAP_SIZE",
             "GET_MSR_INDEX_LIST", "GET_MSR_FEATURE_INDEX_LIST", "GET_SUPPORTED_CPUID", "GET_MSRS",
             "CREATE_VCPU", "SET_USER_MEMORY_REGION", "GET_DIRTY_LOG", "GET_STATS_FD",
             "SET_TSS_ADDR", "SET_IDENTITY_MAP_ADDR", "SET_BOOT_CPU_ID", "RUN", "SET_SIGNAL_MASK")
    cmds = {getattr(K, "KVM_" + n) for n in names}
    return frozenset(cmds | set(x86.vcpu_ioctl_handlers) | set(x86.vm_ioctl_handlers))


def _ioc_size(cmd: int) -> int:
    return cmd >> 16 & 0x3FFF


# --------------------------------------------------------------------------------------
# Generation (depends on the seed only)
# --------------------------------------------------------------------------------------
class Generator:
    def __init__(self, seed: int):
        self.r = random.Random(seed)
        impl = implemented()
        self.impl = sorted(c for c in impl if c != K.KVM_RUN)
        self.unimpl = sorted(set(KVM_REQUESTS.values()) - impl)
        self.known = frozenset(KVM_REQUESTS.values())
        self.slots = set()

    def request(self):
        """(cmd, host): host is False for a known ioctl kvmpy does not implement."""
        r = self.r
        p = r.random()
        if p < 0.50:
            cmd = r.choice(self.impl)
        elif p < 0.60:
            return r.choice(self.unimpl), False
        elif p < 0.75:
            cmd = r.choice(self.impl)
            if r.random() < 0.5:
                cmd ^= r.randrange(1, 4) << 30                   # direction bits
            else:
                cmd = cmd & ~(0x3FFF << 16) | r.randrange(0x4000) << 16
        elif p < 0.92:
            cmd = r.randrange(4) << 30 | r.choice((0, 4, 8, 16, r.randrange(0x4000))) << 16 \
                | K.KVMIO << 8 | r.randrange(256)
        else:
            cmd = r.choice(GENERIC)
        cmd &= 0xFFFFFFFF
        if cmd == K.KVM_RUN:                    # only ever with the run operation's guest
            cmd = K.KVM_GET_API_VERSION
        return cmd, cmd in self.impl or cmd not in self.known

    def pointer(self):
        r = self.r
        p = r.random()
        if p < 0.5:
            return ["scratch", r.choice((0, 8, r.randrange(SCRATCH_PAGES * PAGE)))]
        if p < 0.7:
            return ["scratch_end", r.choice((1, 4, 8, 12, 64, 100, r.randrange(1, 1024)))]
        if p < 0.8:
            return ["nowhere", r.randrange(0, PAGE * 4, 8)]
        return r.choice(BAD_POINTERS)

    def scalar(self):
        r = self.r
        return r.choice(SCALARS) if r.random() < 0.7 else r.getrandbits(r.choice((8, 16, 32, 64)))

    def region(self):
        """A kvm_userspace_memory_region, nearly valid: only the fuzz's RAM or unusable pages."""
        r = self.r
        slot = r.randrange(4) if r.random() < 0.8 else r.choice((32763, 32764, 0xFFFF, 1 << 16, r.getrandbits(32)))
        pages = r.choice((0, 1, 16, RAM_PAGES, 1 << 18, 1 << 38))
        size = pages * PAGE if r.random() < 0.9 else r.randrange(1, 1 << 20)
        gpa = r.choice((0, 0x10000, 0x40000, 0x100000, 0xFEE00000, 1 << 36, 1 << 52)) + \
            (0 if r.random() < 0.9 else r.randrange(1, PAGE))
        flags = r.choice((0, 0, 1, 2, 3, 4, 8, r.getrandbits(32)))
        hva = r.choice((["ram", r.randrange(0, RAM_PAGES * PAGE, PAGE)], ["ram", 8], ["nowhere", 0],
                        0xFFFF800000000000, 0x10000000))
        if slot < K.KVM_USER_MEM_SLOTS and size:
            self.slots.add(slot)
        return ["region", slot, flags, gpa, size, hva]

    def struct(self, cmd: int):
        """A buffer for ``cmd``: [kind, size, fill] with kind zeros/random/nearly valid."""
        r = self.r
        size = _ioc_size(cmd)
        if cmd in (K.KVM_SET_USER_MEMORY_REGION, K.KVM_SET_USER_MEMORY_REGION2) and r.random() < 0.9:
            return self.region()
        if cmd == K.KVM_GET_DIRTY_LOG:
            return ["dirty_log", r.choice((0, 1, 2, 3, 32763, 32764, 1 << 16, r.getrandbits(32))),
                    self.pointer()]
        if cmd in (K.KVM_SET_MSRS, K.KVM_GET_MSRS) and r.random() < 0.6:
            n = r.choice((0, 1, 2, 5, 300))
            return ["msrs", n, [[r.choice((0x10, 0x1B, 0xFE, 0x174, 0x277, 0xC0000080, 0xC0000082,
                                           0xC0000103, r.getrandbits(32))), r.choice((0, 1, 0x500, r.getrandbits(64)))]
                                for _ in range(min(n, 8))]]
        sizes = (size, size, size - 1, size + 8, 0, 4, 1024, 1025, 4096) if size else (0, 4, 8, 64, 1025)
        return ["bytes", max(0, r.choice(sizes)), r.choice(("zero", "random", "random")), r.getrandbits(32)]

    def ioctl(self):
        r = self.r
        cmd, host = self.request()
        target = r.choice(TARGETS)
        if cmd >> 30 == 0 and cmd >> 8 & 0xFF == K.KVMIO:
            arg = self.scalar()
        elif r.random() < 0.6:
            arg = self.struct(cmd)
        else:
            arg = self.pointer()
        fill = self.struct(cmd) if isinstance(arg, list) and arg[0] in POINTERS else None
        return ["ioctl", target, cmd, arg, fill, host]

    def op(self, i: int):
        r = self.r
        if i % RESET_EVERY == 0:
            self.slots = set()
            return ["reset"]
        p = r.random()
        if p < 0.82:
            return self.ioctl()
        if p < 0.90:
            return ["memslot", r.choice(("vm", "vm2")), self.region()]
        if p < 0.93:
            return ["mmap", r.choice(TARGETS), r.choice((0, 1, PAGE, 3 * PAGE, 4 * PAGE, 1 << 20)),
                    r.choice((0, PAGE, 2 * PAGE, 3 * PAGE, 100 * PAGE, 5, -PAGE)),
                    r.choice((mmap.PROT_READ, mmap.PROT_READ | mmap.PROT_WRITE)),
                    r.choice((mmap.MAP_SHARED, mmap.MAP_PRIVATE))]
        if p < 0.95:
            return ["close_then_ioctl", r.choice(("vm2", "vcpu2", "stats")), r.choice(self.impl), r.random() < 0.5]
        if p < 0.985:
            return ["run", sorted(self.slots), r.random() < 0.15]
        return ["reset"]


# --------------------------------------------------------------------------------------
# Execution (one backend per worker process)
# --------------------------------------------------------------------------------------
class HostSys:
    """The host's calls, with the argument conventions of kvmpy.syscalls.

    On a kvm descriptor an int argument is passed as kvmpy.syscalls passes it to kvmpy's
    files (a C int, zero-extended, when it fits in one, else the full unsigned long), and a
    buffer as fcntl.ioctl passes it (one of up to 1024 bytes in a 1025-byte copy, a larger
    one in place) but with a guard page right after it: where kvmpy refuses an access past
    the end of the buffer (EFAULT), the host kernel then faults too, instead of reading or
    overwriting the worker's own stack and heap.  Any other descriptor (``native`` False)
    gets fcntl.ioctl, as kvmpy.syscalls hands those on.
    """

    name = "host"
    BOUNCE_PAGES = 5

    def __init__(self):
        from kvmpy import compat
        self._compat = compat
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
        self.open, self.close = os.open, os.close
        self.bounce, self.bounce_addr = _anon(self.BOUNCE_PAGES + 1, self.BOUNCE_PAGES)

    def _raw(self, fd, cmd, arg):
        ret = self.libc.ioctl(fd, cmd, arg & 0xFFFFFFFFFFFFFFFF)
        if ret < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return ret

    def ioctl(self, fd, cmd, arg, native=True):
        if not native:
            return self._compat.ioctl(fd, cmd, arg, True)
        if isinstance(arg, int):
            if -(1 << 31) <= arg < (1 << 31):
                arg &= 0xFFFFFFFF
            elif not -(1 << 63) <= arg < (1 << 64):
                raise OverflowError("ioctl argument out of range")
            return self._raw(fd, cmd, arg)
        n = len(arg)
        room = n if n > 1024 else 1025
        end = self.BOUNCE_PAGES * PAGE
        self.bounce[end - room:end] = bytes(arg) + bytes(room - n)
        ret = self._raw(fd, cmd, self.bounce_addr + end - room)
        arg[:] = self.bounce[end - room:end - room + n]
        return ret

    def mmap(self, fd, length, offset, prot, flags):
        return self._compat.mmap(fd, length, flags, prot, offset=offset)


class SoftSys:
    name = "soft"

    def __init__(self):
        from kvmpy import syscalls
        self.open, self.close, self._ioctl, self._mmap = syscalls.open, syscalls.close, syscalls.ioctl, syscalls.mmap

    def ioctl(self, fd, cmd, arg, native=True):
        return self._ioctl(fd, cmd, arg, True)

    def mmap(self, fd, length, offset, prot, flags):
        return self._mmap(fd, length, flags, prot, offset=offset)


PROT_NONE = 0
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _anon(pages: int, none_from: int):
    """Shared anonymous pages, the ones from ``none_from`` on made PROT_NONE; and the address."""
    m = mmap.mmap(-1, pages * PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    if none_from < pages and _libc.mprotect(addr + none_from * PAGE, (pages - none_from) * PAGE, PROT_NONE):
        raise OSError(ctypes.get_errno(), "mprotect")
    return m, addr


class Worker:
    def __init__(self, sys_):
        self.sys = sys_
        self.ram, self.ram_addr = _anon(RAM_PAGES, RAM_PAGES)
        # scratch pages, then one guard page nobody may touch
        self.scratch, self.scratch_addr = _anon(SCRATCH_PAGES + 1, SCRATCH_PAGES)
        self._nowhere, self.nowhere_addr = _anon(4, 0)
        self.fds = {}
        self.maps = []
        self.setup()

    # -- descriptors --------------------------------------------------------------------
    def setup(self):
        s = self.sys
        self.fds = {"closed": CLOSED_FD}
        self.fds["kvm"] = s.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        self.fds["vm"] = s.ioctl(self.fds["kvm"], K.KVM_CREATE_VM, 0)
        self.fds["vm2"] = s.ioctl(self.fds["kvm"], K.KVM_CREATE_VM, 0)
        self.fds["vcpu"] = s.ioctl(self.fds["vm"], K.KVM_CREATE_VCPU, 0)
        self.fds["vcpu2"] = s.ioctl(self.fds["vm2"], K.KVM_CREATE_VCPU, 1)
        self.fds["stats"] = s.ioctl(self.fds["vm"], K.KVM_GET_STATS_FD, 0)
        self.fds["devnull"] = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        self.fds["memfd"] = os.memfd_create("fuzz", os.MFD_CLOEXEC)
        self.run_map = s.mmap(self.fds["vcpu"], 3 * PAGE, 0, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED)
        self.run = K.kvm_run.from_buffer(self.run_map)
        sregs = bytearray(ctypes.sizeof(K.kvm_sregs))
        s.ioctl(self.fds["vcpu"], K.KVM_GET_SREGS, sregs)
        self.sregs = bytes(sregs)
        self.extra = []

    def teardown(self):
        self.run = None
        for m in self.maps + [self.run_map]:
            try:
                m.close()
            except (BufferError, ValueError):
                pass
        self.maps = []
        for name, fd in list(self.fds.items()) + [("extra", fd) for fd in self.extra]:
            if name == "closed" or fd is None:
                continue
            try:
                (os.close if name in ("devnull", "memfd") else self.sys.close)(fd)
            except OSError:
                pass

    def reset(self):
        self.teardown()
        self.setup()
        return "ok"

    # -- arguments ------------------------------------------------------------------------
    def address(self, p):
        if not isinstance(p, list):
            return p
        kind, off = p
        if kind == "scratch":
            return self.scratch_addr + off
        if kind == "scratch_end":
            return self.scratch_addr + SCRATCH_PAGES * PAGE - off
        if kind == "nowhere":
            return self.nowhere_addr + off
        return self.ram_addr + off

    def encode(self, spec) -> bytes:
        kind = spec[0]
        if kind == "region":
            _, slot, flags, gpa, size, hva = spec
            return bytes(K.kvm_userspace_memory_region(slot, flags & 0xFFFFFFFF, gpa & (1 << 64) - 1,
                                                        size, self.address(hva) & (1 << 64) - 1))
        if kind == "dirty_log":
            log = K.kvm_dirty_log(slot=spec[1] & 0xFFFFFFFF)
            log.dirty_bitmap = self.address(spec[2]) & (1 << 64) - 1
            return bytes(log)
        if kind == "msrs":
            t = K.with_entries(K.kvm_msrs, max(1, len(spec[2])))(nmsrs=spec[1])
            for i, (index, data) in enumerate(spec[2]):
                t.entries[i].index, t.entries[i].data = index & 0xFFFFFFFF, data
            return bytes(t)
        _, size, fill, seed = spec
        return bytes(size) if fill == "zero" else random.Random(seed).randbytes(size)

    def argument(self, arg, fill):
        if isinstance(arg, list) and arg[0] in POINTERS:
            addr = self.address(arg)
            if fill is not None and arg[0] == "scratch":
                data = self.encode(fill)[:SCRATCH_PAGES * PAGE - arg[1]]
                self.scratch[arg[1]:arg[1] + len(data)] = data
            elif fill is not None and arg[0] == "scratch_end":
                data = self.encode(fill)[:arg[1]]
                end = SCRATCH_PAGES * PAGE
                self.scratch[end - arg[1]:end - arg[1] + len(data)] = data
            return addr
        if isinstance(arg, list):
            return bytearray(self.encode(arg))
        return arg

    # -- operations -----------------------------------------------------------------------
    def adopt(self, cmd, ret):
        """A descriptor an ioctl returned: becomes vm2/vcpu2/stats (the old one is closed at
        the next reset)."""
        role = {K.KVM_CREATE_VM: "vm2", K.KVM_CREATE_VCPU: "vcpu2", K.KVM_GET_STATS_FD: "stats"}[cmd]
        old = self.fds.get(role)
        self.fds[role] = ret
        if old is not None and old not in self.fds.values():
            self.extra.append(old)
        return "ok:fd"

    def do_ioctl(self, target, cmd, arg, fill, host):
        fd = self.fds[target]
        native = fd is not None and target in KVM_ROLES
        arg = self.argument(arg, fill)      # fills the scratch on both backends alike
        if not host and native and self.sys.name == "host":
            return "not sent"               # a known ioctl kvmpy does not implement
        if native and self.sys.name == "host" and self._beyond_kvmpy_vcpu_ids(cmd, arg):
            return "not sent"
        if not native and isinstance(arg, bytearray) and len(arg) <= 1024:
            # fcntl.ioctl would pass a copy with uninitialised stack bytes after it
            arg += bytes(1025 - len(arg))
        try:
            ret = self.sys.ioctl(CLOSED_FD if fd is None else fd, cmd, arg, native)
        finally:
            if cmd in TABLES:
                # the tables differ between kernels (see explain): later ops must not read them
                self.scratch[:SCRATCH_PAGES * PAGE] = bytes(SCRATCH_PAGES * PAGE)
        if cmd in (K.KVM_CREATE_VM, K.KVM_CREATE_VCPU, K.KVM_GET_STATS_FD) and native and isinstance(ret, int):
            return self.adopt(cmd, ret)
        if cmd in (K.KVM_GET_API_VERSION, K.KVM_GET_VCPU_MMAP_SIZE) and isinstance(ret, int):
            return "ok:%d" % ret
        return "ok"

    def _beyond_kvmpy_vcpu_ids(self, cmd, arg) -> bool:
        """A vCPU id kvmpy refuses (KVM_MAX_VCPU_IDS, 4096) that this host's KVM takes: its
        limit is 4 x CONFIG_KVM_MAX_NR_VCPUS, 16384 on kernels built with MAXSMP.  Creating
        the vCPU would leave the two VMs unlike until the next reset, so it is not sent."""
        if cmd not in (K.KVM_CREATE_VCPU, K.KVM_SET_BOOT_CPU_ID) or not isinstance(arg, int):
            return False
        if not hasattr(self, "host_max_vcpu_id"):
            self.host_max_vcpu_id = self.sys.ioctl(self.fds["kvm"], K.KVM_CHECK_EXTENSION, K.KVM_CAP_MAX_VCPU_ID, True)
        vcpu_id = arg & 0xFFFFFFFF
        if cmd == K.KVM_CREATE_VCPU:            # ids below the limit; the boot id up to it
            return K.KVM_MAX_VCPU_IDS <= vcpu_id < self.host_max_vcpu_id
        return K.KVM_MAX_VCPU_IDS < vcpu_id <= self.host_max_vcpu_id

    def do_memslot(self, target, spec):
        fd = self.fds[target]
        self.sys.ioctl(CLOSED_FD if fd is None else fd, K.KVM_SET_USER_MEMORY_REGION,
                       bytearray(self.encode(spec)), fd is not None)
        return "ok"

    def do_mmap(self, target, length, offset, prot, flags):
        fd = self.fds[target]
        if fd is None:
            fd = CLOSED_FD
        m = self.sys.mmap(fd, length, offset, prot, flags)
        n = len(m)
        m.close()
        return "ok:%d" % n

    def do_close_then_ioctl(self, role, cmd, behind):
        fd = self.fds[role]
        if fd is None:
            return "none"
        self.fds[role] = None
        (os.close if behind else self.sys.close)(fd)
        try:
            self.sys.ioctl(fd, cmd, 0, False)
            return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    def do_run(self, slots, immediate):
        """Real mode at 0:0x1000 in slot 0 = the fuzz's RAM: OUT to port 0x10, then HLT; every
        interrupt vector points at a HLT stub."""
        s, vcpu, vm = self.sys, self.fds["vcpu"], self.fds["vm"]
        steps = []

        def step(fn):
            try:
                fn()
                steps.append("ok")
            except OSError as e:
                steps.append(errno.errorcode.get(e.errno, str(e.errno)))

        for slot in slots:
            step(lambda: s.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION,
                                 bytearray(K.kvm_userspace_memory_region(slot, 0, 0, 0, 0))))
        step(lambda: s.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION,
                             bytearray(K.kvm_userspace_memory_region(0, 0, 0, RAM_PAGES * PAGE, self.ram_addr))))
        self.ram[0:1024] = (HLT_STUB.to_bytes(2, "little") + bytes(2)) * 256
        self.ram[HLT_STUB] = 0xF4
        self.ram[RAM_OFFSET_OF_CODE:RAM_OFFSET_OF_CODE + len(GUEST_CODE)] = GUEST_CODE
        sregs = K.kvm_sregs.from_buffer_copy(self.sregs)
        sregs.cs.selector = sregs.cs.base = 0
        step(lambda: s.ioctl(vcpu, K.KVM_SET_SREGS, bytearray(sregs)))
        regs = K.kvm_regs(rip=RAM_OFFSET_OF_CODE, rflags=2, rsp=0x8000, rax=0x41)
        step(lambda: s.ioctl(vcpu, K.KVM_SET_REGS, bytearray(regs)))
        step(lambda: s.ioctl(vcpu, K.KVM_SET_VCPU_EVENTS,
                             bytearray(K.kvm_vcpu_events(flags=K.KVM_VCPUEVENT_VALID_NMI_PENDING))))
        step(lambda: s.ioctl(vcpu, K.KVM_SET_DEBUGREGS, bytearray(K.kvm_debugregs())))
        step(lambda: s.ioctl(vcpu, K.KVM_SET_SIGNAL_MASK, 0))
        run = self.run
        run.immediate_exit = int(immediate)
        run.kvm_valid_regs = run.kvm_dirty_regs = 0
        for _ in range(2):
            try:
                s.ioctl(vcpu, K.KVM_RUN, 0)
            except OSError as e:
                steps.append(errno.errorcode.get(e.errno, str(e.errno)))
                break
            if run.exit_reason == K.KVM_EXIT_IO:
                # not RIP: VMX's fast PIO path leaves it on the OUT until the next entry,
                # kvm_pvm's emulator has moved it past
                steps.append("io:port%#x" % run.io.port)
                continue
            out = bytearray(ctypes.sizeof(K.kvm_regs))
            s.ioctl(vcpu, K.KVM_GET_REGS, out)
            steps.append("exit%d@%#x" % (run.exit_reason, K.kvm_regs.from_buffer(out).rip))
            break
        run.immediate_exit = 0
        return ",".join(steps)

    def execute(self, op):
        kind = op[0]
        if kind == "reset":
            return self.reset()
        if kind == "ioctl":
            return self.do_ioctl(*op[1:])
        if kind == "memslot":
            return self.do_memslot(*op[1:])
        if kind == "mmap":
            return self.do_mmap(*op[1:])
        if kind == "close_then_ioctl":
            return self.do_close_then_ioctl(*op[1:])
        return self.do_run(*op[1:])


def outcome(worker, op) -> str:
    try:
        return worker.execute(op)
    except OSError as e:
        if e.errno is None:
            return "X:OSError-without-errno:%s" % e
        return errno.errorcode.get(e.errno, str(e.errno))
    except Exception as e:                # reported, and a defect unless the host agrees
        return "X:%s" % type(e).__name__


def worker_main(backend: str, count: int, seed: int) -> None:
    w = Worker(SoftSys() if backend == "soft" else HostSys())
    gen = Generator(seed)
    out = sys.stdout
    out.reconfigure(line_buffering=True)          # a crash loses no finished operation
    for i in range(count):
        out.write("%d %s\n" % (i, outcome(w, gen.op(i))))
    w.teardown()


# --------------------------------------------------------------------------------------
# The parent: run both, compare
# --------------------------------------------------------------------------------------
def explain(op, soft: str, host: str):
    """Why kvmpy and the host legitimately differ on ``op``, or None (a defect).

    * A request number not in kvmpy.uapi that the host's kernel knows (a newer ioctl, or
      one for another architecture's structures): the host answers it, kvmpy cannot; after
      that the host's VM may hold state kvmpy's does not, until the next reset.
    * The tables KVM_GET_SUPPORTED_CPUID and KVM_GET_MSR_(FEATURE_)INDEX_LIST return have
      other lengths (kvmpy's processor has fewer leaves and MSRs than the host's), so an
      array long enough for one can be too short for the other: ok against E2BIG/EFAULT.
    * KVM_SET_TSC_KHZ: which frequencies a vCPU may have depends on the host's TSC scaling;
      kvmpy scales in software (KVM_CAP_TSC_CONTROL), a host without scaling accepts any
      frequency above its own (it catches up) and refuses those below.
    * KVM_GET_TSC_KHZ after such a frequency: the value is the ioctl's return value, and
      one of 2^31 kHz or more is negative, an errno to the caller.
    * A run whose HLT is single-stepped (a random KVM_SET_GUEST_DEBUG before it): Linux's
      kvm_emulate_halt, which VMX and SVM call for the HLT exit, turns the step's
      KVM_EXIT_DEBUG into KVM_EXIT_HLT when the VM has no in-kernel irqchip (kvmpy does
      the same); kvm_pvm runs HLT in KVM's emulator, which reports the step.
    * A run whose OUT is single-stepped: VMX and SVM complete the OUT after user space
      (complete_fast_pio_out -> kvm_skip_emulated_instruction) and report the step there,
      at the HLT (kvmpy the same); kvm_pvm's emulator loses the trap of an instruction
      whose port write went to user space (x86_emulate_instruction's "return into emulator
      if single-stepping" FIXME) and reports the next step, after the HLT.
    """
    if op[0] == "run":
        return _stepped_hlt(soft, host) or _stepped_out(soft, host)
    if op[0] != "ioctl":
        return None
    cmd = op[2]
    if cmd not in KVM_REQUESTS.values() and cmd not in GENERIC and host not in ("EINVAL", "ENOTTY"):
        return "host ioctl %#x unknown to kvmpy.uapi" % cmd
    if cmd == K.KVM_SET_TSC_KHZ and {soft, host} <= {"ok", "EINVAL"}:
        return "TSC scaling differs"
    if cmd == K.KVM_GET_TSC_KHZ and soft == "ok":
        # the ioctl's return value is the frequency: one of 2^31 kHz or more, which only the
        # host accepted (above), comes back negative, as an errno (0xffffffea: EINVAL)
        return "a TSC frequency only the host took reads back as an errno"
    if cmd in TABLES and {soft, host} <= {"ok", "E2BIG", "EFAULT"}:
        return "table lengths differ (%s)" % TABLES[cmd]
    return None


def _stepped_hlt(soft: str, host: str):
    *same, last = soft.split(",")
    *host_same, host_last = host.split(",")
    hlt, _, rip = last.partition("@")
    debug, _, host_rip = host_last.partition("@")
    if (same, rip, hlt, debug) == (host_same, host_rip, "exit%d" % K.KVM_EXIT_HLT, "exit%d" % K.KVM_EXIT_DEBUG):
        return "single-stepped HLT: KVM_EXIT_HLT as VMX/SVM, KVM_EXIT_DEBUG from kvm_pvm's emulator"
    return None


def _stepped_out(soft: str, host: str):
    *same, last = soft.split(",")
    *host_same, host_last = host.split(",")
    hlt_at = RAM_OFFSET_OF_CODE + 2                 # GUEST_CODE: out 0x10, al (2 bytes); hlt
    debug = "exit%d@%#x" % (K.KVM_EXIT_DEBUG, hlt_at)
    host_debug = "exit%d@%#x" % (K.KVM_EXIT_DEBUG, hlt_at + 1)
    if same == host_same and same[-1:] == ["io:port0x10"] and (last, host_last) == (debug, host_debug):
        return "single-stepped OUT: the step reported at the HLT, kvm_pvm's emulator loses it"
    return None


TABLES = {K.KVM_GET_SUPPORTED_CPUID: "KVM_GET_SUPPORTED_CPUID", K.KVM_GET_MSR_INDEX_LIST: "KVM_GET_MSR_INDEX_LIST",
          K.KVM_GET_MSR_FEATURE_INDEX_LIST: "KVM_GET_MSR_FEATURE_INDEX_LIST"}


def _spawn(backend, count, seed):
    cmd = [sys.executable, "-m", "tests.reliability.ioctl_fuzz", "--worker", backend,
           "--count", str(count), "--seed", str(seed)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc, timeout):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return _parse(out), err, "hang"
    return _parse(out), err, proc.returncode


def _parse(out):
    results = {}
    for line in out.splitlines():
        i, _, res = line.partition(" ")
        results[int(i)] = res
    return results


def compare(ops, res) -> tuple:
    """Defects and explained differences, from each backend's (results, stderr, returncode)."""
    defects, explained = [], {}
    for name, (results, err, rc) in res.items():
        if rc != 0:
            i = len(results)
            defects.append({"kind": "crash" if rc != "hang" else "hang", "backend": name, "rc": rc,
                            "op_index": i, "op": ops[i] if i < len(ops) else None, "stderr": err[-2000:]})
    soft = res["soft"][0]
    hres = res["host"][0] if "host" in res else {}
    for i, op in enumerate(ops):
        s = soft.get(i)
        if s is None:
            break
        h = hres.get(i)
        if s.startswith("X:") and s != h:
            defects.append({"kind": "escape", "op_index": i, "op": op, "soft": s, "host": h})
        elif h is not None and h != "not sent" and s != h:
            why = explain(op, s, h)
            if why is None:
                defects.append({"kind": "errno", "op_index": i, "op": op, "soft": s, "host": h})
            else:
                explained[why] = explained.get(why, 0) + 1
    return defects, explained


def ioctl_calls(ops, soft_results) -> int:
    """How many ioctls kvmpy answered (a run operation makes several)."""
    n = 0
    for i, op in enumerate(ops):
        r = soft_results.get(i)
        if r is None:
            break
        if op[0] in ("ioctl", "memslot", "close_then_ioctl"):
            n += 1
        elif op[0] == "run":
            steps = r.split(",")
            n += len(steps) + (1 if steps[-1].startswith("exit") else 0)
    return n


def fuzz(count: int, seed: int, host: bool, timeout: float = 3600.0) -> dict:
    """Run the sequence on kvmpy (and the host): a report with every defect found."""
    t0 = time.time()
    procs = {"soft": _spawn("soft", count, seed)}
    if host:
        procs["host"] = _spawn("host", count, seed)
    res = {name: _collect(p, timeout) for name, p in procs.items()}
    gen = Generator(seed)
    ops = [gen.op(i) for i in range(count)]
    defects, explained = compare(ops, res)
    return {"seed": seed, "ops": count, "ioctl_calls": ioctl_calls(ops, res["soft"][0]), "host": host,
            "defects": defects, "explained": explained, "seconds": round(time.time() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.reliability.ioctl_fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10000, help="operations to run (default 10000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-host", action="store_true", help="kvmpy only, even where /dev/kvm exists")
    ap.add_argument("--worker", choices=("soft", "host"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.count, args.seed)
        return 0
    host = not args.no_host and os.access("/dev/kvm", os.R_OK | os.W_OK)
    report = fuzz(args.count, args.seed, host)
    for d in report["defects"][:50]:
        print(json.dumps(d))
    print("seed %d: %d operations, %d ioctl calls, host %s, %d defects, %.1f s; explained: %s" % (
        report["seed"], report["ops"], report["ioctl_calls"], "compared" if host else "absent",
        len(report["defects"]), report["seconds"], report["explained"] or "none"))
    return 1 if report["defects"] else 0


if __name__ == "__main__":
    sys.exit(main())
