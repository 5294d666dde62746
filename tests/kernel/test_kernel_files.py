"""kvmpy's files: real, unique descriptors; close releases VMs and vCPUs; EBADF after close;
the vCPU mapping shares kvm_run with the kernel both ways."""

import ctypes
import errno
import mmap
import os

import pytest

from kvmpy import syscalls as S
from kvmpy import uapi
from kvmpy.kernel import fs, kvm_host


@pytest.fixture
def kvm(soft_kvm):
    fd = S.open("/dev/kvm")
    yield fd
    S.close(fd)


def test_descriptors_are_real_and_unique(kvm):
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    vcpus = [S.ioctl(vm, uapi.KVM_CREATE_VCPU, i) for i in range(3)]
    fds = [kvm, vm] + vcpus
    assert len(set(fds)) == len(fds)
    for fd in fds:
        os.fstat(fd)                      # a real open descriptor of this process
    assert os.get_inheritable(vm) is False  # O_CLOEXEC like the kernel's anon_inode_getfd
    for fd in vcpus + [vm]:
        S.close(fd)


def test_close_releases_vm_and_vcpus(kvm, soft_kvm):
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    kvm_obj = fs.fdget(vm).private_data
    vcpu = S.ioctl(vm, uapi.KVM_CREATE_VCPU, 0)
    S.close(vm)
    # the vCPU file still holds the VM
    assert kvm_obj in soft_kvm.vm_list
    regs = uapi.kvm_regs()
    S.ioctl(vcpu, uapi.KVM_GET_REGS, regs)
    assert regs.rip == 0xFFF0
    S.close(vcpu)
    assert kvm_obj not in soft_kvm.vm_list and kvm_obj.destroyed


@pytest.mark.parametrize("call", ["ioctl", "close", "mmap"])
def test_closed_descriptor_is_ebadf(kvm, call):
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    vcpu = S.ioctl(vm, uapi.KVM_CREATE_VCPU, 0)
    S.close(vcpu)
    with pytest.raises(OSError) as e:
        {"ioctl": lambda: S.ioctl(vcpu, uapi.KVM_RUN),
         "close": lambda: S.close(vcpu),
         "mmap": lambda: S.mmap(vcpu, 4096)}[call]()
    assert e.value.errno == errno.EBADF
    S.close(vm)


def test_foreign_close_is_detected(kvm):
    """A descriptor closed with os.close behind kvmpy's back no longer names the VM."""
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    os.close(vm)
    with pytest.raises(OSError) as e:
        S.ioctl(vm, uapi.KVM_CREATE_VCPU, 0)
    assert e.value.errno == errno.EBADF


