"""Writes to a shadowed guest page table that KVM cannot emulate (issue 7, the fuzz guests
whose stacks run into their page tables: seed 3 guest 3 on vmx/shadow).

Under shadow paging every guest page-table page is write-protected and a write to it is
emulated.  An exception frame pushed there is no instruction's write: the #PF exit
interrupted the event's delivery, and emulating the instruction at RIP would not deliver
it.  KVM then unprotects the page and re-enters, and the processor delivers the event
itself (x86_emulate_instruction -> kvm_unprotect_and_retry_on_failure); likewise when its
emulator lacks the instruction (INT n outside real mode).  kvmpy shut the guest down.
KVM does not retry when the page translates the very address written
(write_fault_to_shadow_pgtable: the retry's walk would protect it again): the event cannot
be delivered, which kvmpy answers as kvm_prepare_event_vectoring_exit does (a triple fault).

Each guest maps 1 GiB-2 GiB through a second page directory at 0x6000, reads through it
(so that KVM shadows that page), then raises an event with the stack at 0x7000: the frame
lands on the second directory, which does not translate the stack.  The ``own-pd`` cases
put the stack on the page directory that does.  The host's answers (AMD EPYC Zen 3, Linux
6.18, kvm_pvm) are recorded beside kvmpy's; kvm_pvm delivers events without the shadow
MMU and cannot run INT n outside real mode at all (an emulation failure even in plain RAM),
so where it differs from KVM on VMX/SVM silicon kvmpy follows the latter.
"""

import struct

import pytest

from kvmpy import syscalls
from tests.reliability import guests
from tests.support import rawvmm

BOUND = 20.0
SECOND_PD = [(guests.PDPT + 8, struct.pack("<Q", 0x6007)), (0x6000, struct.pack("<Q", 0x87))]
READ_1G = "a00000004000000000"              # mov al, [0x40000000]
HANDLED = ("hlt", guests.HANDLER + 1)

# name: (code, memory, kvmpy's answer by MMU, the host's answer, the RIP in the frame or None)
CASES = {
    "ud2-frame-on-other-pd": (READ_1G + "0f0b", SECOND_PD, {"tdp": HANDLED, "shadow": HANDLED}, HANDLED, 0x7009),
    "int-frame-on-other-pd": (READ_1G + "cd40", SECOND_PD, {"tdp": HANDLED, "shadow": HANDLED},
                              ("internal-error/1", 0x7009), 0x700B),
    # mov rsp, 0x6000; ud2: the frame on the directory that maps the stack
    "ud2-frame-on-own-pd": ("48c7c4006000000f0b", [], {"tdp": HANDLED, "shadow": ("shutdown", 0x7007)},
                            HANDLED, None),
    # the control: an instruction's own write to the table is emulated
    "push-on-other-pd": (READ_1G + "50f4", SECOND_PD, {"tdp": ("hlt", 0x700B), "shadow": ("hlt", 0x700B)},
                         ("hlt", 0x700B), None),
}


def run_case(sc, name):
    code, memory, _, _, _ = CASES[name]
    outcome, rip, frame = guests.run_fixed(sc, "long", bytes.fromhex(code), memory, frame=8, bound=BOUND)
    return (outcome, rip), struct.unpack("<Q", frame)[0]


@pytest.mark.parametrize("name", CASES)
def test_page_table_write_during_delivery(soft_kvm, soft_mmu, name):
    answer, frame_rip = run_case(syscalls, name)
    assert answer == CASES[name][2][soft_mmu]
    if answer == HANDLED and CASES[name][4] is not None:
        assert frame_rip == CASES[name][4]


@pytest.mark.host
@pytest.mark.parametrize("name", CASES)
def test_page_table_write_during_delivery_on_the_host(name):
    assert run_case(rawvmm.HOST, name)[0] == CASES[name][3]
