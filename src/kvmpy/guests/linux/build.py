"""Build kvmpy's guest kernel from Debian's linux-source-6.1, out of tree.

The steps, each skipped when its result is there already:

1. unpack ``/usr/src/linux-source-6.1.tar.xz`` into the work directory (not the repo);
2. ``make O=out tinyconfig``, merge ``kvmpy.config`` over it with the kernel's
   ``scripts/kconfig/merge_config.sh``, ``make olddefconfig`` (an option of the fragment
   that did not survive -- a dependency missing -- is an error, not a silent drop);
3. ``nice make -j N bzImage vmlinux`` (vmlinux is for the PVH loader);
4. copy the bzImage into the package and write ``build.json``: the hash of the recipe
   (:func:`recipe_hash`), the source used, and the image's hash.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile

from kvmpy.guests.linux import BZIMAGE, CONFIG_FRAGMENT, LINUX_DIR, MANIFEST

SOURCE_TARBALL = "/usr/src/linux-source-6.1.tar.xz"
WORK_DIR = "/work/linux-build"
#: the files whose contents decide the kernel: a change to either makes it stale
RECIPE_FILES = ("kvmpy.config", "build.py")


class BuildError(Exception):
    """A failed step of the build, with what to look at."""


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def recipe_hash():
    """SHA-256 over the recipe files' names and contents."""
    h = hashlib.sha256()
    for name in RECIPE_FILES:
        h.update(name.encode() + b"\0" + (LINUX_DIR / name).read_bytes() + b"\0")
    return h.hexdigest()


def source_tree(tarball=SOURCE_TARBALL, work_dir=WORK_DIR):
    """The unpacked source tree (unpacking the tarball the first time)."""
    name = os.path.basename(tarball).split(".tar")[0]
    tree = os.path.join(work_dir, name)
    if not os.path.isfile(os.path.join(tree, "Makefile")):
        if not os.path.isfile(tarball):
            raise BuildError(f"{tarball}: no kernel source (apt-get install {name})")
        os.makedirs(work_dir, exist_ok=True)
        print(f"unpacking {tarball} into {work_dir}", flush=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(work_dir)
    return tree


def _make(tree, out, *targets, jobs=1):
    argv = ["nice", "make", "-C", tree, f"O={out}", f"-j{jobs}"] + list(targets)
    print(" ".join(argv), flush=True)
    if subprocess.run(argv).returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed")


def fragment_options(text):
    """``{CONFIG_X: value}`` of a config fragment (``# CONFIG_X is not set`` is "n")."""
    options = {}
    for line in text.splitlines():
        m = re.match(r"(CONFIG_\w+)=(.*)$", line) or re.match(r"# (CONFIG_\w+) is not set$", line)
        if m:
            options[m.group(1)] = m.group(2) if m.lastindex == 2 else "n"
    return options


def configure(tree, out):
    """tinyconfig + the fragment; raise if an option of the fragment did not take."""
    _make(tree, out, "tinyconfig")
    config = os.path.join(out, ".config")
    subprocess.run([os.path.join(tree, "scripts/kconfig/merge_config.sh"), "-m", "-O", out,
                    config, str(CONFIG_FRAGMENT)], check=True, stdout=subprocess.DEVNULL)
    _make(tree, out, "olddefconfig")
    with open(config) as f:
        got = fragment_options(f.read())
    lost = [f"{k}={v} (got {got.get(k, 'n')})"
            for k, v in fragment_options(CONFIG_FRAGMENT.read_text()).items() if got.get(k, "n") != v]
    if lost:
        raise BuildError("options of kvmpy.config that Kconfig dropped: " + ", ".join(lost))


def kernel_release(tree, out):
    return subprocess.run(["make", "-s", "-C", tree, f"O={out}", "kernelrelease"],
                          capture_output=True, text=True, check=True).stdout.strip()


def write_manifest(**fields):
    fields.update(recipe=recipe_hash(), bzImage=_sha256(BZIMAGE.read_bytes()))
    MANIFEST.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")


def build(tarball=SOURCE_TARBALL, work_dir=WORK_DIR, jobs=2):
    """The whole recipe; return the manifest written."""
    tree = source_tree(tarball, work_dir)
    out = os.path.join(work_dir, "out")
    os.makedirs(out, exist_ok=True)
    configure(tree, out)
    _make(tree, out, "bzImage", "vmlinux", jobs=jobs)
    shutil.copyfile(os.path.join(out, "arch/x86/boot/bzImage"), BZIMAGE)
    write_manifest(linux_source=os.path.basename(tarball), kernel_release=kernel_release(tree, out))
    return json.loads(MANIFEST.read_text())


def check():
    """Problems with the committed bzImage (an empty list: it matches the recipe)."""
    manifest = json.loads(MANIFEST.read_text())
    problems = []
    if manifest["recipe"] != recipe_hash():
        problems.append("the recipe changed since the bzImage was built: "
                        "python -m kvmpy.guests.linux build")
    if manifest["bzImage"] != _sha256(BZIMAGE.read_bytes()):
        problems.append("bzImage is not the image build.json records")
    return problems
