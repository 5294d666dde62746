"""Address buses: map port or MMIO ranges to devices.

A bus finds the device whose range holds an address and calls it with the offset into
that range. An access nobody claims is recorded and, like on a real ISA/PCI bus with no
decoder answering, reads back all-ones and writes are dropped.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


class BusError(ValueError):
    """A range that cannot be mapped (empty, overlapping another, out of the bus)."""


@dataclass
class UnhandledAccess:
    """One access no device claimed, kept so the VMM can report it."""

    addr: int
    size: int
    is_write: bool
    value: int | None = None


@dataclass(order=True)
class _Range:
    base: int
    length: int
    device: object = field(compare=False)
    offset: int = field(default=0, compare=False)


class Bus:
    """Sorted, non-overlapping ranges over an address space of ``limit`` addresses."""

    limit = 1 << 64
    #: cap on the unhandled-access log, so a guest hammering a hole cannot grow it forever
    max_unhandled = 1000

    def __init__(self):
        self._ranges = []
        self.unhandled = []
        self.unhandled_count = 0

    def register(self, base, length, device, offset=0):
        """Map ``[base, base+length)`` to ``device``; it sees ``addr - base + offset``.

        ``offset`` lets one device own several disjoint ranges (the i8042 answers at 0x60
        and at 0x64) while still telling them apart.
        """
        if length <= 0 or base < 0 or base + length > self.limit:
            raise BusError(f"bad range {base:#x}+{length:#x}")
        new = _Range(base, length, device, offset)
        i = bisect.bisect_left(self._ranges, new)
        before = self._ranges[i - 1] if i else None
        after = self._ranges[i] if i < len(self._ranges) else None
        if (before and before.base + before.length > base) or (
            after and base + length > after.base
        ):
            raise BusError(f"range {base:#x}+{length:#x} overlaps a mapped range")
        self._ranges.insert(i, new)

    def unregister(self, base, device):
        """Remove the range at ``base`` mapped to ``device`` (a PCI BAR moving away)."""
        r = self.find(base)
        if r is None or r.base != base or r.device is not device:
            raise BusError(f"no range of that device at {base:#x}")
        self._ranges.remove(r)

    def find(self, addr):
        """The range holding ``addr``, or None."""
        i = bisect.bisect_right(self._ranges, _Range(addr, 1 << 65, None)) - 1
        if i >= 0:
            r = self._ranges[i]
            if r.base <= addr < r.base + r.length:
                return r
        return None

    def read(self, addr, size):
        """Read ``size`` bytes at ``addr`` as an int; all-ones if nobody answers."""
        r = self.find(addr)
        if r is None:
            self._note(UnhandledAccess(addr, size, False))
            return (1 << (8 * size)) - 1
        return r.device.read(addr - r.base + r.offset, size) & ((1 << (8 * size)) - 1)

    def write(self, addr, size, value):
        """Write ``value`` (``size`` bytes) at ``addr``; dropped if nobody answers."""
        r = self.find(addr)
        if r is None:
            self._note(UnhandledAccess(addr, size, True, value))
            return
        r.device.write(addr - r.base + r.offset, size, value)

    def _note(self, access):
        self.unhandled_count += 1
        if len(self.unhandled) < self.max_unhandled:
            self.unhandled.append(access)


class PioBus(Bus):
    """The x86 I/O port space: 64 KiB of ports."""

    limit = 1 << 16


class MmioBus(Bus):
    """Guest-physical addresses not backed by RAM."""
