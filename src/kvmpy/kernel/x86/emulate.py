"""kvm_emulate_instruction: KVM's x86 emulator, for MMIO and string I/O.

There is no second x86 here: the emulator decodes with the processor's decoder
and executes the processor's own translation of the instruction
(``kvmpy.hw.translate.codegen`` with ``emulating=True``), in a namespace whose memory and
port callbacks go through KVM: guest RAM by memslot, everything else to an
in-kernel device or to user space as ``KVM_EXIT_MMIO`` / ``KVM_EXIT_IO``.

An MMIO read that user space must answer aborts the instruction (it has no side
effects yet: reads come first); on the next KVM_RUN it is emulated again and the
completed reads are served, in order, from the read cache.  MMIO writes are
collected and go out, one fragment per exit, after the instruction retired.
"""

from __future__ import annotations

import contextlib

from kvmpy.hw.translate import codegen
from ...hw import memory as hm
from ...hw import paging
from kvmpy.hw.translate.decoder import DecodeError, decode
from ...hw.events import Fault, Intercept
from kvmpy.hw.x86defs import CR0_PE, RCX, RDI, TF
from ...uapi import kvm as uapi
from ..iodev import KVM_MMIO_BUS, kvm_io_bus_read, kvm_io_bus_write
from ..trace import event, traced
from kvmpy.kernel.x86.mmu import mmu
from .run import kernel_pio, kvm_prepare_emulation_failure_exit, kvm_prepare_pio_exit
from .x86 import kvm_queue_exception, kvm_vcpu_do_singlestep

EMULATION_FAILED = 1
# emulation_type: a failed emulation of a write to a shadowed page table may be retried by
# the guest once the page is unprotected (kvm_emulate.h's EMULTYPE_ALLOW_RETRY_PF)
EMULTYPE_ALLOW_RETRY_PF = 1 << 3
# what the vendor's check_emulate_instruction answers (the names of kvm_emulate.h)
X86EMUL_CONTINUE = 0
X86EMUL_UNHANDLEABLE_VECTORING = 10
_MEM_STRING_OPCODES = frozenset((0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF))


class _NeedUser(Exception):
    """The instruction needs data from user space (an MMIO read or a PIO input)."""

    def __init__(self, kind, addr, size, count=1):
        super().__init__(kind)
        self.kind, self.addr, self.size, self.count = kind, addr, size, count


class _Restart(Exception):
    """A REP string instruction reached its next MMIO access after a complete iteration.

    KVM's emulator runs one iteration of a REP MOVS/STOS/... per emulation when MMIO is
    involved: the iteration's registers are written back, RIP stays at the instruction and
    the guest re-executes it.  Even the last iteration leaves RIP there (the emulator only
    retires the instruction when it starts with RCX = 0), so every MMIO exit of a REP
    string instruction reports the instruction's own RIP.
    """


