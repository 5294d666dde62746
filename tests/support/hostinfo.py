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


def cpu_flags() -> set:
    """The host CPU's feature flags, as /proc/cpuinfo names them (empty where it cannot be read)."""
    return set(_cpuinfo().get("flags", "").split())


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
