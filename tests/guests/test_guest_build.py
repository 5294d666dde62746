"""The committed guest images must be what their sources assemble to."""

import subprocess
import sys

import pytest

from kvmpy.guests import build, image_path, load_image


def test_committed_images_match_sources():
    missing = build.toolchain_missing()
    if missing:
        pytest.skip(f"'{missing}' (GNU binutils) is not installed")
    proc = subprocess.run([sys.executable, "-m", "kvmpy.guests.build", "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "match their sources" in proc.stdout


def test_check_detects_a_stale_image(tmp_path, monkeypatch):
    if build.toolchain_missing():
        pytest.skip("GNU binutils are not installed")
    for source in build.sources():
        (tmp_path / source.name).write_bytes(source.read_bytes())
        (tmp_path / f"{source.stem}.bin").write_bytes(image_path(source.stem).read_bytes())
    for include in build.GUEST_DIR.glob("*.inc"):
        (tmp_path / include.name).write_bytes(include.read_bytes())
    stale = tmp_path / "demo.bin"
    stale.write_bytes(b"\xf4" + stale.read_bytes()[1:])     # hlt instead of cli
    monkeypatch.setattr(build, "GUEST_DIR", tmp_path)
    assert build.check_all() == ["demo.bin is out of date with demo.S"]


def test_images_are_small_boot_images():
    """Every guest starts with `cli` in real mode, but the PVH kernels: ELF files made by
    hand (pvh.inc), which begin with the ELF magic."""
    for source in build.sources():
        image = load_image(source.stem)
        assert 0 < len(image) < build.MAX_IMAGE_SIZE
        pvh_kernel = '.include "pvh.inc"' in source.read_text()
        assert image[:4] == b"\x7fELF" if pvh_kernel else image[0] == 0xFA
