"""The ACPI tables of the machine, as a PC's firmware leaves them in RAM (ACPI 6.x, chapter 5).

Guests do not probe a PC's platform devices: they read the firmware's tables. kvm-unit-tests
scans the BIOS area for the RSDP and walks RSDT/XSDT to the FADT (for the PM timer port and
the reset register) and the MADT (the LAPICs and the IOAPIC); Linux reads the same tables.
:func:`install` builds them for the machine's configuration and writes them into the BIOS
area, which the e820 map (:mod:`kvmpy.vmm.layout`) marks reserved, so that a guest's memory
allocator leaves them alone.

What the tables say follows QEMU's ``pc`` machine (PIIX4 power management), so that a guest
sees the platform it sees there:

=========  =================================================================================
RSDP       revision 2 at :data:`~kvmpy.vmm.layout.ACPI_RSDP`, 16-byte aligned, pointing at
           the RSDT (32-bit entries) and the XSDT (64-bit entries), which both list the
           FADT and the MADT
FADT       revision 3 (ACPI 2.0's 244 bytes): the FACS and DSDT (32- and 64-bit pointers),
           SCI on IRQ 9, no SMI command port (the machine is always in ACPI mode), the PM1a
           event/control blocks and the 24-bit PM timer at PIIX4's 0xb000 + 0/4/8, the
           CMOS century register, and the reset register (port 0xcf9, value 6) with
           RESET_REG_SUP
FACS       64 bytes, 64-byte aligned (no checksum, by the spec)
DSDT       AML (:mod:`kvmpy.vmm.aml`): ``\\_S5`` (sleep type 0: PM1a_CNT's soft power-off)
           and, in ``\\_SB``, the legacy devices the VMM emulates with their ``_HID`` and
           ``_CRS``: COM1 (PNP0501, ports 0x3f8-0x3ff, IRQ 4), the CMOS RTC (PNP0B00,
           0x70-0x71, IRQ 8) and the i8042's keyboard port (PNP0303, 0x60 and 0x64, IRQ 1)
MADT       the LAPIC address, PCAT_COMPAT (the 8259s are there); one enabled Local APIC per
           vCPU (UID and APIC ID = vCPU index), the IOAPIC (ID 0, GSI base 0), the
           interrupt source overrides IRQ0 -> GSI 2 and (level, active high) IRQs 5, 9, 10,
           11, and LINT1 as NMI on every processor
=========  =================================================================================
"""

from __future__ import annotations

import struct

from kvmpy.vmm import aml, layout
from kvmpy.vmm.devices import cmos, i8042, serial

OEM_ID = b"KVMPY "              # six bytes
OEM_TABLE_ID = b"KVMPYMCH"      # eight bytes
OEM_REVISION = 1
CREATOR_ID = b"KVMP"
CREATOR_REVISION = 1
HEADER = struct.Struct("<4sIBB6s8sI4sI")   # the common header of every table but the FACS
CHECKSUM_OFFSET = 9

RSDP_SIGNATURE = b"RSD PTR "
RSDP_V1_LENGTH = 20             # the part the first checksum covers
RSDP_LENGTH = 36

LAPIC_BASE = 0xFEE00000
IOAPIC_BASE = 0xFEC00000
IOAPIC_ID = 0
SCI_IRQ = 9

# The PIIX4 power-management I/O block (QEMU's PM base 0xb000), and the PC's reset register.
PM_BASE = 0xB000
PM1A_EVT_BLK, PM1_EVT_LEN = PM_BASE + 0, 4
PM1A_CNT_BLK, PM1_CNT_LEN = PM_BASE + 4, 2
PM_TMR_BLK, PM_TMR_LEN = PM_BASE + 8, 4
RESET_PORT = 0xCF9
RESET_VALUE = 0x06              # hard reset: "system reset" | "reset CPU"
CMOS_CENTURY = 0x32
S5_SLEEP_TYPE = 0               # the SLP_TYP PM1a_CNT takes for soft power-off (QEMU's)

# FADT flags (ACPI 5.2.9, table 5.10) and boot architecture flags (table 5.11)
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5
FADT_RTC_S4 = 1 << 7
FADT_TMR_VAL_EXT = 1 << 8       # not set: the PM timer has 24 bits
FADT_RESET_REG_SUP = 1 << 10
FADT_FLAGS = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RTC_S4 | FADT_RESET_REG_SUP
BOOT_ARCH_8042 = 1 << 1
FADT_REVISION = 3
FADT_LENGTH = 244
C2_C3_UNSUPPORTED = 0x0FFF      # P_LVL2_LAT > 100 / P_LVL3_LAT > 1000: no C2/C3

