"""A reader for KVM_GET_STATS_FD files, with os.pread only, as a VMM (e.g. QEMU) reads them."""

import os
import struct


def read_stats(fd):
    """Parse a KVM_GET_STATS_FD file with os.pread only, as a VMM (e.g. QEMU) does."""
    flags, name_size, num_desc, id_off, desc_off, data_off = struct.unpack("6I", os.pread(fd, 24, 0))
    stride = 16 + name_size
    descs = {}
    for i in range(num_desc):
        raw = os.pread(fd, stride, desc_off + i * stride)
        dflags, exponent, size, offset, bucket = struct.unpack("IhHII", raw[:16])
        value = struct.unpack("Q", os.pread(fd, 8, data_off + offset))[0]
        descs[raw[16:].rstrip(b"\0").decode()] = dict(flags=dflags, exponent=exponent, size=size,
                                                      bucket_size=bucket, value=value)
    return dict(flags=flags, name_size=name_size, id_offset=id_off, desc_offset=desc_off,
                data_offset=data_off, num_desc=num_desc,
                id=os.pread(fd, name_size, id_off).rstrip(b"\0").decode(), stats=descs)


def values(fd):
    return {name: d["value"] for name, d in read_stats(fd)["stats"].items()}
