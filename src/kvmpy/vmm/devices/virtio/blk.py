"""virtio-blk (virtio 1.2, 5.2) on a raw disk image: the file's bytes are the disk's.

One request queue.  A request is a chain: the 16-byte header (type, reserved, sector),
then the data (device-readable for a write, device-writable for a read), then one
device-writable status byte.  Types handled: IN (read), OUT (write), FLUSH (fsync) and
GET_ID (the 20-byte serial); others answer UNSUPP, and a request past the end of the disk,
a write to a read-only one or a failed host I/O answers IOERR, as the spec says.

Features offered: SEG_MAX (a request may have up to queue size - 2 data segments, so
Linux need not split them), FLUSH, and RO for a read-only image.  The configuration space
holds the capacity in 512-byte sectors and seg_max.
"""

from __future__ import annotations

import os
import stat
import struct

SECTOR = 512
VIRTIO_ID_BLOCK = 2
QUEUE_SIZE = 128
VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_FLUSH = 1 << 2, 1 << 5, 1 << 9
VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID = 0, 1, 4, 8
VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP = 0, 1, 2
REQUEST_HEADER = struct.Struct("<IIQ")  # type, reserved, sector
CONFIG = struct.Struct("<QII")          # capacity, size_max, seg_max
ID_BYTES = 20


class DiskError(ValueError):
    """The disk image cannot be used; the message names the file."""


class VirtioBlk:
    """A disk backed by the raw image at ``path`` (opened read-only with ``readonly``)."""

    device_id = VIRTIO_ID_BLOCK
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, path, readonly=False):
        self.path, self.readonly = os.fspath(path), readonly
        try:
            if not stat.S_ISREG(os.stat(self.path).st_mode):
                raise DiskError(f"{self.path}: not a regular file (a raw disk image)")
            self.fd = os.open(self.path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as e:
            raise DiskError(f"{self.path}: {e.strerror}") from None
        size = os.fstat(self.fd).st_size
        self.sectors = size // SECTOR
        self.features = (VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH
                         | (VIRTIO_BLK_F_RO if readonly else 0))
        self.config = CONFIG.pack(self.sectors, 0, QUEUE_SIZE - 2)
        self.serial = os.path.basename(self.path).encode()[:ID_BYTES].ljust(ID_BYTES, b"\0")

    def reset(self):
        pass                            # every request is done when notify returns

    def close(self):
        os.close(self.fd)

    def notify(self, index, queue, memory):
        return queue.serve(memory, lambda chain: self._request(chain, memory))

    def _request(self, chain, memory):
        """Serve one request; the bytes written into the chain (data and status)."""
        readable = chain.read(memory)
        data_in = chain.writable_size - 1           # the last writable byte is the status
        if data_in < 0:
            return 0                                # nowhere to put a status
        data, status = b"", VIRTIO_BLK_S_OK
        if len(readable) < REQUEST_HEADER.size:
            status = VIRTIO_BLK_S_IOERR
        else:
            type_, _, sector = REQUEST_HEADER.unpack_from(readable)
            data, status = self._serve(type_, sector, readable[REQUEST_HEADER.size:], data_in)
        # the status byte is the chain's last; the data read fills what comes before it
        return chain.write(memory, data) + chain.write(memory, bytes([status]), data_in)

    def _serve(self, type_, sector, out, data_in):
        """(data read, status) of a request of ``type_`` at ``sector``, ``out`` the bytes
        to write, ``data_in`` the room for the bytes read."""
        try:
            if type_ == VIRTIO_BLK_T_IN:
                if not self._in_range(sector, data_in):
                    return b"", VIRTIO_BLK_S_IOERR
                data = os.pread(self.fd, data_in, sector * SECTOR)
                return data.ljust(data_in, b"\0"), VIRTIO_BLK_S_OK     # a short file
            if type_ == VIRTIO_BLK_T_OUT:
                if self.readonly or not self._in_range(sector, len(out)):
                    return b"", VIRTIO_BLK_S_IOERR
                os.pwrite(self.fd, out, sector * SECTOR)
                return b"", VIRTIO_BLK_S_OK
            if type_ == VIRTIO_BLK_T_FLUSH:
                os.fsync(self.fd)
                return b"", VIRTIO_BLK_S_OK
            if type_ == VIRTIO_BLK_T_GET_ID:
                return self.serial[:data_in], VIRTIO_BLK_S_OK
            return b"", VIRTIO_BLK_S_UNSUPP
        except OSError:
            return b"", VIRTIO_BLK_S_IOERR

    def _in_range(self, sector, length):
        return length % SECTOR == 0 and sector + length // SECTOR <= self.sectors
