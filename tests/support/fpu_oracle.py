"""Batches of floating-point snippets run on the silicon and on kvmpy, compared byte for byte.

Shared by tests/diff/test_sse_diff.py, test_x87_diff.py, test_movbe_sse42.py and test_xsave.py: each snippet stores the state it
wants compared (XMM registers, x87 stack, MXCSR, status words, flags) into the data page, so
comparing the data page, the general registers, the flags and the exception compares the
floating-point results.  The snippets are assembled in one GNU as run.
"""

from tests.oracle import asm, diff
from tests.oracle.native import DATA_ADDR, run_native

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


# The SSE snippets' data page: inputs, outputs, MXCSR in and out, flags.
IN, OUT, MXCSR_IN, MXCSR_OUT, FLAGS_OUT = 0x000, 0x800, 0xFF0, 0xFF4, 0xF00
NREGS = 8


class Snippets(Batch):
    """Snippets that start from given XMM registers and MXCSR and store them all at the end."""

    def add(self, body, xmm, mxcsr=0x1F80, regs=None, flags=False, extra=b""):
        """``xmm``: initial values of xmm0..; ``body``: the instructions under test."""
        mem = bytearray(4096)
        for i, v in enumerate(xmm):
            mem[IN + 16 * i:IN + 16 * i + 16] = (v & ((1 << 128) - 1)).to_bytes(16, "little")
        mem[0x400:0x400 + len(extra)] = extra
        mem[MXCSR_IN:MXCSR_IN + 4] = mxcsr.to_bytes(4, "little")
        body = body if isinstance(body, list) else [body]
        lines = ["ldmxcsr [%#x]" % (DATA_ADDR + MXCSR_IN)]
        lines += ["movdqu xmm%d, [%#x]" % (i, DATA_ADDR + IN + 16 * i) for i in range(NREGS)]
        lines += body
        if flags:
            lines += ["pushfq", "pop rax", "and eax, 0x8d5", "mov [%#x], eax" % (DATA_ADDR + FLAGS_OUT)]
        lines += ["movdqu [%#x], xmm%d" % (DATA_ADDR + OUT + 16 * i, i) for i in range(NREGS)]
        lines += ["stmxcsr [%#x]" % (DATA_ADDR + MXCSR_OUT)]
        title = "[%s] mxcsr=%#x xmm=%s regs=%s" % ("; ".join(body), mxcsr, [hex(v) for v in xmm], regs)
        super().add(lines, mem, regs, title)
