"""Differential test: one raw-ioctl VMM (tests/support/rawvmm.py), two kernels.

Each guest from kvmpy.guests runs once on the host's /dev/kvm, the oracle, and once on
kvmpy's soft kernel through ``kvmpy.syscalls``. Both runs must print the same console text,
produce the same sequence of exits (reason, port/address, size, count, data) and end with
the same REGS and SREGS. The host results are committed in tests/data/<guest>.host.json so
the soft half can be checked where /dev/kvm is absent; each names the machine and KVM vendor
module it came from, and a live host is held to it only under the same module (records.py).
Refresh them with

    KVMPY_RECORD=1 pytest tests/guests/test_host_vs_soft.py -k host
"""

import os
import pathlib

import pytest

from tests.support import rawvmm, records
from tests.support.hostkvm import host_kvm_usable
from kvmpy.guests import load_image

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "data"
RECORD = os.environ.get("KVMPY_RECORD") == "1"

LONGMODE_CONSOLE = ("longmode: real mode\r\nlongmode: protected mode\r\n"
                    "longmode: long mode\r\nlongmode: rep outsb done\r\n")
DEMO_CONSOLE = (
    "kvmpy demo: hello from 16-bit real mode\r\n"
    "kvmpy demo: 32-bit protected mode\r\n"
    "kvmpy demo: 64-bit long mode, 4-level paging\r\n"
    "mmio read 0xd0000000 = 0x12345678\r\n"
    "com1 line status = 0x60\r\n"
    "first 20 primes: 2 3 5 7 11 13 17 19 23 29 31 37 41 43 47 53 59 61 67 71\r\n"
    "sum = 639\r\n"
    "demo ok, exiting with value 0\r\n")


def _io(direction, port, size, count=1, data=None):
    record = {"reason": "IO", "direction": direction, "port": hex(port), "size": size,
              "count": count}
    if data is not None:
        record["data"] = data
    return record


def _mmio(addr, length, write_data=None):
    record = {"reason": "MMIO", "phys_addr": hex(addr), "len": length,
              "is_write": write_data is not None}
    if write_data is not None:
        record["data"] = write_data
    return record


# Exits other than single-byte COM1 output, in order (see the header of each guest source).
DEVICE_EXITS = {
    "longmode": [
        _io("in", 0x3FD, 1),                          # real mode
        _mmio(0xD0000000, 4), _io("in", 0x510, 4),    # protected mode, paging off
        _io("in", 0x3FD, 1), _io("in", 0x510, 4), _io("in", 0x510, 2),
        _mmio(0xD0000000, 4, "0df0feca"), _mmio(0xD0000008, 8, "0102030405060708"),
        _mmio(0xD0000000, 4), _mmio(0xD0000001, 1),
        _mmio(0xD0000000, 4), _mmio(0xD0000000, 4, "79563412"),    # addl $1 on MMIO
        _io("in", 0x510, 1, count=8),                 # rep insb: read ahead in one exit
        _io("out", 0xF4, 1, data="00"),
    ],
    "demo": [
        _mmio(0xD0000000, 4, "0df0feca"), _mmio(0xD0000000, 4), _io("in", 0x3FD, 1),
        _io("out", 0xF4, 1, data="00"),
    ],
}
CONSOLE = {"longmode": LONGMODE_CONSOLE, "demo": DEMO_CONSOLE}
FINAL_REGS = {
    "longmode": {
        "rax": 0x5A5A5A5A5A5A5A00, "rbx": 0xDEDEDEDEDEDEDEDE, "rcx": 0, "rdx": 0xF4,
        "rdi": 0x6028, "rsp": 0x7C00, "rbp": 0x0123456789ABCDEF,
        "r8": 0xFFFFFFFFFFFFFF60, "r9": 0xFEEDC0DE, "r10": 0xFFFFFFFFFFFFC0DE,
        "r11": 0x12345678, "r12": 0x56, "r13": 0x1122334455667788, "r14": 0xBE60,
        "r15": 0xFEEDC0DE12345678,
    },
    "demo": {"r12": 0x12345678, "r13": 0x60, "r14": 639, "r15": 20},
}
GUESTS = sorted(CONSOLE)


def _recorded_path(guest):
    return DATA_DIR / f"{guest}.host.json"


def _recorded(guest):
    return records.read(_recorded_path(guest))[0]


def _is_console_byte(record):
    return (record["reason"] == "IO" and record["direction"] == "out"
            and record["port"] == hex(rawvmm.COM1_THR) and record["count"] == 1)


@pytest.mark.host
@pytest.mark.parametrize("guest", GUESTS)
def test_host_run(guest):
    result = rawvmm.run_guest(load_image(guest), rawvmm.HOST)

    assert result["console"] == CONSOLE[guest]
    console_exits = [r for r in result["exits"] if _is_console_byte(r)]
    assert "".join(bytes.fromhex(r["data"]).decode() for r in console_exits) == CONSOLE[guest]
    assert [r for r in result["exits"] if not _is_console_byte(r)] == DEVICE_EXITS[guest]
    assert result["exit_value"] == 0
    assert result["completion"] == "EINTR"      # immediate_exit completed the final OUT
    for reg, value in FINAL_REGS[guest].items():
        assert result["regs"][reg] == hex(value), reg
    assert result["sregs"]["efer"] == hex(0x500)    # LME | LMA
    assert result["sregs"]["cs"]["l"] == "0x1"

    if RECORD:
        records.write_run(_recorded_path(guest), result)
        return
    recorded, origin = records.read(_recorded_path(guest))
    if not records.same_kind(origin):
        pytest.skip("recorded under %s; this host's KVM is %s (its run is checked above and is "
                    "test_soft_matches_host's reference)" % (origin["kvm_module"], rawvmm.host_kvm_module()))
    assert result == recorded, "host run differs from tests/data; re-record with KVMPY_RECORD=1 if the guest changed"


@pytest.mark.parametrize("guest", GUESTS)
def test_soft_matches_host(guest, soft_mmu):
    from kvmpy import syscalls
    if host_kvm_usable():
        reference = rawvmm.run_guest(load_image(guest), rawvmm.HOST)
    else:
        reference = _recorded(guest)

    result = rawvmm.run_guest(load_image(guest), syscalls)

    rawvmm.assert_same_run(result, reference)
