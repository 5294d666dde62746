"""The split virtqueue (virtio 1.2, 2.7): how a device finds the driver's buffers and
hands them back.

The driver owns the descriptor table (16 bytes per descriptor: address, length, flags,
next) and the available ring (flags, idx, ring of descriptor heads); the device owns the
used ring (flags, idx, ring of (head, bytes written)).  All three live in guest memory at
addresses the driver gives through the transport.  A chain is the descriptors linked by
NEXT from one head: the device-readable ones first, then the device-writable ones.

Everything read from guest memory is the driver's word, so a bad one (an index past the
queue, a loop, a readable descriptor after a writable one, an address outside RAM) is a
:class:`QueueError`, never an exception that could reach KVM_RUN; the transport then
asks the driver for a reset (DEVICE_NEEDS_RESET).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kvmpy.api.memory import GuestMemoryError

VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT = 1, 2, 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
DESC = struct.Struct("<QIHH")           # addr, len, flags, next
USED_ELEM = struct.Struct("<II")        # id (the chain's head), len (bytes written)
RING_HEADER = 4                         # flags, idx (16 bits each) before each ring


class QueueError(Exception):
    """The driver broke the queue's rules; the message says how."""


@dataclass
class Chain:
    """One descriptor chain: its head, and the (address, length) pieces the device may
    read and those it may write, in order."""

    head: int
    readable: list = field(default_factory=list)
    writable: list = field(default_factory=list)

    @property
    def writable_size(self):
        return sum(length for _, length in self.writable)

    def read(self, memory) -> bytes:
        """The device-readable bytes, gathered."""
        try:
            return b"".join(memory.read(addr, length) for addr, length in self.readable)
        except GuestMemoryError as e:
            raise QueueError(f"chain {self.head}: {e}") from None

    def write(self, memory, data, offset=0) -> int:
        """Scatter ``data`` over the device-writable pieces from byte ``offset`` of them
        (as much as fits); the bytes written."""
        done = 0
        try:
            for addr, length in self.writable:
                if offset >= length:
                    offset -= length
                    continue
                piece = data[done:done + length - offset]
                if not piece:
                    break
                memory.write(addr + offset, piece)
                done += len(piece)
                offset = 0
        except GuestMemoryError as e:
            raise QueueError(f"chain {self.head}: {e}") from None
        return done


class Virtqueue:
    """One queue's state as the transport sets it up, and the device's side of the rings."""

    def __init__(self, max_size):
        self.max_size = max_size
        self.reset()

    def reset(self):
        self.size = self.max_size
        self.ready = False
        self.desc = self.avail = self.used = 0
        self.last_avail = 0                 # the next available ring entry to take

    def _read16(self, memory, addr):
        try:
            return memory.read_int(addr, 2)
        except GuestMemoryError as e:
            raise QueueError(str(e)) from None

    def pop(self, memory) -> Chain | None:
        """The next chain the driver made available, or None."""
        avail_idx = self._read16(memory, self.avail + 2)
        pending = (avail_idx - self.last_avail) & 0xFFFF
        if not pending:
            return None
        if pending > self.size:
            raise QueueError(f"available index {avail_idx} is {pending} entries ahead "
                             f"of a queue of {self.size}")
        head = self._read16(memory, self.avail + RING_HEADER + 2 * (self.last_avail % self.size))
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return self._chain(memory, head)

    def _chain(self, memory, head):
        chain, index = Chain(head), head
        for _ in range(self.size):
            if index >= self.size:
                raise QueueError(f"descriptor index {index} outside a queue of {self.size}")
            try:
                addr, length, flags, next_ = DESC.unpack(memory.read(self.desc + DESC.size * index,
                                                                     DESC.size))
            except GuestMemoryError as e:
                raise QueueError(str(e)) from None
            if flags & VIRTQ_DESC_F_INDIRECT:
                raise QueueError("an indirect descriptor (VIRTIO_F_INDIRECT_DESC not offered)")
            if flags & VIRTQ_DESC_F_WRITE:
                chain.writable.append((addr, length))
            elif chain.writable:
                raise QueueError(f"chain {head}: a device-readable descriptor after a "
                                 f"device-writable one")
            else:
                chain.readable.append((addr, length))
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            index = next_
        raise QueueError(f"chain {head} is longer than the queue ({self.size}): a loop")

    def push(self, memory, chain, written):
        """Hand ``chain`` back with ``written`` bytes written into it."""
        try:
            idx = memory.read_int(self.used + 2, 2)
            memory.write(self.used + RING_HEADER + USED_ELEM.size * (idx % self.size),
                         USED_ELEM.pack(chain.head, written))
            memory.write_int(self.used + 2, 2, idx + 1)
        except GuestMemoryError as e:
            raise QueueError(str(e)) from None

    def serve(self, memory, handle) -> bool:
        """Every available chain through ``handle(chain)`` (which answers the bytes it
        wrote) and back to the used ring; True when there was any."""
        used = False
        chain = self.pop(memory)
        while chain is not None:
            self.push(memory, chain, handle(chain))
            used = True
            chain = self.pop(memory)
        return used

    def wants_interrupt(self, memory) -> bool:
        """False while the driver asks for no interrupts (VIRTQ_AVAIL_F_NO_INTERRUPT)."""
        return not self._read16(memory, self.avail) & VIRTQ_AVAIL_F_NO_INTERRUPT
