"""User mode with the GDT, IDT and TSS on supervisor-only pages (kvmpy/guests/userpriv.S):
the processor's implicit supervisor-mode accesses (SDM vol. 3, 4.6).

Linux keeps its descriptor tables on supervisor pages, so a segment load, an INT or an
exception at CPL 3 must read them with supervisor rights (found booting Linux: every
interrupt taken in user mode page-faulted).  The host's /dev/kvm here cannot run the guest
(its emulator answers the user-mode INT with #UD), so QEMU TCG's run is the oracle,
committed in tests/data/userpriv.qemu.json and checked against QEMU where it is installed:

    KVMPY_RECORD=1 pytest tests/guests/test_userpriv.py -k qemu
"""

import pytest

from tests.support import rawvmm
from tests.support.qemuflat import check_qemu_run, qemu_missing, recorded_run
from kvmpy.guests import load_image

CONSOLE = ("userpriv: tables on supervisor pages\r\nuserpriv: INT 0x80 from CPL 3\r\n"
           "userpriv: #PF from CPL 3, DS accessed\r\n")


@pytest.mark.skipif(qemu_missing(), reason="QEMU is not installed")
def test_qemu_run():
    check_qemu_run("userpriv", CONSOLE)


def test_soft_matches_qemu(soft_mmu):
    from kvmpy import syscalls
    reference = recorded_run("userpriv")

    result = rawvmm.run_guest(load_image("userpriv"), syscalls)

    assert (result["console"], result["exit_value"]) == (reference["console"], reference["exit_value"])
