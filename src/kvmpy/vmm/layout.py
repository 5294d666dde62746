"""The guest-physical memory map the VMM gives a guest, as firmware would report it (e820).

One home for it, so that every loader and device that tells the guest about memory (the
Linux zero page, a multiboot memory map, fw_cfg's ``etc/e820``) says the same thing:

=====================  ========================================================
0 .. 0x9fc00           RAM (conventional memory)
0x9fc00 .. 0xa0000     reserved (the extended BIOS data area, as on a PC)
0xe0000 .. 0x100000    reserved (the BIOS area, where ACPI's RSDP is looked for): the
                       ACPI tables from 0xe0000, the RSDP at 0xf0000 (:mod:`kvmpy.vmm.acpi`)
0x100000 .. RAM end    RAM
=====================  ========================================================

Beyond RAM, the firmware's resources (not in the e820 map, as on a PC):

=====================  ========================================================
0xd0000000 ..          the kvmpy test device (one page)
0xd0001000 ..          the virtio-mmio devices, one 4 KiB window each
0xe0000000 ..          the PCI memory window, where BARs are assigned
ports 0xc000 ..        the PCI I/O window
=====================  ========================================================
"""

E820_RAM, E820_RESERVED = 1, 2          # e820 entry types
EBDA_START = 0x9FC00
LOW_RAM_END = 0xA0000
BIOS_AREA = 0xE0000
HIGH_RAM_START = 0x100000
ACPI_TABLES = 0xE0000
ACPI_RSDP = 0xF0000
#: where a loader puts the kernel command line (a bzImage's, a PVH kernel's)
CMDLINE_ADDR = 0x20000
VIRTIO_MMIO_BASE = 0xD0001000
PCI_MMIO_WINDOW = 0xE0000000
PCI_IO_WINDOW = 0xC000


def e820_map(ram_end: int):
    """[(address, size, type)] for a guest whose RAM ends at ``ram_end`` (at least 1 MiB)."""
    entries = [(0, EBDA_START, E820_RAM), (EBDA_START, LOW_RAM_END - EBDA_START, E820_RESERVED),
               (BIOS_AREA, HIGH_RAM_START - BIOS_AREA, E820_RESERVED)]
    if ram_end > HIGH_RAM_START:
        entries.append((HIGH_RAM_START, ram_end - HIGH_RAM_START, E820_RAM))
    return entries
