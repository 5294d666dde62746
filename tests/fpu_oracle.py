"""Batches of floating-point snippets run on the silicon and on kvmpy, compared byte for byte.

Shared by tests/test_sse_diff.py and tests/test_x87_diff.py: each snippet stores the state it
wants compared (XMM registers, x87 stack, MXCSR, status words, flags) into the data page, so
comparing the data page, the general registers, the flags and the exception compares the
floating-point results.  The snippets are assembled in one GNU as run.
"""

from tests.oracle import asm, diff
from tests.oracle.native import run_native

MAX_REPORTED = 15


class Batch:
    def __init__(self):
        self.items = []          # (asm source, regs, data page, title)

    def add(self, lines, mem, regs=None, title=""):
        self.items.append(("\n".join(lines), dict(regs or {}), bytes(mem), title))

    def tolerate(self, expected, actual):
        """kvmpy's result as compared; subclasses may forgive documented imprecision."""
        return actual

    def check(self, run_snippet):
        """Assert that every snippet ends the same way on both sides."""
        codes = asm.assemble_many(src for src, _, _, _ in self.items)
        problems = []
        for (_, regs, mem, title), code in zip(self.items, codes):
            expected = run_native(code, regs, 0, mem)
            actual = self.tolerate(expected, run_snippet(code, dict(regs), 0, mem))
            problems += ["%s: %s" % (title, d) for d in diff.compare(expected, actual)]
        shown = "\n".join(problems[:MAX_REPORTED])
        assert not problems, f"{len(problems)} differences from the silicon:\n{shown}"
