"""What machine a recorded result came from: the host kernel and CPU (for tests/data/)."""

from __future__ import annotations

import os
import re


def _cpuinfo() -> dict:
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break                       # the first processor is enough
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def describe() -> dict:
    """``kernel`` (uname -r), ``cpu`` (model name), vendor, family/model/stepping, microcode."""
    c = _cpuinfo()
    num = lambda k: int(c[k]) if c.get(k, "").isdigit() else None  # noqa: E731
    return {"kernel": os.uname().release, "cpu": c.get("model name"), "vendor": c.get("vendor_id"),
            "family": num("cpu family"), "model": num("model"), "stepping": num("stepping"),
            "microcode": c.get("microcode")}


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as ``6.18.44-generic`` (uname -r)."""
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def cpu_flags() -> set:
    """The host kernel's CPU flags (/proc/cpuinfo).  The kernel clears ``la57`` when it runs
    with 4-level paging, so the flag says what the kernel uses, not only what the CPU has."""
    return set(_cpuinfo().get("flags", "").split())


def user_pointer_limit(kernel: tuple | None = None, flags: set | None = None) -> int:
    """The first address the host kernel's access_ok() refuses for a range of more than a
    page (as KVM_SET_USER_MEMORY_REGION checks userspace_addr): up to 6.3 TASK_SIZE_MAX;
    6.4 to 6.11 only the sign bit (valid_user_address was ``(long)x >= 0``); from 6.12
    USER_PTR_MAX, TASK_SIZE_MAX again unless LAM is enabled.  TASK_SIZE_MAX is 2**47 with
    4-level and 2**56 with 5-level paging (less a guard page, which does not matter here)."""
    kernel = kernel_version() if kernel is None else kernel
    flags = cpu_flags() if flags is None else flags
    if (6, 4) <= kernel < (6, 12) or (kernel >= (6, 12) and "lam" in flags):
        return 1 << 63
    return 1 << (56 if "la57" in flags else 47)
