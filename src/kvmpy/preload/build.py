"""Build libkvmpy_preload.so from the C source beside this module (``kvmpy build-preload``).

The library embeds the CPython that builds it: it is compiled against that interpreter's
headers, linked with its shared libpython, and starts that interpreter's executable (a venv's
``python`` finds the venv's site-packages, so kvmpy imports as in the venv).  A build needs
gcc (or ``$CC``) and the Python headers and shared library -- nothing else.  The library is
written next to the sources, replaced atomically, so concurrent builds do not clash.
"""

from __future__ import annotations

import os
import pathlib
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ("kvmpy_preload.c", "kvmpy_embed.c")
HEADERS = ("kvmpy_preload.h",)
LIBRARY = HERE / "libkvmpy_preload.so"


class BuildError(Exception):
    """The library cannot be built here (no compiler, no CPython to embed...)."""


def is_stale(library: pathlib.Path = LIBRARY) -> bool:
    """The library is missing or older than one of its sources."""
    if not library.exists():
        return True
    built = library.stat().st_mtime
    return any((HERE / name).stat().st_mtime > built for name in SOURCES + HEADERS)


def _python_library():
    """(-I, -L, -l arguments) for embedding this interpreter."""
    if platform.python_implementation() != "CPython":
        raise BuildError("the library embeds CPython: build it with CPython, not %s"
                         % platform.python_implementation())
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        raise BuildError("no Python.h in %s (Debian: apt-get install python3-dev)" % include)
    libdir = sysconfig.get_config_var("LIBDIR")
    name = "python" + sysconfig.get_config_var("LDVERSION")
    if not os.path.exists(os.path.join(libdir, "lib%s.so" % name)):
        raise BuildError("no shared lib%s.so in %s (Debian: apt-get install lib%s-dev; pyenv: "
                         "PYTHON_CONFIGURE_OPTS=--enable-shared)" % (name, libdir, name))
    return ["-I" + include], ["-L" + libdir, "-Wl,-rpath," + libdir, "-l" + name]


def compile_command(output: pathlib.Path) -> list:
    cc = os.environ.get("CC") or "gcc"
    if shutil.which(cc) is None:
        raise BuildError("no C compiler (%s) to build the library" % cc)
    includes, libs = _python_library()
    executable = sys.executable.replace("\\", "\\\\").replace('"', '\\"')
    return ([cc, "-shared", "-fPIC", "-O2", "-Wall", "-U_FORTIFY_SOURCE",
             '-DKVMPY_PYTHON="%s"' % executable] + includes
            + [str(HERE / name) for name in SOURCES]
            + libs + ["-ldl", "-lpthread", "-o", str(output)])


def build(library: pathlib.Path = LIBRARY) -> pathlib.Path:
    """Compile the library to ``library`` (BuildError with the compiler's output if it fails)."""
    fd, tmp = tempfile.mkstemp(prefix=library.name + ".", dir=library.parent)
    os.close(fd)
    try:
        proc = subprocess.run(compile_command(pathlib.Path(tmp)), capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError("building %s failed:\n%s" % (library.name, proc.stderr))
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


def ensure_built() -> pathlib.Path:
    """The library, built first if it is missing or out of date."""
    if is_stale():
        try:
            build()
        except BuildError:
            if not LIBRARY.exists():
                raise
    return LIBRARY
