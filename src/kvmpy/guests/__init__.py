"""Guest programs: assembly sources (``*.S``) and their prebuilt flat images (``*.bin``).

Each image is loaded at guest-physical 0x7c00 and entered in real mode at CS:IP 0:0x7c00;
``boot.inc`` documents the conventions (COM1, isa-debug-exit, the MMIO device), and
``python -m kvmpy.guests.build`` rebuilds the images.
"""

import pathlib

_GUEST_DIR = pathlib.Path(__file__).resolve().parent


def image_path(name):
    """Path of the prebuilt image of guest ``name`` (e.g. "demo")."""
    path = _GUEST_DIR / f"{name}.bin"
    if not path.exists():
        raise FileNotFoundError(f"no guest image named {name!r} in {_GUEST_DIR}")
    return path


def load_image(name):
    """The bytes of guest ``name``'s flat image."""
    return image_path(name).read_bytes()
