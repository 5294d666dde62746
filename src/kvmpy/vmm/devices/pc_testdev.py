"""QEMU's ``pc-testdev``: the ISA test device kvm-unit-tests' x86 tests use.

It answers at QEMU's addresses:

=====================  ===============================================================
ports 0xe0-0xe3        a 32-bit scratch register, any width at any offset (the realmode
                       and emulator tests' port I/O, including string I/O)
ports 0xe8-0xeb        the same register through byte-wide accesses
port 0xe4              "flush page": a dword write of a guest-physical address makes the
                       hypervisor drop its mappings of that page (``flush_page(gpa)``), so
                       the guest's next access to it faults into KVM again (eventinj)
ports 0x2000-0x2017    one byte-wide port per ISA interrupt line: writing v sets line N's
                       level to v != 0 (``set_irq(line, level)``); a word or dword write
                       sets a line per byte, as QEMU splits it
MMIO 0xff000000        64 KiB of device memory that reads back what was written
=====================  ===============================================================

Map it with :func:`register`, which knows those places.
"""

PORT_DATA = 0xE0
PORT_FLUSH_PAGE = 0xE4
PORT_DATA_BYTES = 0xE8
PORT_IRQ = 0x2000
IRQ_LINES = 24
IOMEM_ADDR = 0xFF000000
IOMEM_SIZE = 0x10000
PAGE_MASK = ~0xFFF
# offsets of the device's ranges, as the buses hand them over
DATA, DATA_BYTES, FLUSH, IRQ = 0x000, 0x100, 0x200, 0x300


class PcTestdev:
    """The scratch register, the flush and IRQ ports (I/O), and the device memory."""

    def __init__(self, set_irq=None, flush_page=None):
        self.set_irq = set_irq
        self.flush_page = flush_page
        self.data = 0
        self.irq_levels = [False] * IRQ_LINES
        self.flushes = 0                # pages flushed, and the last one (a count, so that
        self.last_flushed = None        # a guest flushing in a loop grows nothing)

    # -- port I/O ------------------------------------------------------------
    def read(self, offset, size):
        if offset in range(DATA, DATA + 4) or offset in range(DATA_BYTES, DATA_BYTES + 4):
            return (self.data >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)
        return (1 << (8 * size)) - 1    # the flush and IRQ ports are write-only

    def write(self, offset, size, value):
        if offset in range(DATA, DATA + 4) or offset in range(DATA_BYTES, DATA_BYTES + 4):
            shift = 8 * (offset & 3)
            mask = (((1 << (8 * size)) - 1) << shift) & 0xFFFFFFFF
            self.data = (self.data & ~mask) | ((value << shift) & mask)
        elif offset == FLUSH and size == 4:
            page = value & PAGE_MASK
            self.flushes += 1
            self.last_flushed = page
            if self.flush_page:
                self.flush_page(page)
        elif offset in range(IRQ, IRQ + IRQ_LINES):
            # byte-wide ports: a wider write is a byte to each of the lines it covers (QEMU
            # splits it so), the lowest byte to the line at its address
            for line in range(offset - IRQ, min(offset - IRQ + size, IRQ_LINES)):
                level = bool(value >> 8 * (line - offset + IRQ) & 0xFF)
                self.irq_levels[line] = level
                if self.set_irq:
                    self.set_irq(line, level)


class PcTestdevMemory:
    """The device's 64 KiB of memory (its MMIO range)."""

    def __init__(self):
        self.buf = bytearray(IOMEM_SIZE)

    def read(self, offset, size):
        return int.from_bytes(self.buf[offset:offset + size], "little")

    def write(self, offset, size, value):
        self.buf[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little")[:IOMEM_SIZE - offset]


def register(pio, mmio, device, memory):
    """Map ``device`` and its ``memory`` where QEMU's pc-testdev is."""
    pio.register(PORT_DATA, 4, device, offset=DATA)
    pio.register(PORT_FLUSH_PAGE, 4, device, offset=FLUSH)
    pio.register(PORT_DATA_BYTES, 4, device, offset=DATA_BYTES)
    pio.register(PORT_IRQ, IRQ_LINES, device, offset=IRQ)
    mmio.register(IOMEM_ADDR, IOMEM_SIZE, memory)
