"""KVM_TRANSLATE: guest-virtual to guest-physical translation, on kvmpy and on the host."""

import ctypes

import pytest

from kvmpy import syscalls
from kvmpy.uapi import kvm as uapi
from tests.support.guestvm import BACKENDS, Machine


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
