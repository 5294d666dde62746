"""The kvm-ioctls-style API, on the host's /dev/kvm (the oracle) and on kvmpy's soft KVM.

The same tiny 16-bit guest runs through both backends: it writes a byte to COM1, reads
one back, writes and reads MMIO beyond RAM, and halts. The test answers the IN and the
MMIO read through the exit objects, as a VMM does, and checks the guest received them.
"""

import errno

import pytest

from kvmpy.api import GuestMemory, GuestMemoryError, IoDirection, Kvm, VcpuExit
from kvmpy.uapi import kvm as uapi

RAM = 1 << 20
CODE_ADDR = 0x1000
GUEST = bytes([
    0xBA, 0xF8, 0x03,                    # mov dx, 0x3f8
    0xB0, 0x4B,                          # mov al, 'K'
    0xEE,                                # out dx, al
    0xEC,                                # in al, dx
    0x88, 0xC3,                          # mov bl, al
    0xB8, 0xFF, 0xFF,                    # mov ax, 0xffff
    0x8E, 0xD8,                          # mov ds, ax    (base 0xffff0)
    0xC7, 0x06, 0x20, 0x00, 0x34, 0x12,  # mov word [0x20], 0x1234   -> 0x100010, no RAM
    0x8B, 0x0E, 0x20, 0x00,              # mov cx, [0x20]
    0xF4,                                # hlt
])
MMIO_ADDR = 0xFFFF0 + 0x20


@pytest.fixture(params=[
    pytest.param("host", marks=pytest.mark.host),
    "soft",
])
def kvm(request):
    with Kvm(request.param) as k:
        yield k


@pytest.fixture
def machine(kvm):
    """A VM with 1 MiB of RAM and vCPU 0 at CS:IP 0:CODE_ADDR running GUEST."""
    with GuestMemory(RAM) as mem:
        vm = kvm.create_vm()
        vm.set_user_memory_region(0, 0, RAM, mem.host_addr)
        vcpu = vm.create_vcpu(0)
        vcpu.set_cpuid2(kvm.get_supported_cpuid())
        mem.write(CODE_ADDR, GUEST)
        sregs = vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rflags = CODE_ADDR, 2
        vcpu.set_regs(regs)
        yield vm, vcpu, mem
        vcpu.close()
        vm.close()


def test_system_queries(kvm):
    assert kvm.api_version() == 12
    assert kvm.vcpu_mmap_size() == 3 * 4096
    assert kvm.check_extension(uapi.KVM_CAP_USER_MEMORY) == 1
    assert kvm.check_extension(uapi.KVM_CAP_IMMEDIATE_EXIT) == 1
    assert kvm.check_extension(0xFFFFF) == 0  # unknown capability: not an error
    cpuid = kvm.get_supported_cpuid()
    leaves = {e.function for e in cpuid.entries[:cpuid.nent]}
    assert {0, 1, 0x80000000, 0x80000001} <= leaves


def test_guest_io_mmio_and_hlt(machine):
    vm, vcpu, mem = machine
    exits = []
    for _ in range(10):
        e = vcpu.run()
        exits.append(e)
        if isinstance(e, VcpuExit.Io) and e.is_in:
            e.set_data(0x5A)
        elif isinstance(e, VcpuExit.Mmio) and not e.is_write:
            e.set_data(0xBEEF)
        elif isinstance(e, VcpuExit.Hlt):
            break
    assert [type(e) for e in exits] == [VcpuExit.Io, VcpuExit.Io, VcpuExit.Mmio,
                                        VcpuExit.Mmio, VcpuExit.Hlt]
    out, inp, mw, mr, _ = exits
    assert (out.direction, out.port, out.size, out.data) == (IoDirection.OUT, 0x3F8, 1, b"K")
    assert (inp.direction, inp.port, inp.size, inp.count) == (IoDirection.IN, 0x3F8, 1, 1)
    assert (mw.addr, mw.is_write, mw.data, mw.value) == (MMIO_ADDR, True, b"\x34\x12", 0x1234)
    assert (mr.addr, mr.is_write, mr.size) == (MMIO_ADDR, False, 2)
    regs = vcpu.get_regs()
    assert regs.rbx & 0xFF == 0x5A     # the IN data reached AL
    assert regs.rcx & 0xFFFF == 0xBEEF  # the MMIO read data reached CX
    assert regs.rip == CODE_ADDR + len(GUEST)


def test_exit_answers_are_checked(machine):
    vm, vcpu, mem = machine
    out = vcpu.run()
    with pytest.raises(ValueError):
        out.set_data(1)  # an OUT needs no answer
    inp = vcpu.run()
    with pytest.raises(ValueError):
        inp.set_data(b"\x01\x02")  # wrong size


def test_immediate_exit_fails_run_with_eintr(machine):
    vm, vcpu, mem = machine
    vcpu.immediate_exit = True
    with pytest.raises(OSError) as info:
        vcpu.run()
    assert info.value.errno == errno.EINTR
    vcpu.immediate_exit = False
    assert isinstance(vcpu.run(), VcpuExit.Io)


def test_errors_carry_the_kernels_errno(kvm, machine):
    vm, vcpu, mem = machine
    with pytest.raises(OSError) as info:
        vm.create_vcpu(0)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(OSError) as info:
        vm.set_user_memory_region(1, 0x200000, 100, mem.host_addr)  # size not page-sized
    assert info.value.errno == errno.EINVAL


def test_regs_round_trip(machine):
    vm, vcpu, mem = machine
    regs = vcpu.get_regs()
    regs.rax, regs.r15 = 0x1122334455667788, 7
    vcpu.set_regs(regs)
    got = vcpu.get_regs()
    assert (got.rax, got.r15, got.rip) == (0x1122334455667788, 7, CODE_ADDR)
    sregs = vcpu.get_sregs()
    assert sregs.cr0 & 1 == 0 and sregs.cs.selector == 0


def test_msrs(machine):
    vm, vcpu, mem = machine
    sysenter_cs = 0x174
    assert vcpu.set_msrs({sysenter_cs: 0x10}) == 1
    assert vcpu.get_msrs([sysenter_cs]) == {sysenter_cs: 0x10}


def test_unknown_backend_and_host_params():
    with pytest.raises(ValueError, match="unknown backend"):
        Kvm("qemu")
    with pytest.raises(ValueError, match="only for the soft backend"):
        Kvm("host", params={"ept": False})


def test_guest_memory_helpers():
    with GuestMemory(8192, base=0x10000) as mem:
        assert mem.host_addr != 0
        mem.write_int(0x10010, 4, 0xDEADBEEF)
        assert mem.read(0x10010, 4) == b"\xef\xbe\xad\xde"
        assert mem.read_int(0x10010, 2) == 0xBEEF
        mem.fill(0x10010, 2, 0xAA)
        assert mem.read_int(0x10010, 4) == 0xDEADAAAA
        assert mem.contains(0x11FFF) and not mem.contains(0x12000)
        for gpa, n in ((0xFFFF, 1), (0x11FFF, 2)):
            with pytest.raises(GuestMemoryError):
                mem.read(gpa, n)
    with pytest.raises(ValueError):
        GuestMemory(1000)
