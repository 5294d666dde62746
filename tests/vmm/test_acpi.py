"""The ACPI tables, the PM timer and the reset register, as a guest finds them.

The acpi guest (src/kvmpy/guests/acpi.S) does what kvm-unit-tests and Linux do: it scans the
BIOS area for the RSDP, checks every checksum, walks RSDT/XSDT to the MADT and the FADT,
times a delay with the PM timer and the TSC, scans PCI bus 0, exercises a pci-testdev and a
pc-testdev and resets the machine through the FADT's reset register. The tests assert what it printed, on
kvmpy and on the host's /dev/kvm (the VMM's devices are the same there).
"""

import re
import struct
import subprocess
import sys

import pytest

from kvmpy.guests import image_path
from kvmpy.vmm import acpi, layout
from kvmpy.vmm import aml as vmm_aml
from kvmpy.vmm.devices.pm1 import Pm1
from kvmpy.vmm.devices.pm_timer import PM_TIMER_HZ, PmTimer
from kvmpy.vmm.machine import Machine
from tests.support import aml
from tests.support.cli import run_main
from tests.support.vendors import VENDORS_MMUS

TABLE_LINES = [
    "RSDP at 0xf0000 revision 2",
    "rsdt: FACP APIC",
    "xsdt: FACP APIC",
    "madt: cpus 1 lapic 0xfee00000 ioapic 0xfec00000 gsi base 0 irq0 -> gsi 2",
    "fadt: facs ok, dsdt ok, pm timer port 0xb008 (24 bits), reset port 0xcf9 value 0x6",
]
PCI_LINES = [
    "pci 00:0x00.0 0x12378086",
    "pci 00:0x02.0 0x00051b36",
    "pci-testdev bars 0xe0000000 0xc000",
    "mmio-no-eventfd count 3",
    "portio-no-eventfd count 3",
    "portio-datamatch-eventfd count 0",
    "pc-testdev 0x1234ab2d 0x34 0x11223344 flushed page keeps 0x600dc0de",
    "sci_en 1",
    "resetting",
]
PM_LINE = re.compile(r"pm timer 0x([0-9a-f]{8}) then 0x([0-9a-f]{8}) ticks (\d+) tsc (\d+)")
#: the guest's delay loop: DELAY iterations of DEC + JNZ between the two readings
DELAY_INSNS = 2 * 500000


def kvmpy_run(*options):
    """(exit status, stdout) of ``kvmpy run`` of the acpi guest with both test devices, in a
    process of its own (the soft kernel's module parameters stay set for a process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "kvmpy.vmm.cli", "run", str(image_path("acpi")), *options,
         "-device", "pci-testdev", "-device", "pc-testdev"],
        capture_output=True, text=True, timeout=300)
    assert proc.stderr == "kvmpy: guest reset the machine through port 0xcf9\n", proc.stderr
    return proc.returncode, proc.stdout


def run_acpi_guest(accel="soft", devices=(("pci-testdev", {}), ("pc-testdev", {})),
                   clock_ns=None, kernel_ioeventfds=True):
    """(RunResult, output lines, TSC kHz) of the acpi guest."""
    out = bytearray()
    with Machine(image_path("acpi"), accel=accel, serial_sink=out.extend,
                 devices=list(devices)) as m:
        if clock_ns is not None:
            m.vm.set_clock(clock_ns)
        m.ioeventfds.available &= kernel_ioeventfds
        result = m.run(timeout=120)
        tsc_khz = m.vcpu.get_tsc_khz()
    return result, out.decode().splitlines(), tsc_khz


def pm_reading(lines):
    """(first, second, ticks, tsc cycles) of the guest's PM timer line."""
    found = [PM_LINE.fullmatch(line) for line in lines if line.startswith("pm timer")]
    assert len(found) == 1 and found[0], lines
    first, second, ticks, tsc = found[0].groups()
    return int(first, 16), int(second, 16), int(ticks), int(tsc)