class EmulateCtxt:
    """struct x86_emulate_ctxt: per-vCPU emulator state across exits."""

    def __init__(self, vcpu):
        self.vcpu = vcpu
        self.fetch_page = None
        cpu = vcpu.arch.cpu
        self.ns = dict(cpu.ns)
        self.ns.update(rd=self.read, wr=self.write, probe_w=_probe_nothing, io_in=self.io_in,
                       software_interrupt=self.software_interrupt, iret=self.iret,
                       io_out=self.io_out, TR={}, TW={})
        self.read_cache: list[int] = []
        self.read_idx = 0
        self.writes: list = []          # (gpa, size, value) MMIO fragments not yet sent
        self.pio_out = None
        self.pio_in: list[int] = []
        self.blocks: dict = {}
        self.decoded: dict = {}         # (rip, CS base, mode) -> (instruction, its translation)
        self.rep_string = None          # (RCX at the start, address mask) for a REP string insn
        self.mmio_touched = False

    def _mmio_access(self):
        """Called before each MMIO access: a REP string stops after one iteration (_Restart)."""
        rs = self.rep_string
        if rs is not None and self.vcpu.arch.cpu.regs[RCX] & rs[1] != rs[0]:
            raise _Restart()
        self.mmio_touched = True

    # ------------------------------------------------------------------ memory
    def _gpa(self, lin, write):
        gpa, _ = mmu.kvm_mmu_gva_to_gpa(self.vcpu, lin, 2 if write else 0)
        return gpa

    def fetch_byte(self, lin):
        """One instruction byte through the guest's page tables and the memslots
        (kvm_fetch_guest_virt), never through KVM's shadow table: under shadow paging a
        missing shadow entry is KVM's own, not a #PF for the guest.  Code outside guest RAM
        cannot be fetched: an emulation failure, as on the host."""
        page = lin >> 12
        cached = self.fetch_page
        if cached is None or cached[0] != page:
            gpa, _ = mmu.kvm_mmu_gva_to_gpa(self.vcpu, lin, paging.PFERR_FETCH)
            host = mmu.gpa_to_host(self.vcpu.kvm, gpa, False)
            if host is None:
                raise DecodeError(6)
            cached = self.fetch_page = (page, host - (lin & 0xFFF))
        return hm.read(cached[1] + (lin & 0xFFF), 1)

    def read(self, lin, size):
        if (lin & 0xFFF) + size > 0x1000:
            lo = 0x1000 - (lin & 0xFFF)
            return self.read(lin, lo) | (self.read(lin + lo, size - lo) << (8 * lo))
        gpa = self._gpa(lin, False)
        host = mmu.gpa_to_host(self.vcpu.kvm, gpa, False)
        if host is not None:
            return hm.read(host, size)
        self._mmio_access()
        if self.read_idx < len(self.read_cache):
            v = self.read_cache[self.read_idx]
            self.read_idx += 1
            return v
        data = bytearray(size)
        if vcpu_mmio_read(self.vcpu, gpa, size, data):
            v = int.from_bytes(data, "little")
            self.read_cache.append(v)
            self.read_idx += 1
            return v
        raise _NeedUser("mmio", gpa, size)

    def write(self, lin, size, value):
        if (lin & 0xFFF) + size > 0x1000:
            lo = 0x1000 - (lin & 0xFFF)
            self.write(lin, lo, value)
            self.write(lin + lo, size - lo, value >> (8 * lo))
            return
        gpa = self._gpa(lin, True)
        host = mmu.gpa_to_host(self.vcpu.kvm, gpa, True)
        cpu = self.vcpu.arch.cpu
        if host is not None:
            cpu._note_write(gpa >> 12, gpa & 0xFFF, size)
            hm.write(host, size, value)
            mmu.kvm_mmu_pte_write(self.vcpu, gpa)
            return
        self._mmio_access()
        value &= (1 << (8 * size)) - 1
        if vcpu_mmio_write(self.vcpu, gpa, size, value.to_bytes(size, "little")):
            return
        self.writes.append((gpa, size, value))

    # ------------------------------------------------------------------ real mode only
    def _real_mode_only(self, what):
        """KVM's emulator has INT n / INT3 / INTO (emulate_int) and IRET (emulate_iret) in
        real mode only: elsewhere it cannot emulate them, an emulation failure."""
        if self.vcpu.arch.cpu.cr0 & CR0_PE:
            raise codegen.Unsupported(what + " outside real mode")

    def software_interrupt(self, vector, next_ip, kind):
        self._real_mode_only("INT")
        self.vcpu.arch.cpu.software_interrupt(vector, next_ip, kind)

    def iret(self, size, next_ip=None):
        self._real_mode_only("IRET")
        self.vcpu.arch.cpu.iret(size, next_ip)

    # ------------------------------------------------------------------ ports
    def io_in(self, port, size, insn_len, string=False, rep=False):
        self.vcpu.arch.cpu.check_io(port, size)
        if self.pio_in:
            return self.pio_in.pop(0)
        data = bytearray(size)
        if kernel_pio(self.vcpu, port, size, True, data):
            return int.from_bytes(data, "little")
        count = 1
        if rep:
            cpu = self.vcpu.arch.cpu
            am = {2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}[self._adsize]
            room = max(1, (0x1000 - (cpu.regs[RDI] & 0xFFF)) // size)
            count = max(1, min(cpu.regs[RCX] & am, room, 0x1000 // size))
        raise _NeedUser("pio_in", port, size, count)

    def io_out(self, port, size, insn_len, value=None, string=False, rep=False):
        self.vcpu.arch.cpu.check_io(port, size)
        data = bytearray((value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        if kernel_pio(self.vcpu, port, size, False, data):
            return
        self.pio_out = (port, size, data)

    # ------------------------------------------------------------------ one instruction
    def block(self):
        self.fetch_page = None          # (linear page, its host address) of this decode
        cpu = self.vcpu.arch.cpu
        csb = cpu.sbase[1]
        mode = cpu.mode
        mask = 0xFFFFFFFFFFFFFFFF if mode.code == 8 else 0xFFFFFFFF
        rip = cpu.rip
        at = (rip, csb, mode.key)
        known = self.decoded.get(at)
        if known is not None and self._fetch_bytes(csb + rip, len(known[0].raw), mask) == known[0].raw:
            ins, b = known              # the same bytes as last time here: no decode
        else:
            ins = decode(lambda i: self.fetch_byte((csb + rip + i) & mask), mode.code, rip)
            key = (ins.raw, rip, csb, mode.key)
            b = self.blocks.get(key)
            if b is None:
                b = codegen.translate(lambda r: ins, rip, csb, mode, self.ns, emulating=True, max_insns=1)
                self.blocks[key] = b
            self.decoded[at] = (ins, b)
        self._adsize = ins.adsize
        am = {2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}[ins.adsize]
        self.rep_string = (cpu.regs[RCX] & am, am) if ins.rep and ins.opc in _MEM_STRING_OPCODES else None
        self.mmio_touched = False
        return b

    def _fetch_bytes(self, lin, n, mask):
        """``n`` instruction bytes from ``lin``, as ``fetch_byte`` reads them: one slice of
        the page when they do not cross one (an MMIO instruction is emulated again and again
        at the same place; checking its bytes is all it then costs)."""
        if (lin & 0xFFF) + n <= 0x1000 and lin + n <= mask:
            self.fetch_byte(lin)
            off = lin & 0xFFF
            return bytes(hm.page(self.fetch_page[1])[off:off + n])
        return bytes(self.fetch_byte((lin + i) & mask) for i in range(n))


def vcpu_mmio_read(vcpu, gpa: int, size: int, data: bytearray) -> bool:
    """The vCPU's own LAPIC (its xAPIC window) or an in-kernel device on the MMIO bus serves
    the read (fills ``data``), or user space must."""
    apic = vcpu.arch.apic
    if apic is not None and apic.read(vcpu, gpa, size, data):
        return True
    return kvm_io_bus_read(vcpu, KVM_MMIO_BUS, gpa, size, data)


def vcpu_mmio_write(vcpu, gpa: int, size: int, data: bytes) -> bool:
    apic = vcpu.arch.apic
    if apic is not None and apic.write(vcpu, gpa, size, data):
        return True
    return kvm_io_bus_write(vcpu, KVM_MMIO_BUS, gpa, size, data)


def _ctxt(vcpu) -> EmulateCtxt:
    c = vcpu.arch.emulate_ctxt
    if c is None:
        c = vcpu.arch.emulate_ctxt = EmulateCtxt(vcpu)
    return c


@contextlib.contextmanager
def _processor_through(cpu, ctxt):
    """Send the processor's own memory accesses -- far transfers, IRET, event delivery,
    descriptor reads, the helpers translated code calls -- through the emulator's accessors
    as well, as KVM's emulator does all of an instruction's accesses itself: a far return
    popping from MMIO, or an INT n pushing its frame there, is emulated, not a failure."""
    cpu.read_slow, cpu.write_slow, cpu.probe_write = ctxt.read, ctxt.write, _probe_nothing
    try:
        yield
    finally:
        del cpu.read_slow, cpu.write_slow, cpu.probe_write


def _probe_nothing(addr, size):
    """The emulator's write probe: its writes to MMIO are collected, RAM checks its own."""


def kvm_unprotect_and_retry_on_failure(vcpu, gva, emulation_type: int) -> bool:
    """KVM could not emulate a write to a write-protected guest page table at ``gva`` (the
    instruction is one its emulator lacks, or an event's delivery wrote there): if
    ``emulation_type`` allows it, stop shadowing the table and re-enter, for the processor
    to run the instruction or deliver the event (requeued by complete_interrupts) itself."""
    if not emulation_type & EMULTYPE_ALLOW_RETRY_PF:
        return False
    mmu.kvm_mmu_unprotect_gfn_and_retry(vcpu, gva)
    return True


@traced
def kvm_emulate_instruction(vcpu, emulation_type: int = 0, cr2_or_gpa=None) -> int:
    """x86_emulate_instruction: decode at RIP, execute with KVM's memory and port callbacks.
    ``cr2_or_gpa``: the address whose page fault asked for the emulation, if one did."""
    ctxt = _ctxt(vcpu)
    cpu = vcpu.arch.cpu
    vcpu.stat["insn_emulation"] += 1
    ctxt.read_idx = 0
    start = cpu.rip
    tf = cpu.flags & TF
    try:
        b = ctxt.block()
        event("kvm_emulate_insn", rip=cpu.rip, insn=b.insns[0].raw.hex())
        with _processor_through(cpu, ctxt):
            cpu.icount += b.fn()
    except _NeedUser as need:
        return _exit_for_read(vcpu, ctxt, need)
    except Fault as f:
        ctxt.read_cache.clear()
        kvm_queue_exception(vcpu, f.vector, f.error_code, f.cr2)
        return 1
    except _Restart:
        ctxt.read_cache.clear()
        cpu.rip = start
        cpu.refresh()
        return _after_retire(vcpu, ctxt)
    except (DecodeError, Intercept, codegen.Unsupported):
        ctxt.read_cache.clear()
        if kvm_unprotect_and_retry_on_failure(vcpu, cr2_or_gpa, emulation_type):
            cpu.rip = start
            cpu.refresh()
            return 1
        vcpu.stat["insn_emulation_fail"] += 1
        return kvm_prepare_emulation_failure_exit(vcpu)
    rep_left = ctxt.rep_string is not None and ctxt.mmio_touched and not cpu.regs[RCX] & ctxt.rep_string[1]
    if rep_left:
        cpu.rip = start                     # see _Restart: REP retires on a later entry
    ctxt.read_cache.clear()
    cpu.refresh()
    r = _after_retire(vcpu, ctxt)
    if r == 1 and tf and not rep_left:
        # its single-step trap; after an MMIO write or OUT to user space it is lost, as in
        # Linux's x86_emulate_instruction
        r = kvm_vcpu_do_singlestep(vcpu)
    return r


def _after_retire(vcpu, ctxt) -> int:
    """The instruction retired: send its MMIO writes or PIO output to user space."""
    if ctxt.writes:
        return _mmio_write_exit(vcpu, ctxt)
    if ctxt.pio_out is not None:
        port, size, data = ctxt.pio_out
        ctxt.pio_out = None
        vcpu.pio_data[:size] = data
        kvm_prepare_pio_exit(vcpu, port, size, False, 1)
        vcpu.arch.complete_userspace_io = lambda v: 1
        return 0
    return 1


def _mmio_exit(vcpu, gpa, size, is_write, value=0) -> None:
    run = vcpu.run
    run.exit_reason = uapi.KVM_EXIT_MMIO
    run.mmio.phys_addr = gpa
    run.mmio.len = size
    run.mmio.is_write = int(is_write)
    data = value.to_bytes(8, "little") if is_write else bytes(8)
    for i in range(8):
        run.mmio.data[i] = data[i]
    vcpu.stat["mmio_exits"] += 1
    event("kvm_mmio", rw="write" if is_write else "read", len=size, gpa=gpa, val=value)
    event("kvm_userspace_exit", reason="KVM_EXIT_MMIO")


def _mmio_write_exit(vcpu, ctxt) -> int:
    gpa, size, value = ctxt.writes.pop(0)
    _mmio_exit(vcpu, gpa, size, True, value)

    def complete_emulated_mmio_write(v):
        c = _ctxt(v)
        if c.writes:
            return _mmio_write_exit(v, c)
        return 1

    vcpu.arch.complete_userspace_io = complete_emulated_mmio_write
    return 0


def _exit_for_read(vcpu, ctxt, need) -> int:
    if need.kind == "mmio":
        _mmio_exit(vcpu, need.addr, need.size, False)

        def complete_emulated_mmio(v):
            c = _ctxt(v)
            c.read_cache.append(int.from_bytes(bytes(v.run.mmio.data[:need.size]), "little"))
            return kvm_emulate_instruction(v)

        vcpu.arch.complete_userspace_io = complete_emulated_mmio
        return 0
    kvm_prepare_pio_exit(vcpu, need.addr, need.size, True, need.count)
    start = vcpu.arch.cpu.rip

    def complete_emulated_pio_in(v):
        c = _ctxt(v)
        raw = bytes(v.pio_data[:need.size * need.count])
        c.pio_in = [int.from_bytes(raw[i:i + need.size], "little") for i in range(0, len(raw), need.size)]
        r = 1
        while c.pio_in and v.arch.cpu.rip == start and r > 0:
            r = kvm_emulate_instruction(v)
        c.pio_in = []
        return r

    vcpu.arch.complete_userspace_io = complete_emulated_pio_in
    return 0
