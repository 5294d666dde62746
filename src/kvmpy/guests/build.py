"""Assemble the guest programs in this directory into flat binaries.

Each ``<name>.S`` (GNU as, AT&T syntax, ``.code16/.code32/.code64``) becomes ``<name>.bin``
beside it: a flat image linked at guest-physical 0x7c00, entered in real mode at its first
byte. The .bin files are committed so that running kvmpy needs no assembler; ``--check``
rebuilds them in a temporary directory and fails if a committed image no longer matches its
source, so the two cannot drift apart unnoticed.

    python -m kvmpy.guests.build            # rebuild every <name>.bin
    python -m kvmpy.guests.build --check    # verify the committed images
"""

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

GUEST_DIR = pathlib.Path(__file__).resolve().parent
LOAD_ADDRESS = 0x7C00
MAX_IMAGE_SIZE = 4096


class BuildError(Exception):
    """An assembler or linker failure, or an image that breaks the guest conventions."""


def sources():
    """The guest sources, sorted by name (``*.inc`` files are included, not built)."""
    return sorted(GUEST_DIR.glob("*.S"))


def toolchain_missing():
    """Name of the first missing tool (``as``, ``ld``), or None when both are on PATH."""
    for tool in ("as", "ld"):
        if shutil.which(tool) is None:
            return tool
    return None


def _run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed:\n{proc.stderr.strip()}")


def assemble(source, out_dir):
    """Assemble and link ``source`` into ``out_dir/<name>.bin``; return the image path."""
    source = pathlib.Path(source)
    out_dir = pathlib.Path(out_dir)
    obj = out_dir / (source.stem + ".o")
    image = out_dir / (source.stem + ".bin")
    _run(["as", "--64", "-I", str(source.parent), "-o", str(obj), str(source)])
    _run(["ld", "-m", "elf_x86_64", f"-Ttext={LOAD_ADDRESS:#x}", "-e", "_start",
          "--oformat", "binary", "-o", str(image), str(obj)])
    obj.unlink()
    size = image.stat().st_size
    if size > MAX_IMAGE_SIZE:
        raise BuildError(f"{image.name} is {size} bytes; guests must stay under {MAX_IMAGE_SIZE}")
    return image


def build_all():
    """Rebuild every committed image in place."""
    for source in sources():
        image = assemble(source, GUEST_DIR)
        print(f"built {image.name} ({image.stat().st_size} bytes)")


def check_all():
    """Return a list of problems: images missing or differing from a fresh build."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources():
            fresh = assemble(source, tmp)
            committed = GUEST_DIR / fresh.name
            if not committed.exists():
                problems.append(f"{committed.name} is missing (source {source.name})")
            elif committed.read_bytes() != fresh.read_bytes():
                problems.append(f"{committed.name} is out of date with {source.name}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="fail if a committed .bin differs from its source")
    args = parser.parse_args(argv)
    missing = toolchain_missing()
    if missing:
        print(f"error: '{missing}' (GNU binutils) is not installed", file=sys.stderr)
        return 2
    try:
        if not args.check:
            build_all()
            return 0
        problems = check_all()
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"error: {problem}; run 'python -m kvmpy.guests.build'", file=sys.stderr)
    if not problems:
        print(f"ok: {len(sources())} guest images match their sources")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