def test_mmap_shares_kvm_run_both_ways(kvm):
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    vcpu_fd = S.ioctl(vm, uapi.KVM_CREATE_VCPU, 0)
    vcpu = fs.fdget(vcpu_fd).private_data
    size = S.ioctl(kvm, uapi.KVM_GET_VCPU_MMAP_SIZE)
    assert size == 3 * 4096
    m = S.mmap(vcpu_fd, size)
    run = uapi.kvm_run.from_buffer(m)
    # kernel -> user
    vcpu.run.exit_reason = uapi.KVM_EXIT_IO
    vcpu.run.io.port = 0x3F8
    vcpu.pio_data[0] = 0x41
    assert run.exit_reason == uapi.KVM_EXIT_IO and run.io.port == 0x3F8
    assert m[4096] == 0x41
    # user -> kernel
    run.immediate_exit = 1
    run.request_interrupt_window = 1
    assert vcpu.run.immediate_exit == 1 and vcpu.run.request_interrupt_window == 1
    # the descriptor itself maps the same pages (as a C program's mmap would)
    m2 = mmap.mmap(vcpu_fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    assert ctypes.c_uint32.from_buffer(m2, 8).value == uapi.KVM_EXIT_IO
    del run
    m.close()
    m2.close()
    S.close(vcpu_fd)
    S.close(vm)


def test_only_the_vcpu_file_maps(kvm):
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    for fd in (kvm, vm):
        with pytest.raises(OSError) as e:
            S.mmap(fd, 4096)
        assert e.value.errno == errno.ENODEV
    S.close(vm)


def test_ioctl_argument_conventions(kvm):
    """int args, in-place mutable buffers, copies for immutable bytes -- as fcntl.ioctl."""
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    vcpu = S.ioctl(vm, uapi.KVM_CREATE_VCPU, 0)
    buf = bytearray(144)
    assert S.ioctl(vcpu, uapi.KVM_GET_REGS, buf) == 0
    assert uapi.kvm_regs.from_buffer(buf).rip == 0xFFF0
    out = S.ioctl(vcpu, uapi.KVM_GET_REGS, bytes(144))
    assert isinstance(out, bytes) and uapi.kvm_regs.from_buffer_copy(out).rip == 0xFFF0
    out = S.ioctl(vcpu, uapi.KVM_GET_REGS, bytearray(144), False)
    assert isinstance(out, bytes) and uapi.kvm_regs.from_buffer_copy(out).rdx == 0x600
    with pytest.raises(ValueError):
        S.ioctl(vcpu, uapi.KVM_GET_REGS, bytes(2000))
    # a large mutable buffer is used in place (here: 300 cpuid entries)
    c = uapi.with_entries(uapi.kvm_cpuid2, 100)(nent=100)
    assert S.ioctl(kvm, uapi.KVM_GET_SUPPORTED_CPUID, c) == 0 and c.nent > 2
    # the request is masked to 32 bits like fcntl.ioctl's unsigned int
    assert S.ioctl(kvm, (1 << 32) | uapi.KVM_GET_API_VERSION) == 12
    S.close(vcpu)
    S.close(vm)


def test_other_paths_do_not_exist(soft_kvm):
    with pytest.raises(FileNotFoundError):
        S.open("/dev/kvmx")


def test_foreign_descriptors_go_to_the_host():
    r, w = os.pipe()
    with pytest.raises(OSError) as e:
        S.ioctl(r, uapi.KVM_GET_API_VERSION)
    assert e.value.errno == errno.ENOTTY
    S.close(r)
    S.close(w)
    with pytest.raises(OSError) as e:
        S.close(r)
    assert e.value.errno == errno.EBADF


def test_memslot_memory_is_user_memory_in_place(kvm, soft_kvm):
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    mem = mmap.mmap(-1, 0x4000)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    S.ioctl(vm, uapi.KVM_SET_USER_MEMORY_REGION, uapi.kvm_userspace_memory_region(0, 0, 0x10000, 0x4000, addr))
    kvm_obj = fs.fdget(vm).private_data
    gen = kvm_obj.memslots_generation
    slot = kvm_host.gfn_to_memslot(kvm_obj, 0x12)
    assert slot is not None and kvm_host.gfn_to_memslot(kvm_obj, 0x14) is None
    assert kvm_host.gfn_to_memslot(kvm_obj, 0xF) is None
    from kvmpy.kernel.x86.mmu import mmu
    mmu.kvm_write_guest(kvm_obj, 0x12005, 1, 0x5A)
    assert mem[0x2005] == 0x5A
    mem[7] = 9
    assert mmu.kvm_read_guest(kvm_obj, 0x10007, 1) == 9
    # move, then delete
    S.ioctl(vm, uapi.KVM_SET_USER_MEMORY_REGION, uapi.kvm_userspace_memory_region(0, 0, 0x20000, 0x4000, addr))
    assert kvm_host.gfn_to_memslot(kvm_obj, 0x12) is None and kvm_host.gfn_to_memslot(kvm_obj, 0x22) is not None
    S.ioctl(vm, uapi.KVM_SET_USER_MEMORY_REGION, uapi.kvm_userspace_memory_region(0, 0, 0, 0, 0))
    assert kvm_obj.memslots == {} and kvm_obj.memslots_generation == gen + 2
    del slot
    S.close(vm)


def test_unmapped_slot_memory_is_not_ram_not_a_crash(kvm, soft_kvm):
    from kvmpy.kernel.x86.mmu import mmu
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    S.ioctl(vm, uapi.KVM_SET_USER_MEMORY_REGION,
            uapi.kvm_userspace_memory_region(0, 0, 0, 0x1000, 0x10000000))   # accepted, like KVM
    kvm_obj = fs.fdget(vm).private_data
    assert kvm_host.hva_to_pfn(0x10000000, False) is None
    assert mmu.gpa_to_host(kvm_obj, 0, False) is None
    with pytest.raises(LookupError):
        mmu.kvm_read_guest(kvm_obj, 0, 1)
    S.close(vm)


def test_dirty_log(kvm, soft_kvm):
    vm = S.ioctl(kvm, uapi.KVM_CREATE_VM)
    mem = mmap.mmap(-1, 0x10000)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    S.ioctl(vm, uapi.KVM_SET_USER_MEMORY_REGION,
            uapi.kvm_userspace_memory_region(1, uapi.KVM_MEM_LOG_DIRTY_PAGES, 0, 0x10000, addr))
    kvm_obj = fs.fdget(vm).private_data
    kvm_host.mark_page_dirty(kvm_obj, 3)
    kvm_host.mark_page_dirty(kvm_obj, 9)
    bitmap = ctypes.c_uint64()
    log = uapi.kvm_dirty_log(slot=1)
    log.dirty_bitmap = ctypes.addressof(bitmap)
    S.ioctl(vm, uapi.KVM_GET_DIRTY_LOG, log)
    assert bitmap.value == (1 << 3) | (1 << 9)
    S.ioctl(vm, uapi.KVM_GET_DIRTY_LOG, log)
    assert bitmap.value == 0
    S.close(vm)
