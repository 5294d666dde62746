"""The bench guest (``kvmpy/guests/bench_workloads.S``): its parameter block and what it
must print.

The guest image carries, at offset 512 (guest-physical 0x7e00), the magic ``KVMPYBNC`` and
three little-endian u32 counts (int iterations, sieve passes, memcpy rounds).  ``image``
patches them, so one committed image gives every workload at any size, and the all-zero
block is the empty guest whose cost the bench subtracts.  ``expected_output`` computes in
Python what the guest prints for given counts: an independent oracle, so a runner that
finishes fast but computes the wrong thing is caught.
"""

from __future__ import annotations

import struct

from kvmpy.guests import load_image

PARAMS_OFFSET = 512
MAGIC = b"KVMPYBNC"
WORKLOADS = ("int", "sieve32", "memcpy64")
#: each workload alone, about 3 million guest instructions
DEFAULT_COUNTS = {"int": 200_000, "sieve32": 4, "memcpy64": 100}
DESCRIPTIONS = {
    "int": "integer/branch loop (64-bit)",
    "sieve32": "sieve 64 KiB (32-bit, paging off)",
    "memcpy64": "memcpy/string (64-bit, paging)",
}
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def image(counts: dict[str, int]) -> bytes:
    """The bench guest with its counts set from ``counts`` (missing workloads: 0, skipped)."""
    data = bytearray(load_image("bench_workloads"))
    at = PARAMS_OFFSET + len(MAGIC)
    if data[PARAMS_OFFSET:at] != MAGIC:
        raise ValueError("bench_workloads.bin has no parameter block at offset %d" % PARAMS_OFFSET)
    unknown = set(counts) - set(WORKLOADS)
    if unknown:
        raise ValueError("unknown workloads: %s" % ", ".join(sorted(unknown)))
    data[at:at + 12] = struct.pack("<3I", *(counts.get(w, 0) for w in WORKLOADS))
    return bytes(data)


def int_checksum(n: int) -> int:
    """r12 + r13 after ``n`` rounds of the guest's xorshift64 loop."""
    x, odd_sum, even_xor = 0x2545F4914F6CDD1D, 0, 0
    for _ in range(n):
        x ^= (x << 13) & MASK64
        x ^= x >> 7
        x ^= (x << 17) & MASK64
        if x & 1:
            odd_sum = (odd_sum + x) & MASK64
        else:
            even_xor ^= x
    return (odd_sum + even_xor) & MASK64


def primes_below(limit: int) -> list[int]:
    is_prime = bytearray([1]) * limit
    is_prime[0:2] = b"\0\0"
    for p in range(2, int(limit ** 0.5) + 1):
        if is_prime[p]:
            is_prime[p * p::p] = bytes(len(range(p * p, limit, p)))
    return [i for i in range(limit) if is_prime[i]]


def memcpy_checksum(rounds: int) -> int:
    """The rotate-xor hash of buffers B..D after ``rounds`` rounds (see memcpy_rounds)."""
    a = bytearray(struct.pack("<8192Q", *((i * GOLDEN) & MASK64 for i in range(8192))))
    b, c, d = bytearray(65536), bytearray(65536), bytearray(65536)
    cq, dq = memoryview(c).cast("Q"), memoryview(d).cast("Q")
    off = 0
    for _ in range(rounds):
        b[0:16384] = a[off:off + 16384]
        c[off:off + 4096] = b[0:4096]
        for i in range(2048):
            dq[i] = (dq[i] + cq[i]) & MASK64
        b[8192:12288] = c[0:4096]
        off = (off + 13) & 0xFF
    h = 0
    for q in struct.unpack("<24576Q", bytes(b + c + d)):
        h = (((h << 7) | (h >> 57)) & MASK64) ^ q
    return h


def expected_output(counts: dict[str, int]) -> str:
    """The serial output of the bench guest for ``counts``."""
    lines = []
    if counts.get("int"):
        lines.append("int %#018x" % int_checksum(counts["int"]))
    if counts.get("sieve32"):
        primes = primes_below(65536)
        lines.append("sieve32 %d %d" % (len(primes), sum(primes) * counts["sieve32"] & 0xFFFFFFFF))
    if counts.get("memcpy64"):
        lines.append("memcpy64 %#018x" % memcpy_checksum(counts["memcpy64"]))
    lines.append("bench done")
    return "".join(line + "\r\n" for line in lines)
