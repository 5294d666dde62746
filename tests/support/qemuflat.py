"""Run a flat guest image (kvmpy/guests/*.bin) under QEMU TCG, where the host's /dev/kvm
cannot be the oracle (here its emulator stops at far calls through gates and at user-mode
interrupts).

QEMU runs the image without SeaBIOS: a 64 KiB "BIOS" whose reset vector jumps to 0:0x7c00,
and the image placed there by QEMU's generic loader device, so the guest starts as under
kvmpy (real mode, empty IVT).
"""

import json
import os
import pathlib
import shutil
import subprocess
import tempfile

QEMU = "qemu-system-x86_64"
RESET_JUMP = bytes([0xEA, 0x00, 0x7C, 0x00, 0x00])      # jmp far 0000:7c00 at F000:FFF0


def qemu_missing():
    """True when QEMU is not installed (the tests that need it skip)."""
    return shutil.which(QEMU) is None


def run_qemu(image):
    """Run ``image`` under QEMU TCG; return {"console", "exit_value"}."""
    with tempfile.TemporaryDirectory() as tmp:
        bios, guest = pathlib.Path(tmp, "bios.bin"), pathlib.Path(tmp, "guest.bin")
        bios.write_bytes(bytes(0xFFF0) + RESET_JUMP + bytes(11))
        guest.write_bytes(image)
        argv = [QEMU, "-machine", "pc", "-accel", "tcg", "-m", "16", "-display", "none", "-nographic",
                "-serial", "stdio", "-monitor", "none", "-net", "none",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-bios", str(bios),
                "-device", f"loader,file={guest},addr=0x7c00,force-raw=on"]
        proc = subprocess.run(argv, capture_output=True, timeout=60)
    status = proc.returncode
    return {"console": proc.stdout.decode("latin-1"), "exit_value": status >> 1 if status & 1 else None}


def recording_path(guest):
    """tests/data/<guest>.qemu.json: QEMU's run of the guest, committed."""
    return pathlib.Path(__file__).resolve().parents[1] / "data" / f"{guest}.qemu.json"


def check_qemu_run(guest, console):
    """Run kvmpy/guests/<guest>.bin under QEMU: it must print ``console`` and exit 0, and
    match the recording (which ``KVMPY_RECORD=1`` refreshes instead)."""
    from kvmpy.guests import load_image
    result = run_qemu(load_image(guest))
    assert result == {"console": console, "exit_value": 0}
    if os.environ.get("KVMPY_RECORD") == "1":
        recording_path(guest).write_text(json.dumps(result, indent=1) + "\n")
    else:
        assert result == json.loads(recording_path(guest).read_text())


def recorded_run(guest):
    """The committed QEMU run of ``guest``: {"console", "exit_value"}."""
    return json.loads(recording_path(guest).read_text())
