"""The page walker (kvmpy.hw.paging.walk) on hand-built tables: every paging mode and page
size, accessed/dirty bits, and the #PF error codes of the SDM (vol. 3, 4.7)."""

import pytest

from kvmpy.hw import paging
from kvmpy.hw.events import Fault
from kvmpy.hw.x86defs import CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, EFER_LMA, EFER_LME, EFER_NXE

P, RW, US, PS, A, D = 1, 2, 4, 0x80, 0x20, 0x40
NX = 1 << 63
CR0 = CR0_PE | CR0_PG | CR0_WP


class Memory:
    """Guest-physical memory as a dict of entries, recording A/D writes."""

    def __init__(self, entries):
        self.entries = dict(entries)

    def read(self, gpa, size):
        return self.entries.get(gpa, 0)

    def write(self, gpa, size, value):
        self.entries[gpa] = value


def walk(mem, lin, access=0, cr4=0, efer=0, cr3=0x1000, cr0=CR0):
    return paging.walk(lin, access, cr0, cr3, cr4, efer, mem.read, mem.write)


def test_32bit_4k_page_sets_accessed_and_dirty():
    mem = Memory({0x1000 + 1 * 4: 0x2000 | P | RW, 0x2000 + 2 * 4: 0x5000 | P | RW})
    t = walk(mem, (1 << 22) | (2 << 12) | 0x123, paging.PFERR_WRITE)
    assert t.gpa == 0x5000 and t.size == 0x1000 and t.writable
    assert mem.entries[0x1000 + 4] & A and mem.entries[0x2000 + 8] & (A | D) == A | D


def test_32bit_4m_page_with_pse():
    mem = Memory({0x1000 + 3 * 4: 0x00C00000 | P | RW | PS})
    t = walk(mem, (3 << 22) | 0x12345, cr4=CR4_PSE)
    assert t.gpa == 0x00C12000 and t.size == 4 << 20
    # without CR4.PSE the PS bit is ignored and the entry points at a page table
    mem2 = Memory({0x1000 + 3 * 4: 0x00C00000 | P | RW | PS, 0x00C00000 + 0x12 * 4: 0x7000 | P})
    assert walk(mem2, (3 << 22) | 0x12345).gpa == 0x7000


def test_pae_2m_page():
    mem = Memory({0x1000 + 1 * 8: 0x2000 | P, 0x2000 + 5 * 8: 0x40000000 | P | RW | PS})
    t = walk(mem, (1 << 30) | (5 << 21) | 0x54321, cr4=CR4_PAE)
    assert t.gpa == 0x40054000 and t.size == 2 << 20


def test_4level_1g_page_and_nx():
    mem = Memory({0x1000: 0x2000 | P | RW | US, 0x2000 + 2 * 8: 0x80000000 | P | RW | US | PS | NX})
    efer = EFER_LME | EFER_LMA | EFER_NXE
    t = walk(mem, (2 << 30) | 0x123456, cr4=CR4_PAE, efer=efer)
    assert t.gpa == 0x80123000 and t.size == 1 << 30 and t.nx
    with pytest.raises(Fault) as e:
        walk(mem, (2 << 30), paging.PFERR_FETCH, cr4=CR4_PAE, efer=efer)
    assert e.value.vector == 14 and e.value.error_code == paging.PFERR_FETCH | P and e.value.cr2 == 2 << 30


@pytest.mark.parametrize("access,entry,code", [
    (0, 0, 0),                                                     # not present, read
    (paging.PFERR_WRITE, 0, paging.PFERR_WRITE),                   # not present, write
    (paging.PFERR_WRITE, P, paging.PFERR_WRITE | P),               # read-only, CR0.WP
    (paging.PFERR_USER, P | RW, paging.PFERR_USER | P),            # supervisor page from user
])
def test_fault_error_codes(access, entry, code):
    mem = Memory({0x1000: 0x2000 | P | RW | US, 0x2000: 0x3000 | entry})
    with pytest.raises(Fault) as e:
        walk(mem, 0x234, access)
    assert e.value.error_code == code and e.value.cr2 == 0x234


def test_supervisor_write_to_readonly_page_without_wp():
    mem = Memory({0x1000: 0x2000 | P | RW, 0x2000: 0x3000 | P})
    assert walk(mem, 0, paging.PFERR_WRITE, cr0=CR0_PE | CR0_PG).gpa == 0x3000
