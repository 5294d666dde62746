"""The ACPI power-management timer (ACPI 4.8.3.3), at the port the FADT names (PM_TMR_BLK).

A free-running counter at 3.579545 MHz, 24 bits wide as PIIX4's (the FADT does not set
TMR_VAL_EXT), so it wraps every 2**24 ticks (about 4.69 s). It is computed from ``now_ns()``
on every read rather than counted, so that it keeps the VM's time: the machine gives it the
VM's clock (``KVM_GET_CLOCK``, the clock kvmclock, the TSC and the LAPIC timer are derived
from), which on kvmpy's virtual clock advances with the guest's retired instructions and is
therefore the same on every run, and on the host follows the host's monotonic time.
The register is read-only; writes are ignored, as on the chipset.
"""

PM_TIMER_HZ = 3_579_545
NS_PER_S = 1_000_000_000
COUNTER_BITS = 24
COUNTER_MASK = (1 << COUNTER_BITS) - 1
#: ports the timer block takes (PM_TMR_LEN)
PM_TIMER_LEN = 4


def ns_to_ticks(ns: int) -> int:
    """Timer ticks in ``ns`` nanoseconds, rounded down (no drift: not summed per read)."""
    return ns * PM_TIMER_HZ // NS_PER_S


class PmTimer:
    """The 32-bit timer register; byte and word reads see its bytes at their offset."""

    def __init__(self, now_ns):
        self.now_ns = now_ns

    def ticks(self) -> int:
        """Ticks since the clock's zero, all bits (PM1_STS's TMR_STS watches bit 23)."""
        return ns_to_ticks(self.now_ns())

    def value(self) -> int:
        return self.ticks() & COUNTER_MASK

    def read(self, offset, size):
        return self.value() >> (8 * offset)

    def write(self, offset, size, value):
        pass
