"""KVM_NMI, KVM_GET_STATS_FD and KVM_TRANSLATE, on kvmpy and on the host's /dev/kvm.

The guests and the harness are those of test_run_semantics (raw ioctls through either
``rawvmm.HOST`` or ``kvmpy.syscalls``). The host runs every guest instruction in KVM's
emulator, which delivers NMIs and blocks them until IRET, but implements IRET only in real
mode: the NMI guest runs in real mode on the host and in both modes on kvmpy, and the
expected sequence below is what the host produced.
"""

import ctypes
import errno
import os
import struct

import pytest

import rawvmm
from kvmpy import syscalls
from kvmpy.uapi import kvm as uapi
from test_run_semantics import TOUCH_STACK, Machine, assemble, prot32, real16

BACKENDS = [pytest.param(rawvmm.HOST, id="host", marks=pytest.mark.host), pytest.param(syscalls, id="soft")]


# ------------------------------------------------------------------ binary statistics reader
def read_stats(fd):
    """Parse a KVM_GET_STATS_FD file with os.pread only, as a VMM (e.g. QEMU) does."""
    flags, name_size, num_desc, id_off, desc_off, data_off = struct.unpack("6I", os.pread(fd, 24, 0))
    stride = 16 + name_size
    descs = {}
    for i in range(num_desc):
        raw = os.pread(fd, stride, desc_off + i * stride)
        dflags, exponent, size, offset, bucket = struct.unpack("IhHII", raw[:16])
        value = struct.unpack("Q", os.pread(fd, 8, data_off + offset))[0]
        descs[raw[16:].rstrip(b"\0").decode()] = dict(flags=dflags, exponent=exponent, size=size,
                                                      bucket_size=bucket, value=value)
    return dict(flags=flags, name_size=name_size, id_offset=id_off, desc_offset=desc_off,
                data_offset=data_off, num_desc=num_desc,
                id=os.pread(fd, name_size, id_off).rstrip(b"\0").decode(), stats=descs)


def values(fd):
    return {name: d["value"] for name, d in read_stats(fd)["stats"].items()}


# ------------------------------------------------------------------ NMI
NMI_HANDLER = " mov %bl, %al\n out %al, $0x81\n inc %bl\n mov $0x44, %al\n out %al, $0x82\n iret\n"
NMI_MAIN = " mov $1, %bl\n mov $0x52, %al\n out %al, $0x80\n sti\n1: inc %ecx\n jmp 1b\n"


def nmi_guest(mode):
    """Announce on port 0x80, then spin; the NMI handler writes its count to 0x81 and 0x44
    to 0x82 just before its IRET."""
    if mode == "real":
        return assemble(real16("movw $nmi, 8\n movw $0, 10\n" + TOUCH_STACK + NMI_MAIN + "nmi:\n" + NMI_HANDLER))
    return assemble(prot32(TOUCH_STACK + NMI_MAIN, {2: NMI_HANDLER}))


def nmi_events(m):
    ev = m.get(uapi.KVM_GET_VCPU_EVENTS, uapi.kvm_vcpu_events)
    return ev.nmi.injected, ev.nmi.pending, ev.nmi.masked


def nmi_scenario(sc, mode):
    """The exits, NMI events and nmi_injections after each step of the guest."""
    m = Machine(sc, nmi_guest(mode), mode=mode)
    stats_fd = sc.ioctl(m.vcpu_fd, uapi.KVM_GET_STATS_FD, 0)
    log = []
    try:
        def note(what):
            log.append((what, nmi_events(m), values(stats_fd)["nmi_injections"]))

        def step():
            rec = m.step()
            note((rec["reason"], rec.get("port"), rec.get("data")))

        def nmi(n=1):
            for _ in range(n):
                assert sc.ioctl(m.vcpu_fd, uapi.KVM_NMI, 0) == 0
            note("nmi x%d" % n)

        step()
        nmi()
        step()
        nmi()               # arrives while the handler runs: waits for its IRET
        step()
        step()
        step()
        nmi(3)              # three while blocked: one is latched
        step()
        step()
        m.run.immediate_exit = 1
        note(m.kvm_run().get("errno"))
    finally:
        syscalls.close(stats_fd) if sc is syscalls else os.close(stats_fd)
        m.close()
    return log


