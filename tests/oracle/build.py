"""Build the native trampoline into a shared library, once per source version.

The library is cached under ``tests/oracle/_build/`` (gitignored) with the source's hash in
its file name, so editing ``trampoline.c`` rebuilds it and a stale build is never loaded.
"""

import hashlib
import os
import pathlib
import subprocess
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "trampoline.c"
BUILD_DIR = HERE / "_build"


class BuildError(RuntimeError):
    """The host cannot build the trampoline (no gcc, not x86-64, ...)."""


def library_path() -> pathlib.Path:
    """Return the path of the built library, building it if the source changed."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    target = BUILD_DIR / f"liboracle-{digest}.so"
    if target.exists():
        return target
    BUILD_DIR.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=BUILD_DIR, suffix=".so")
    os.close(fd)
    cmd = ["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", tmp, str(SOURCE)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError as exc:
        os.unlink(tmp)
        raise BuildError("gcc not found") from exc
    if proc.returncode != 0:
        os.unlink(tmp)
        raise BuildError(f"gcc failed:\n{proc.stderr}")
    os.replace(tmp, target)  # atomic: concurrent builders never see a half-written file
    return target
