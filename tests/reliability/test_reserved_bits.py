"""Reserved bits in a page-table entry are a #PF with PFERR_RSVD (found by the guest fuzzer,
issue 7: seed 5 guest 3, seed 3 guests 3 and 99).

A long-mode guest whose stack ran down into its own page directory wrote exception frames
over its PDEs; a return address such as 0xee0a2c9, read as a 2-MByte PDE, is present with
bits 13 and 15 set, which the SDM reserves.  The host's walk faulted on it (and the guest
ended in a triple fault); kvmpy's walker ignored reserved bits, mapped the page at 0xee00000,
outside every memslot, and ended in an emulation failure fetching the handler from there.

Each reproducer writes one PDE (entry 8: 16 MiB) and jumps to 16 MiB + the handler's
offset: a PDE that maps is ``hlt`` at 0x1008000, a reserved one #PF to ``hlt`` at 0x8000,
with the error code in the frame.  The host's answers (AMD EPYC Zen 3, Linux 6.18,
kvm_pvm) are recorded; with the ``host`` marker the cases also run live.
"""

import struct

import pytest

from kvmpy import syscalls
from kvmpy.hw import paging
from kvmpy.hw.events import Fault
from tests.reliability import guests
from tests.support import rawvmm

BOUND = 20.0
JUMP = bytes.fromhex("b800800001ffe0")       # mov eax, 0x1008000; jmp rax
MAPPED = ("hlt", 0x1008000 + 1, 0x00E0FF01008000B8)      # the frame slot holds code bytes
RSVD_FETCH = ("hlt", guests.HANDLER + 1, paging.PFERR_PRESENT | paging.PFERR_RSVD)   # NXE is 0

# name: (the 2-MByte PDE for 16 MiB, the host's outcome, RIP and the quadword at RSP)
CASES = {
    "pde-2m": (0x87, ) + MAPPED,
    "pde-2m-bit13": (0x2087, ) + RSVD_FETCH,
    "pde-2m-bit20": (0x100087, ) + RSVD_FETCH,
    "pde-2m-bit51": (1 << 51 | 0x87, ) + RSVD_FETCH,          # above every kvmpy model's MAXPHYADDR
    "pde-2m-nx-without-nxe": (1 << 63 | 0x87, ) + RSVD_FETCH,
    "pde-2m-bit52": (1 << 52 | 0x87, ) + MAPPED,             # bits 62:52 are ignored
    "pde-2m-bit8": (0x187, ) + MAPPED,                       # G in a leaf
}


def run_case(sc, name):
    pde = CASES[name][0]
    outcome, rip, frame = guests.run_fixed(sc, "long", JUMP, [(guests.PD64 + 8 * 8, struct.pack("<Q", pde))],
                                           frame=8, bound=BOUND)
    return outcome, rip, struct.unpack("<Q", frame)[0]


@pytest.mark.parametrize("name", CASES)
def test_reserved_pde_bits_fault_as_on_the_host(soft_kvm, soft_mmu, name):
    assert run_case(syscalls, name) == CASES[name][1:]


# the PDE bits that are address bits, reserved only above the guest's MAXPHYADDR
ADDRESS_BIT = {"pde-2m-bit51": 51}


@pytest.mark.host
@pytest.mark.parametrize("name", CASES)
def test_reserved_pde_bits_on_the_host(name):
    """MAXPHYADDR is the host's (its supported CPUID 0x80000008, which the guest gets; with
    EPT/NPT the processor's walk uses the host's own): where it is 52 (AMD Genoa, some
    Intel servers) bit 51 is an address bit and the case tests nothing."""
    maxphyaddr = rawvmm.supported_entry(rawvmm.HOST, 0x80000008).eax & 0xFF
    if name in ADDRESS_BIT and ADDRESS_BIT[name] < maxphyaddr:
        pytest.skip("bit %d is an address bit with the host's MAXPHYADDR %d" % (ADDRESS_BIT[name], maxphyaddr))
    assert run_case(rawvmm.HOST, name) == CASES[name][1:]


# ------------------------------------------------------------------ the walker's masks
class Memory(dict):
    def read(self, gpa, size):
        return self.get(gpa, 0)

    def write(self, gpa, size, value):
        self[gpa] = value


CR0 = 0x80010011
LONG = dict(cr4=0x20, efer=0x500)


@pytest.mark.parametrize("entries,lin,mode,options,rsvd", [
    # a 1-GByte PDPTE: bits 29:13 reserved with 1-GByte pages; PS itself reserved without
    ({0x1000: 0x2003, 0x2008: 0x40000083}, 1 << 30, LONG, {}, False),
    ({0x1000: 0x2003, 0x2008: 0x40002083}, 1 << 30, LONG, {}, True),
    ({0x1000: 0x2003, 0x2008: 0x40000083}, 1 << 30, LONG, {"gbpages": False}, True),
    # PS in a PML4E
    ({0x1000: 0x2083}, 0, LONG, {}, True),
    # a table entry above MAXPHYADDR
    ({0x1000: 1 << 40 | 0x2003}, 0, LONG, {"maxphyaddr": 40}, True),
    ({0x1000: 1 << 39 | 0x2003, 1 << 39 | 0x2000: 0x40000083}, 0, LONG, {"maxphyaddr": 40}, False),
    # PAE: a 2-MByte PDE's bits 20:13, bits 62:MAXPHYADDR
    ({0x1000: 0x2001, 0x2000: 0x200083}, 0, dict(cr4=0x20, efer=0), {}, False),
    ({0x1000: 0x2001, 0x2000: 0x202083}, 0, dict(cr4=0x20, efer=0), {}, True),
    ({0x1000: 0x2001, 0x2000: 1 << 60 | 0x200083}, 0, dict(cr4=0x20, efer=0), {}, True),
    # 32-bit paging, a 4-MByte PDE: bit 21, and PSE-36 bits at or above MAXPHYADDR
    ({0x1000: 0x400083}, 0, dict(cr4=0x10, efer=0), {}, False),
    ({0x1000: 0x600083}, 0, dict(cr4=0x10, efer=0), {}, True),
    ({0x1000: 0x420083}, 0, dict(cr4=0x10, efer=0), {"maxphyaddr": 36}, True),
    ({0x1000: 0x420083}, 0, dict(cr4=0x10, efer=0), {"maxphyaddr": 40}, False),
])
def test_walker_reserved_bits(entries, lin, mode, options, rsvd):
    mem = Memory(entries)
    if not rsvd:
        paging.walk(lin, 0, CR0, 0x1000, mode["cr4"], mode["efer"], mem.read, mem.write, **options)
        return
    with pytest.raises(Fault) as e:
        paging.walk(lin, 0, CR0, 0x1000, mode["cr4"], mode["efer"], mem.read, mem.write, **options)
    assert (e.value.vector, e.value.error_code) == (14, paging.PFERR_PRESENT | paging.PFERR_RSVD)
