"""Assemble Intel-syntax snippets with GNU as, many per invocation, cached per session.

Each snippet goes into its own section of one source file, so one ``as`` run assembles
hundreds of them; the sections' bytes are read back from the object file with pyelftools.
A snippet is position-independent by construction (its labels are local to its section and
absolute addresses are constants), so its bytes are valid at ``native.CODE_ADDR``; a
snippet that would need a relocation (a reference outside itself) is rejected.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from elftools.elf.elffile import ELFFile

_cache: dict[str, bytes] = {}


class AsmError(ValueError):
    """GNU as rejected a snippet, or a snippet needs a relocation."""


def _section(i: int) -> str:
    return f".text.snip{i}"


def assemble_many(snippets) -> list[bytes]:
    """Return the machine code of each Intel-syntax snippet (lines separated by newlines
    or ';'), in order.  Already-assembled snippets come from the cache."""
    snippets = list(snippets)
    todo = sorted({s for s in snippets if s not in _cache})
    if todo:
        _cache.update(zip(todo, _assemble(todo)))
    return [_cache[s] for s in snippets]


def assemble(snippet: str) -> bytes:
    """Return the machine code of one snippet."""
    return assemble_many([snippet])[0]


def _assemble(snippets: list[str]) -> list[bytes]:
    parts = [".intel_syntax noprefix\n"]
    for i, text in enumerate(snippets):
        parts.append(f'.section {_section(i)},"ax",@progbits\n{text}\n')
    with tempfile.TemporaryDirectory() as tmp:
        src, obj = os.path.join(tmp, "s.s"), os.path.join(tmp, "s.o")
        with open(src, "w") as f:
            f.write("".join(parts))
        proc = subprocess.run(["as", "--64", "-o", obj, src], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AsmError(_explain(proc.stderr, parts))
        with open(obj, "rb") as f:
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if sec.name.startswith(".rela.text.snip"):
                    i = int(sec.name[len(".rela.text.snip"):])
                    raise AsmError(f"snippet needs a relocation: {snippets[i]!r}")
            code = {sec.name: sec.data() for sec in elf.iter_sections()}
    return [code.get(_section(i), b"") for i in range(len(snippets))]


def _explain(stderr: str, parts: list[str]) -> str:
    """Quote the source lines that as complained about."""
    source = "".join(parts).splitlines()
    lines = []
    for msg in stderr.splitlines():
        bits = msg.split(":")
        if len(bits) > 2 and bits[1].isdigit() and int(bits[1]) <= len(source):
            msg += f"   <<< {source[int(bits[1]) - 1].strip()}"
        lines.append(msg)
    return "\n".join(lines)