NMI_EXPECTED = [
    (("IO", "0x80", "52"), (0, 0, 0), 0),
    ("nmi x1", (0, 1, 0), 0),
    (("IO", "0x81", "01"), (0, 0, 1), 1),           # the handler runs with NMIs blocked
    ("nmi x1", (0, 1, 1), 1),
    (("IO", "0x82", "44"), (0, 1, 1), 1),           # no nested NMI
    (("IO", "0x81", "02"), (0, 0, 1), 2),           # delivered right after the IRET
    (("IO", "0x82", "44"), (0, 0, 1), 2),
    ("nmi x3", (0, 1, 1), 2),
    (("IO", "0x81", "03"), (0, 0, 1), 3),
    (("IO", "0x82", "44"), (0, 0, 1), 3),
    ("EINTR", (0, 0, 1), 3),
]


@pytest.mark.host
def test_host_nmi_real_mode():
    assert nmi_scenario(rawvmm.HOST, "real") == NMI_EXPECTED


def test_soft_nmi_protected_mode(soft_kvm, soft_mmu):
    assert nmi_scenario(syscalls, "prot32") == NMI_EXPECTED


def test_soft_nmi_real_mode(soft_kvm):
    assert nmi_scenario(syscalls, "real") == NMI_EXPECTED


@pytest.mark.parametrize("sc", BACKENDS)
def test_nmi_pending_limit_and_set_events(sc, request):
    """Two NMIs can wait while none runs; SET_VCPU_EVENTS restores pending and masked."""
    if sc is syscalls:
        request.getfixturevalue("soft_kvm")
    m = Machine(sc, b"\xf4", mode="real")
    try:
        assert sc.ioctl(m.kvm_fd, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_USER_NMI) == 1
        for _ in range(3):
            sc.ioctl(m.vcpu_fd, uapi.KVM_NMI, 0)
        assert nmi_events(m) == (0, 2, 0)
        ev = m.get(uapi.KVM_GET_VCPU_EVENTS, uapi.kvm_vcpu_events)
        ev.nmi.pending, ev.nmi.masked = 1, 1
        sc.ioctl(m.vcpu_fd, uapi.KVM_SET_VCPU_EVENTS, ev)
        assert nmi_events(m) == (0, 1, 1)
        ev.flags &= ~uapi.KVM_VCPUEVENT_VALID_NMI_PENDING
        ev.nmi.pending, ev.nmi.masked = 0, 0
        sc.ioctl(m.vcpu_fd, uapi.KVM_SET_VCPU_EVENTS, ev)     # pending kept without the flag
        assert nmi_events(m) == (0, 1, 0)
    finally:
        m.close()


def test_soft_set_events_nmi_injected(soft_kvm):
    """An NMI restored as injected is delivered on entry without counting a new injection."""
    m = Machine(syscalls, nmi_guest("prot32"), mode="prot32")
    try:
        m.step()
        ev = m.get(uapi.KVM_GET_VCPU_EVENTS, uapi.kvm_vcpu_events)
        ev.nmi.injected = 1
        syscalls.ioctl(m.vcpu_fd, uapi.KVM_SET_VCPU_EVENTS, ev)
        assert nmi_events(m) == (1, 0, 0)
        assert m.step()["port"] == "0x81"
        assert nmi_events(m) == (0, 0, 1)
        from kvmpy.kernel import kvm_main
        vcpu = kvm_main.fs.fdget(m.vcpu_fd).private_data
        assert vcpu.stat["nmi_injections"] == 0
    finally:
        m.close()


# ------------------------------------------------------------------ statistics
VCPU_NAMES = {"exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits", "irq_window_exits", "signal_exits",
              "request_irq_exits", "pf_taken", "pf_fixed", "pf_emulate", "pf_guest", "tlb_flush", "invlpg",
              "insn_emulation", "insn_emulation_fail", "hypercalls", "irq_injections", "nmi_injections"}
VM_NAMES = {"mmu_shadow_zapped", "mmu_pte_write", "mmu_pde_zapped", "mmu_flooded", "mmu_recycled",
            "mmu_cache_miss", "remote_tlb_flush"}

STATS_GUEST = prot32(" mov $0x41, %al\n out %al, $0x80\n hlt\n movl 0xd0000000, %eax\n"
                     " movl %eax, 0x9000\n hlt\n")


def _stats_run(sc):
    """Stats files of a VM and its vCPU, read before and after the stats guest runs."""
    m = Machine(sc, assemble(STATS_GUEST))
    close = syscalls.close if sc is syscalls else os.close
    fds = [sc.ioctl(m.vm_fd, uapi.KVM_GET_STATS_FD, 0), sc.ioctl(m.vcpu_fd, uapi.KVM_GET_STATS_FD, 0)]
    try:
        before = [read_stats(fd) for fd in fds]
        m.until("HLT")
        m.until("HLT")
        after = [read_stats(fd) for fd in fds]
    finally:
        for fd in fds:
            close(fd)
        m.close()
    return before, after