def assert_same_interval(ticks, tsc, tsc_khz):
    """On a host clock the PM timer's interval holds the TSC's, plus the two IN exits'
    round trips to the VMM (each read is taken outside the guest): 1 % and 50 ms at most."""
    pm_s, tsc_s = ticks / PM_TIMER_HZ, tsc / (tsc_khz * 1000)
    assert 0.99 * tsc_s <= pm_s <= 1.01 * tsc_s + 0.05, (pm_s, tsc_s)


def check_transcript(result, lines):
    assert result.reason == "reset", (result, lines)
    assert lines[:5] == TABLE_LINES
    assert lines[6:] == PCI_LINES


def test_guest_finds_the_tables_timer_and_pci_on_kvmpy():
    result, lines, tsc_khz = run_acpi_guest()
    check_transcript(result, lines)
    first, second, ticks, tsc = pm_reading(lines)
    assert ticks == (second - first) % (1 << 24)
    # The virtual clock: the delay's instructions are the time; the PM timer and the TSC
    # agree on it to the tick.
    assert DELAY_INSNS <= tsc * 1_000_000 // tsc_khz <= DELAY_INSNS + 100      # ns
    assert abs(ticks - tsc * PM_TIMER_HZ // (tsc_khz * 1000)) <= 1


def test_same_transcript_under_both_vendor_modules_and_mmus():
    """A process loads one vendor module: each pair runs in a ``kvmpy run`` of its own. The
    virtual clock makes even the PM timer's and the TSC's readings the same."""
    transcripts = set()
    for vendor, mmu in VENDORS_MMUS:
        status, out = kvmpy_run("--vendor", vendor, "--mmu", mmu)
        assert status == 0
        transcripts.add(out)
    assert len(transcripts) == 1
    lines = transcripts.pop().splitlines()
    assert lines[:5] == TABLE_LINES and lines[6:] == PCI_LINES


def test_virtual_clock_runs_are_identical():
    assert run_acpi_guest()[1] == run_acpi_guest()[1]


def test_pm_timer_wraps_at_24_bits_in_the_guest():
    """The VM's clock set (KVM_SET_CLOCK) to a little before the counter's wrap: the second
    reading is below the first, and the ticks modulo 2^24 are what they are unwrapped."""
    _, plain, _ = run_acpi_guest()
    wrap_ns = (1 << 24) * 1_000_000_000 // PM_TIMER_HZ
    result, lines, _ = run_acpi_guest(clock_ns=wrap_ns - 500_000)
    check_transcript(result, lines)
    first, second, ticks, _ = pm_reading(lines)
    assert second < first and first < 1 << 24
    assert abs(ticks - pm_reading(plain)[2]) <= 1


@pytest.mark.host
def test_guest_finds_the_tables_timer_and_pci_on_the_host():
    result, lines, tsc_khz = run_acpi_guest("host")
    check_transcript(result, lines)
    first, second, ticks, tsc = pm_reading(lines)
    # The host's clock: the PM timer and the TSC measure the same interval (1 %).
    assert ticks == (second - first) % (1 << 24)
    assert_same_interval(ticks, tsc, tsc_khz)


def test_pm_timer_on_the_host_clock_agrees_with_the_tsc():
    """kvmpy with --clock host (a module parameter: a process of its own): the PM timer and
    the TSC keep the host's pace together."""
    with Machine(image_path("acpi")) as m:
        tsc_khz = m.vcpu.get_tsc_khz()      # the clock mode does not change the frequency
    status, out = kvmpy_run("--clock", "host")
    lines = out.splitlines()
    assert status == 0 and lines[:5] == TABLE_LINES and lines[6:] == PCI_LINES
    _, _, ticks, tsc = pm_reading(lines)
    assert_same_interval(ticks, tsc, tsc_khz)


def test_kvmpy_run_prints_the_transcript_and_ends_with_the_reset(capsys):
    status, out, err = run_main(capsys, "run", str(image_path("acpi")), "-device", "pci-testdev",
                                "-device", "pc-testdev")
    assert status == 0 and err == "kvmpy: guest reset the machine through port 0xcf9\n"
    lines = out.splitlines()
    assert lines[:5] == TABLE_LINES and lines[6:] == PCI_LINES


@pytest.mark.parametrize("accel", ["soft", pytest.param("host", marks=pytest.mark.host)])
def test_eventfd_writes_cost_no_exit(accel):
    """pci-testdev's datamatch test through KVM_IOEVENTFD: the guest's three matching writes
    never leave the kernel; matched by the VMM instead, the guest sees the same."""
    with_kernel, lines, _ = run_acpi_guest(accel)
    in_vmm, lines_vmm, _ = run_acpi_guest(accel, kernel_ioeventfds=False)
    assert "portio-datamatch-eventfd count 0" in lines and lines[6:] == lines_vmm[6:]
    assert in_vmm.exits - with_kernel.exits == 3


def test_without_pci_testdev_only_the_host_bridge():
    result, lines, _ = run_acpi_guest(devices=())
    assert result.reason == "reset"
    assert lines[6:] == ["pci 00:0x00.0 0x12378086", "sci_en 1", "resetting"]


# -- the tables themselves -----------------------------------------------------------

def tables(ncpus):
    return {data[:4] if data[:4] != b"RSD " else b"RSDP": (addr, data)
            for addr, data in acpi.build(ncpus)}


@pytest.mark.parametrize("ncpus", [1, 4])
def test_every_table_has_a_valid_checksum(ncpus):
    built = tables(ncpus)
    assert set(built) == {b"RSDP", b"RSDT", b"XSDT", b"FACP", b"APIC", b"FACS", b"DSDT"}
    for sig, (addr, data) in built.items():
        if sig == b"RSDP":
            assert sum(data[:20]) % 256 == 0 and sum(data) % 256 == 0
        elif sig != b"FACS":
            assert struct.unpack_from("<I", data, 4)[0] == len(data)
            assert sum(data) % 256 == 0, sig
    assert built[b"FACS"][0] % 64 == 0 and built[b"RSDP"][0] % 16 == 0


def test_dsdt_declares_s5_and_the_legacy_devices():
    """The DSDT's AML, read by a parser written from the grammar: the S5 package, and COM1,
    the RTC and the keyboard controller with the IDs and resources a PC's firmware gives."""
    _, dsdt = tables(1)[b"DSDT"]
    names = aml.namespace(dsdt)
    assert names["_S5_"] == [acpi.S5_SLEEP_TYPE, acpi.S5_SLEEP_TYPE, 0, 0]
    devices = {path.split(".")[1]: (aml.eisa_id(names[path + "._HID"]),
                                    aml.resources(names[path + "._CRS"]))
               for path, value in names.items() if value == "Device"}
    assert devices == {
        "COM1": ("PNP0501", [("io", 0x3F8, 0x3F8, 1, 8), ("irq", [4])]),
        "RTC_": ("PNP0B00", [("io", 0x70, 0x70, 1, 2), ("irq", [8])]),
        "KBD_": ("PNP0303", [("io", 0x60, 0x60, 1, 1), ("io", 0x64, 0x64, 1, 1), ("irq", [1])]),
    }
    assert all(path.startswith("\\_SB_.") for path, v in names.items() if v == "Device")
    assert names["\\_SB_.COM1._UID"] == 1


def test_aml_package_lengths_past_one_byte():
    """A PkgLength over 63 takes more bytes and counts them (ACPI 20.2.4)."""
    assert vmm_aml.pkg_length(10) == bytes([11])
    assert vmm_aml.pkg_length(62) == bytes([63])
    assert vmm_aml.pkg_length(63) == bytes([0x40 | (65 & 0xF), 65 >> 4])
    assert vmm_aml.pkg_length(4000) == bytes([0x40 | (4002 & 0xF), 4002 >> 4])
    assert vmm_aml.pkg_length(5000) == bytes([0x80 | (5003 & 0xF), (5003 >> 4) & 0xFF, 5003 >> 12])
    big = vmm_aml.buffer(bytes(300))
    assert aml._data_object(big, 0) == (bytes(300), len(big))


def test_tables_sit_in_memory_the_e820_map_reserves():
    reserved = [(a, a + n) for a, n, kind in layout.e820_map(16 << 20)
                if kind == layout.E820_RESERVED]
    for addr, data in acpi.build(4):
        assert any(lo <= addr and addr + len(data) <= hi for lo, hi in reserved), hex(addr)


def test_madt_has_one_local_apic_per_cpu():
    _, madt = tables(4)[b"APIC"]
    entries, off = [], 44
    while off < len(madt):
        entries.append(madt[off:off + madt[off + 1]])
        off += madt[off + 1]
    lapics = [(e[2], e[3], e[4] & 1) for e in entries if e[0] == 0]
    assert lapics == [(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)]
    ioapics = [struct.unpack_from("<BBII", e, 2) for e in entries if e[0] == 1]
    assert ioapics == [(0, 0, 0xFEC00000, 0)]
    overrides = {e[3]: struct.unpack_from("<IH", e, 4) for e in entries if e[0] == 2}
    assert overrides[0] == (2, 0)


def test_fadt_names_the_pm_timer_and_reset_register():
    _, fadt = tables(1)[b"FACP"]
    assert fadt[8] == 3 and len(fadt) == 244
    assert struct.unpack_from("<I", fadt, 76)[0] == 0xB008
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & (1 << 10) and not flags & (1 << 8)      # RESET_REG_SUP, 24-bit timer
    assert struct.unpack_from("<BBBBQB", fadt, 116) == (1, 8, 0, 1, 0xCF9, 6)


# -- the PM timer --------------------------------------------------------------------

def test_pm_timer_counts_the_clock_and_wraps():
    now = [0]
    timer = PmTimer(lambda: now[0])
    now[0] = 1_000_000_000
    assert timer.read(0, 4) == PM_TIMER_HZ
    now[0] = (1 << 24) * 1_000_000_000 // PM_TIMER_HZ + 1_000
    assert timer.read(0, 4) < 10                            # 24 bits: it wrapped
    now[0] = 10_000_000
    assert timer.read(1, 1) == (35795 >> 8) & 0xFF          # byte reads at their offset
    timer.write(0, 4, 0)
    assert timer.read(0, 4) == 35795                        # read-only


# -- PM1 ------------------------------------------------------------------------------

#: real mode: mov dx, 0xb004; mov ax, SLP_EN | SLP_TYP 0; out dx, ax; hlt
POWEROFF = bytes([0xBA, 0x04, 0xB0, 0xB8, 0x00, 0x20, 0xEF, 0xF4])


@pytest.mark.parametrize("accel", ["soft", pytest.param("host", marks=pytest.mark.host)])
def test_s5_through_pm1a_cnt_powers_off(tmp_path, accel):
    image = tmp_path / "poweroff.bin"
    image.write_bytes(POWEROFF)
    with Machine(str(image), accel=accel) as m:
        result = m.run(timeout=60)
    assert result.reason == "poweroff"


def test_pm1_status_sets_tmr_sts_when_bit_23_changes():
    now = [0]
    pm1 = Pm1(PmTimer(lambda: now[0]))
    assert pm1.read(0, 2) == 0 and pm1.read(4, 2) & 1          # SCI_EN: in ACPI mode
    now[0] = (1 << 23) * 1_000_000_000 // PM_TIMER_HZ + 1_000
    assert pm1.read(0, 2) == 1                                  # TMR_STS
    pm1.write(0, 2, 0)                                          # writing 0 keeps it
    assert pm1.read(0, 2) == 1
    pm1.write(0, 2, 1)                                          # writing 1 clears it
    assert pm1.read(0, 2) == 0
    pm1.write(2, 2, 0xFFFF)
    assert pm1.read(0, 4) == 0x0721 << 16                       # PM1_EN's bits, PM1_STS 0
    pm1.write(4, 2, 0)
    assert pm1.read(4, 2) == 1                                  # SCI_EN stays
