"""The PC's reset control register at port 0xcf9 (PIIX3/PIIX4 RCR), the FADT's RESET_REG.

Guests reset the machine by writing 6 ("system reset" with "reset CPU") there, as the FADT
tells ACPI operating systems to (Linux's ``reboot=a``/``reboot=pci``, kvm-unit-tests'
``exit``): a write with the reset-CPU bit calls ``on_reset()``, which ends the run like the
i8042's reset. Other writes only keep the system-reset bit, which reads back.

The register sits inside the PCI configuration-address dword (0xcf8-0xcfb), as on the chipset:
byte accesses to 0xcf9 are the RCR's, dword accesses to 0xcf8 the PCI host bridge's.
"""

RESET_CONTROL_PORT = 0xCF9
RCR_SYSTEM_RESET = 1 << 1
RCR_RESET_CPU = 1 << 2


class ResetControl:
    """One byte-wide register; ``on_reset()`` is called when the guest asks for a reset."""

    def __init__(self, on_reset=None):
        self.on_reset = on_reset
        self.value = 0
        self.reset_requested = False

    def read(self, offset, size):
        return self.value

    def write(self, offset, size, value):
        if value & RCR_RESET_CPU:
            self.reset_requested = True
            if self.on_reset:
                self.on_reset()
            return
        self.value = value & RCR_SYSTEM_RESET