def _layout(s):
    return {k: s[k] for k in ("flags", "name_size", "id_offset", "desc_offset")}


@pytest.mark.host
def test_stats_layout_matches_host(soft_kvm):
    """The same reader parses both; kvmpy's header and each of its descriptors are the host's."""
    (host_vm, host_vcpu), _ = _stats_run(rawvmm.HOST)
    (soft_vm, soft_vcpu), _ = _stats_run(syscalls)
    for host, soft, names in ((host_vm, soft_vm, VM_NAMES), (host_vcpu, soft_vcpu, VCPU_NAMES)):
        assert _layout(soft) == _layout(host)
        assert soft["id"].split("/")[1:] == host["id"].split("/")[1:]      # "kvm-<pid>[/vcpu-0]"
        assert soft["data_offset"] == soft["desc_offset"] + soft["num_desc"] * (16 + soft["name_size"])
        assert set(soft["stats"]) == names and names <= set(host["stats"])
        for name, d in soft["stats"].items():
            assert {k: v for k, v in d.items() if k != "value"} == \
                {k: v for k, v in host["stats"][name].items() if k != "value"}, name
        host_order = [n for n in host["stats"] if n in names]
        assert list(soft["stats"]) == host_order


def test_soft_stats_live(soft_kvm, soft_mmu):
    """os.pread on the descriptor sees the counters move while the guest runs."""
    (vm0, vcpu0), (vm1, vcpu1) = _stats_run(syscalls)
    assert vm0["id"] == "kvm-%d" % os.getpid() and vcpu0["id"] == vm0["id"] + "/vcpu-0"
    assert all(d["value"] == 0 for d in vcpu0["stats"].values())
    v = {n: d["value"] for n, d in vcpu1["stats"].items()}
    assert v["io_exits"] == 1 and v["halt_exits"] == 2 and v["mmio_exits"] == 1
    assert v["insn_emulation"] >= 1 and v["pf_emulate"] >= 1
    assert v["pf_taken"] >= v["pf_fixed"] + v["pf_emulate"] and v["pf_fixed"] >= 2
    assert v["exits"] >= v["io_exits"] + v["halt_exits"] + v["pf_taken"]


@pytest.mark.host
def test_stats_user_exits_match_host(soft_kvm):
    """The exits user space sees are counted alike: halt and mmio exits. (Not io_exits: KVM
    counts those in the VMX/SVM I/O exit handler, which the host's kvm_pvm, running the guest
    in the emulator, never reaches -- it reports 0 for this guest's OUT.)"""
    keys = ("halt_exits", "mmio_exits")
    (_, _), (_, host) = _stats_run(rawvmm.HOST)
    (_, _), (_, soft) = _stats_run(syscalls)
    assert [soft["stats"][k]["value"] for k in keys] == [host["stats"][k]["value"] for k in keys]


def test_soft_stats_file_semantics(soft_kvm):
    """Read-only, ENOTTY for ioctls, sequential read() of the whole image, and the file keeps
    the VM alive after its other descriptors are closed."""
    m = Machine(syscalls, assemble(STATS_GUEST))
    assert syscalls.ioctl(m.kvm_fd, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_BINARY_STATS_FD) == 1
    fd = syscalls.ioctl(m.vcpu_fd, uapi.KVM_GET_STATS_FD, 0)
    vm_fd = syscalls.ioctl(m.vm_fd, uapi.KVM_GET_STATS_FD, 0)
    try:
        m.until("HLT")
        with pytest.raises(OSError) as e:
            os.write(fd, b"x")
        assert e.value.errno == errno.EBADF
        with pytest.raises(OSError) as e:
            syscalls.ioctl(fd, uapi.KVM_RUN, 0)
        assert e.value.errno == errno.ENOTTY
        s = read_stats(fd)
        whole = os.read(fd, 1 << 16)
        assert len(whole) == s["data_offset"] + 8 * s["num_desc"]
        assert whole == os.pread(fd, len(whole), 0)
        m.close()                                   # VM, vCPU and /dev/kvm descriptors closed
        assert values(fd)["halt_exits"] == 1
        assert set(values(vm_fd)) == VM_NAMES
    finally:
        syscalls.close(fd)
        syscalls.close(vm_fd)


def test_soft_remote_tlb_flush_on_dirty_log(soft_kvm, soft_mmu):
    """Harvesting a dirty log write-protects the pages again: one remote TLB flush."""
    m = Machine(syscalls, assemble(prot32(" movl $1, 0x200000\n hlt\n")))
    fd = syscalls.ioctl(m.vm_fd, uapi.KVM_GET_STATS_FD, 0)
    try:
        logged = m.memory(1 << 16)
        m.set_slot(1, 0x200000, logged, flags=uapi.KVM_MEM_LOG_DIRTY_PAGES)
        m.until("HLT")
        assert values(fd)["remote_tlb_flush"] == 0
        assert m.dirty_log(1, 16) == [0]
        assert values(fd)["remote_tlb_flush"] == 1
    finally:
        syscalls.close(fd)
        m.close()


