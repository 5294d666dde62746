"""Host results committed in tests/data/*.host.json: the machine each came from, and which
live hosts it can be held against.

A record is a JSON object whose ``recorded_on`` names the machine (kernel release, CPU
vendor/family/model/stepping, microcode: ``hostinfo.describe``) and the vendor module
behind its /dev/kvm.  What a host answers beyond the architecture (the descriptor caches
KVM_GET_SREGS reports, the RIP at a PIO exit, how an emulation failure is reported) is the
vendor module's: kvm_pvm runs every guest instruction in KVM's emulator, kvm_intel and
kvm_amd run them on the processor.  So a live host is compared with a record only where its
module is the recording's (``same_kind``); elsewhere a test checks what the architecture
fixes and compares kvmpy with the live host.
"""

from __future__ import annotations

import json

from tests.support import hostinfo, rawvmm

KEY = "recorded_on"


def machine() -> dict:
    """This machine as a record names it."""
    return dict(hostinfo.describe(), kvm_module=rawvmm.host_kvm_module())


def write_run(path, result: dict) -> None:
    """A ``rawvmm.run_guest`` result, with this machine, as the record at ``path``."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(rawvmm.to_json(dict(result, **{KEY: machine()})))


def read(path) -> tuple[dict, dict]:
    """(the recorded result without ``recorded_on``, the machine it came from)."""
    data = json.loads(path.read_text())
    origin = data.pop(KEY)
    return data, origin


def same_kind(origin: dict) -> bool:
    """Whether the live host's /dev/kvm is served by the recording machine's vendor module."""
    return origin["kvm_module"] == rawvmm.host_kvm_module()
