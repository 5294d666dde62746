"""kvmpy's Linux guest recipe (kvmpy/guests/linux): the newc cpio writer, read back by GNU
cpio; the initramfs it makes from busybox; the committed bzImage checked against the recipe
it was built from."""

import gzip
import json
import shutil
import subprocess

import pytest

from kvmpy.guests import linux
from kvmpy.guests.linux import build as recipe
from kvmpy.guests.linux.cpio import CpioWriter
from kvmpy.guests.linux.initramfs import CONSOLE_MINOR, TTYAUX_MAJOR, build_initramfs, busybox_missing

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")


def _sample():
    w = CpioWriter()
    w.directory("bin")
    w.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    w.file("odd", b"x" * 5)                  # a length that needs padding
    w.symlink("bin/sh", "/bin/busybox")
    w.char_device("console", 5, 1)
    return w.getvalue()


@needs_cpio
def test_gnu_cpio_lists_what_was_written():
    out = subprocess.run(["cpio", "-tv", "--quiet"], input=_sample(), capture_output=True, check=True)
    rows = [line.split() for line in out.stdout.decode().splitlines()]
    assert [r[0] for r in rows] == ["drwxr-xr-x", "-rwxr-xr-x", "-rw-r--r--", "lrwxrwxrwx", "crw-------"]
    assert [r[-1] for r in rows] == ["bin", "bin/hello", "odd", "/bin/busybox", "console"]
    assert rows[3][-3] == "bin/sh"
    assert rows[4][4:6] == ["5,", "1"]


@needs_cpio
def test_gnu_cpio_extracts_the_file_contents(tmp_path):
    subprocess.run(["cpio", "-id", "--quiet", "bin/hello", "odd"], input=_sample(), cwd=tmp_path,
                   check=True)
    assert (tmp_path / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "odd").read_bytes() == b"xxxxx"


def test_archive_is_aligned_and_ends_with_the_trailer():
    data = _sample()
    assert data.startswith(b"070701") and len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data[-124:]


@needs_cpio
@pytest.mark.skipif(busybox_missing(), reason="no static busybox (busybox-static)")
def test_initramfs_has_init_console_and_busybox():
    archive = gzip.decompress(build_initramfs())
    out = subprocess.run(["cpio", "-tv", "--quiet"], input=archive, capture_output=True, check=True)
    rows = {line.split()[-1] if "->" not in line else line.split()[-3]: line.split()
            for line in out.stdout.decode().splitlines()}
    assert rows["init"][0] == "-rwxr-xr-x"
    assert rows["dev/console"][0].startswith("c") and rows["dev/console"][4:6] == [
        f"{TTYAUX_MAJOR},", str(CONSOLE_MINOR)]
    assert rows["bin/sh"][-1] == "/bin/busybox"
    assert rows["bin/busybox"][0] == "-rwxr-xr-x"


@needs_cpio
@pytest.mark.skipif(busybox_missing(), reason="no static busybox (busybox-static)")
def test_initramfs_init_is_the_script(tmp_path):
    subprocess.run(["cpio", "-id", "--quiet", "init"], input=gzip.decompress(build_initramfs()),
                   cwd=tmp_path, check=True)
    assert (tmp_path / "init").read_bytes() == linux.INIT_SCRIPT.read_bytes()


@pytest.mark.skipif(busybox_missing(), reason="no static busybox (busybox-static)")
def test_initramfs_is_reproducible():
    assert build_initramfs() == build_initramfs()


def test_committed_bzimage_matches_the_recipe():
    assert recipe.check() == []


def test_a_changed_recipe_is_reported(monkeypatch):
    manifest = json.loads(linux.MANIFEST.read_text())
    monkeypatch.setattr(recipe, "recipe_hash", lambda: "0" * 64)
    assert manifest["recipe"] != "0" * 64
    assert any("recipe changed" in p for p in recipe.check())


def test_fragment_options_parse_set_and_unset():
    text = "# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=8\n"
    assert recipe.fragment_options(text) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "8"}
