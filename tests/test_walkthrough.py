"""docs/walkthrough.md's promise holds: every ``file: NAME`` it cites is defined in that file.

The walkthrough says ``grep -rn "def NAME" src/kvmpy`` finds any function it lists and
``grep -rn "^NAME =" src/kvmpy`` any table, file-operations object or parameter.  It cites
them as ``path.py: NAME`` (``src/kvmpy/kernel/x86/run.py: vcpu_run``, or a path shortened
to its last components, ``run.py: kvm_set_cr``; ``Class.method`` for a method).  A rename
or a move that leaves the page behind fails here.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "kvmpy"
DOCS = ("docs/walkthrough.md", "docs/architecture.md")

CITATION = re.compile(r"`((?:[\w.]+/)*[\w.]+\.py): ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)`")
FILE = re.compile(r"`((?:src/kvmpy/)(?:[\w.]+/)*[\w.]+\.(?:py|S))`")


def _citations():
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for m in CITATION.finditer(text):
            yield doc, m.group(1), m.group(2)


def _files(cited: str):
    """The files under src/kvmpy whose path ends with ``cited``."""
    cited = cited[len("src/kvmpy/"):] if cited.startswith("src/kvmpy/") else cited
    return [p for p in SRC.rglob(Path(cited).name) if p.relative_to(SRC).as_posix().endswith(cited)]


def _defines(source: str, name: str) -> bool:
    """``def NAME``/``class NAME`` anywhere, or ``NAME =`` at the start of a line (module
    level); ``Class.method`` needs the class and a ``def method`` after it."""
    if "." in name:
        cls, meth = name.split(".")
        m = re.search(r"^class %s\b" % re.escape(cls), source, re.M)
        return m is not None and re.search(r"\bdef %s\(" % re.escape(meth), source[m.end():]) is not None
    return re.search(r"^\s*(?:def|class) %s\b|^%s\s*[:=]" % (re.escape(name), re.escape(name)),
                     source, re.M) is not None


CITED = sorted(set(_citations()))


def test_the_pages_cite_something():
    assert len(CITED) > 100


@pytest.mark.parametrize("doc,path,name", CITED, ids=["%s:%s:%s" % c for c in CITED])
def test_cited_name_is_defined_in_the_cited_file(doc, path, name):
    files = _files(path)
    assert files, "%s cites %s, which is not under src/kvmpy" % (doc, path)
    assert any(_defines(f.read_text(), name) for f in files), \
        "%s cites %s: %s, which that file does not define" % (doc, path, name)


@pytest.mark.parametrize("doc", DOCS)
def test_cited_files_exist(doc):
    missing = [m.group(1) for m in FILE.finditer((ROOT / doc).read_text())
               if not (ROOT / m.group(1)).exists()]
    assert not missing, "%s names files that do not exist: %s" % (doc, missing)
