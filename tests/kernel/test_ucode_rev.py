"""MSR_IA32_UCODE_REV (0x8b): a guest's WRMSR is ignored, not #GP, as KVM does (Linux's
microcode loader writes 0 to it before reading the revision back; found booting Linux:
"unchecked MSR access error: WRMSR to 0x8b"); the revision user space set stays."""

import pytest

from tests.support import guestvm
from tests.support.guestvm import BACKENDS

UCODE_REV = 0x8B
REVISION = 0x1234 << 32

GUEST = guestvm.assemble(guestvm.prot32(f"""
 mov ${UCODE_REV:#x}, %ecx
 xor %eax, %eax
 xor %edx, %edx
 wrmsr
 rdmsr
 mov %edx, %esi
 hlt
""", handlers={13: guestvm.GP_SKIP2}))


@pytest.mark.parametrize("sc", BACKENDS)
def test_a_guest_write_is_ignored(sc):
    m = guestvm.Machine(sc, GUEST)
    try:
        assert m.msrs(REVISION, UCODE_REV) == (1, [REVISION])
        m.until("HLT")
        got = (m.console, m.regs("rsi"), m.msrs(None, UCODE_REV))
    finally:
        m.close()
    assert got == ("", {"rsi": hex(REVISION >> 32)}, (1, [REVISION]))