# Generic Address Structure
GAS = struct.Struct("<BBBBQ")
GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE, GAS_ACCESS_WORD, GAS_ACCESS_DWORD = 1, 2, 3

FACS_LENGTH = 64
FACS_VERSION = 1
FACS_ALIGN = 64

# MADT (ACPI 5.2.12)
MADT_PCAT_COMPAT = 1 << 0
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_INT_OVERRIDE, MADT_LOCAL_APIC_NMI = 0, 1, 2, 4
MADT_ENABLED = 1 << 0
MPS_INTI_LEVEL_ACTIVE_HIGH = 0x0D           # polarity 01 (high), trigger 11 (level)
ALL_PROCESSORS = 0xFF
#: the ISA IRQs that are level-triggered, active high (QEMU's pc: its PCI lines and the SCI)
LEVEL_IRQS = (5, 9, 10, 11)
#: ISA IRQs whose GSI or polarity differs from the ISA default, as QEMU's pc reports them
INTERRUPT_OVERRIDES = ((0, 2, 0),) + tuple((irq, irq, MPS_INTI_LEVEL_ACTIVE_HIGH)
                                           for irq in LEVEL_IRQS)
NMI_LINT = 1

#: the DSDT's devices: (name, _HID, _UID, [(first port, count)], ISA IRQ). Linux's PnP
#: layer (PNPACPI) turns each into a PnP device with these resources, and the drivers that
#: claim the IDs use them rather than guess: 8250_pnp, rtc_cmos, the i8042's keyboard port.
#: PNP0303 is the keyboard controller QEMU's pc announces too; kvmpy's i8042 answers the
#: controller's commands but has no keys, so IRQ 1 never fires.
LEGACY_DEVICES = (
    ("COM1", "PNP0501", 1, ((serial.COM1_PORT, 8),), serial.COM1_IRQ),
    ("RTC", "PNP0B00", 0, ((cmos.CMOS_PORT, 2),), cmos.RTC_IRQ),
    ("KBD", "PNP0303", 0, ((i8042.DATA_PORT, 1), (i8042.COMMAND_PORT, 1)), i8042.KBD_IRQ),
)


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` plus itself sum to 0 (mod 256)."""
    return -sum(data) & 0xFF


def _table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A table with the common header and a valid checksum."""
    header = HEADER.pack(signature, HEADER.size + len(body), revision, 0, OEM_ID,
                         OEM_TABLE_ID, OEM_REVISION, CREATOR_ID, CREATOR_REVISION)
    table = bytearray(header + body)
    table[CHECKSUM_OFFSET] = checksum(table)
    return bytes(table)


def _gas(address: int, width_bytes: int, access: int) -> bytes:
    return GAS.pack(GAS_SYSTEM_IO, 8 * width_bytes, 0, access, address)


def rsdp(rsdt_addr: int, xsdt_addr: int) -> bytes:
    """The revision-2 RSDP; both checksums valid."""
    data = bytearray(struct.pack("<8sB6sBIIQB3x", RSDP_SIGNATURE, 0, OEM_ID, 2, rsdt_addr,
                                 RSDP_LENGTH, xsdt_addr, 0))
    data[8] = checksum(data[:RSDP_V1_LENGTH])
    data[32] = checksum(data)
    return bytes(data)


def rsdt(tables) -> bytes:
    return _table(b"RSDT", 1, b"".join(struct.pack("<I", a) for a in tables))


def xsdt(tables) -> bytes:
    return _table(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in tables))


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    """The FADT of a PIIX4-like PC (field order: ACPI 5.2.9, table 5.9)."""
    body = struct.pack(
        "<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
        facs_addr, dsdt_addr, 0, 0, SCI_IRQ,
        0, 0, 0, 0, 0,                          # SMI_CMD 0: no ACPI mode switch to make
        PM1A_EVT_BLK, 0, PM1A_CNT_BLK, 0, 0, PM_TMR_BLK, 0, 0,
        PM1_EVT_LEN, PM1_CNT_LEN, 0, PM_TMR_LEN, 0, 0, 0, 0,
        C2_C3_UNSUPPORTED, C2_C3_UNSUPPORTED, 0, 0, 0, 0, 0, 0, CMOS_CENTURY,
        BOOT_ARCH_8042, 0, FADT_FLAGS)
    body += _gas(RESET_PORT, 1, GAS_ACCESS_BYTE) + struct.pack("<B3x", RESET_VALUE)
    body += struct.pack("<QQ", facs_addr, dsdt_addr)
    body += (_gas(PM1A_EVT_BLK, PM1_EVT_LEN, GAS_ACCESS_WORD) + bytes(GAS.size)
             + _gas(PM1A_CNT_BLK, PM1_CNT_LEN, GAS_ACCESS_WORD) + bytes(GAS.size)
             + bytes(GAS.size) + _gas(PM_TMR_BLK, PM_TMR_LEN, GAS_ACCESS_DWORD)
             + bytes(2 * GAS.size))
    table = _table(b"FACP", FADT_REVISION, body)
    assert len(table) == FADT_LENGTH
    return table


def facs() -> bytes:
    """The FACS: no waking vector, no global lock owner."""
    return struct.pack("<4sIIIIIQB3xI24x", b"FACS", FACS_LENGTH, 0, 0, 0, 0, 0, FACS_VERSION, 0)


def _legacy_device(seg, hid, uid, ports, irq) -> bytes:
    resources = [aml.io_port(base, count) for base, count in ports] + [aml.irq_no_flags(irq)]
    return aml.device(seg, aml.name("_HID", aml.eisa_id(hid)), aml.name("_UID", aml.integer(uid)),
                      aml.name("_CRS", aml.resource_template(*resources)))


def dsdt() -> bytes:
    """The DSDT: the S5 sleep state (Name(_S5, Package() {S5, S5, 0, 0})), and the legacy
    devices of :data:`LEGACY_DEVICES` in the system bus scope."""
    s5 = aml.name("_S5", aml.package(aml.integer(S5_SLEEP_TYPE), aml.integer(S5_SLEEP_TYPE),
                                     aml.integer(0), aml.integer(0)))
    devices = aml.scope("\\_SB", *(_legacy_device(*d) for d in LEGACY_DEVICES))
    return _table(b"DSDT", 2, s5 + devices)


def madt(ncpus: int) -> bytes:
    """The MADT for ``ncpus`` vCPUs (APIC IDs 0 .. ncpus-1)."""
    body = bytearray(struct.pack("<II", LAPIC_BASE, MADT_PCAT_COMPAT))
    for cpu in range(ncpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, cpu, cpu, MADT_ENABLED)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, IOAPIC_ID, 0, IOAPIC_BASE, 0)
    for irq, gsi, flags in INTERRUPT_OVERRIDES:
        body += struct.pack("<BBBBIH", MADT_INT_OVERRIDE, 10, 0, irq, gsi, flags)
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS, 0, NMI_LINT)
    return _table(b"APIC", 1, bytes(body))


def _align(addr: int, alignment: int) -> int:
    return (addr + alignment - 1) & ~(alignment - 1)


def build(ncpus: int, base: int = layout.ACPI_TABLES):
    """[(guest-physical address, bytes)] of every table, laid out from ``base`` on, and the
    RSDP at :data:`~kvmpy.vmm.layout.ACPI_RSDP`."""
    placed = []
    addr = base

    def put(data, alignment=16):
        nonlocal addr
        addr = _align(addr, alignment)
        placed.append((addr, data))
        at, addr = addr, addr + len(data)
        return at

    facs_addr = put(facs(), FACS_ALIGN)
    dsdt_addr = put(dsdt())
    listed = [put(fadt(facs_addr, dsdt_addr)), put(madt(ncpus))]
    rsdt_addr, xsdt_addr = put(rsdt(listed)), put(xsdt(listed))
    if addr > layout.ACPI_RSDP:
        raise ValueError(f"the ACPI tables ({addr - base} bytes) overrun the RSDP")
    placed.append((layout.ACPI_RSDP, rsdp(rsdt_addr, xsdt_addr)))
    return placed


def install(memory, ncpus: int):
    """Write the tables for ``ncpus`` vCPUs into guest ``memory``."""
    for addr, data in build(ncpus):
        memory.write(addr, data)