# ------------------------------------------------------------------ KVM_TRANSLATE
PD, PT, PT2 = 0x10000, 0x11000, 0x15000
P, RW, US = 1, 2, 4
CR0_PG = 1 << 31


def _paging_tables(ram):
    """32-bit paging with 4 KiB pages: at 4 MiB supervisor RW, user RO and not-present
    pages; at 8 MiB a page outside every memslot; at 12 MiB a page table outside RAM;
    nothing below 4 MiB."""
    def put(addr, value):
        ram[addr:addr + 4] = value.to_bytes(4, "little")
    put(PD + 4 * 1, PT | P | RW | US)
    put(PD + 4 * 2, PT2 | P | RW)
    put(PD + 4 * 3, 0x7FF00000 | P | RW)
    put(PT + 4 * 0, 0x12000 | P | RW)
    put(PT + 4 * 1, 0x13000 | P | US)
    put(PT + 4 * 2, 0x14000)
    put(PT2 + 4 * 0xAB, 0x40000000 | P)


TRANSLATE_ADDRS = (0x400123, 0x401FFF, 0x402000, 0x8ABCDE, 0xC00000, 0x1234, 0x1_0000_1234)


def translate_all(sc, paging):
    m = Machine(sc, b"\xf4", mode="prot32" if paging else "real")
    try:
        if paging:
            _paging_tables(m.ram)
            sregs = m.get(uapi.KVM_GET_SREGS, uapi.kvm_sregs)
            sregs.cr3, sregs.cr0 = PD, sregs.cr0 | CR0_PG
            sc.ioctl(m.vcpu_fd, uapi.KVM_SET_SREGS, sregs)
        out = []
        for la in TRANSLATE_ADDRS:
            tr = uapi.kvm_translation(linear_address=la)
            sc.ioctl(m.vcpu_fd, uapi.KVM_TRANSLATE, tr)
            out.append((hex(la), hex(tr.physical_address), tr.valid, tr.writeable, tr.usermode))
        return out
    finally:
        m.close()


TRANSLATE_PAGING = [
    ("0x400123", "0x12123", 1, 1, 0),
    ("0x401fff", "0x13fff", 1, 1, 0),           # user, read-only: KVM still says writeable, not user
    ("0x402000", "0xffffffffffffffff", 0, 1, 0),
    ("0x8abcde", "0x40000cde", 1, 1, 0),        # valid: KVM does not ask whether it is RAM
    ("0xc00000", "0xffffffffffffffff", 0, 1, 0),
    ("0x1234", "0xffffffffffffffff", 0, 1, 0),
    ("0x100001234", "0xffffffffffffffff", 0, 1, 0),
]


@pytest.mark.parametrize("sc", BACKENDS)
def test_translate_without_paging(sc, request):
    """Without paging the address is returned as given, even above 4 GiB (nonpaging_gva_to_gpa)."""
    if sc is syscalls:
        request.getfixturevalue("soft_kvm")
    assert translate_all(sc, paging=False) == [(hex(a), hex(a), 1, 1, 0) for a in TRANSLATE_ADDRS]


def test_soft_translate_with_paging(soft_kvm, soft_mmu):
    """Checked against KVM's rules only: the host's kvm_pvm keeps CR0.PG clear (KVM_SET_SREGS
    and a guest MOV to CR0 both leave it 0), so it has no guest page tables to walk."""
    assert translate_all(syscalls, paging=True) == TRANSLATE_PAGING


def test_soft_translate_sets_accessed_bit(soft_kvm):
    """The walk is the guest's: it sets the Accessed bits of the entries it used."""
    m = Machine(syscalls, b"\xf4")
    try:
        _paging_tables(m.ram)
        sregs = m.get(uapi.KVM_GET_SREGS, uapi.kvm_sregs)
        sregs.cr3, sregs.cr0 = PD, sregs.cr0 | CR0_PG
        syscalls.ioctl(m.vcpu_fd, uapi.KVM_SET_SREGS, sregs)
        tr = uapi.kvm_translation(linear_address=0x400000)
        syscalls.ioctl(m.vcpu_fd, uapi.KVM_TRANSLATE, tr)
        assert m.ram[PT] & 0x20 and m.ram[PD + 4] & 0x20
        assert ctypes.sizeof(tr) == 24
    finally:
        m.close()
