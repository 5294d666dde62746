"""Which implemented forms the comparisons against the silicon exercise.

Collects the snippets the differential tests run -- the directed cases, a seeded sample of
fuzz programs, the instruction-group, SSE, x87 and self-modifying-code snippets --,
assembles them with GNU as, decodes every instruction with kvmpy's decoder and maps it onto
the forms of ``kvmpy.testing.coverage``.  The SSE and x87 tests build their snippets inside the
test functions, so they are called with ``Batch.add`` recording and assembling disabled
(nothing runs).  Prints the full report (implemented + exercised):

    python -m tests.oracle.coverage [--fuzz 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import inspect
import random
import sys
from collections import Counter

from kvmpy.testing.coverage import Implemented, report
from kvmpy.hw.translate.decoder import DecodeError, decode
from tests.oracle import asm, fuzz
from tests.oracle.cases import FAMILIES
from tests.oracle.native import DATA_ADDR


def directed_snippets() -> list[str]:
    return [c.asm for make in FAMILIES.values() for c in make()]


def fuzz_snippets(count: int, seed: int, length: int = 10) -> list[str]:
    rng = random.Random(seed)
    return [fuzz.Generator(rng).program(length).source for _ in range(count)]


def group_snippets() -> list[str]:
    from tests import test_insn_groups as groups
    return [c.asm for make in {**groups.GROUPS, **groups.FAULTING}.values() for c in make()]


def smc_snippets() -> list[str]:
    from tests import test_smc
    return [s.format(bad=0x1000, data=DATA_ADDR) for s in test_smc.FAULT_AFTER_FLAGS]


class _Stop(Exception):
    """Raised instead of assembling, so a test that runs its snippets itself stops there."""


def batch_snippets() -> list[str]:
    """The snippets the SSE and x87 tests add to their ``Batch``es, recorded without running."""
    from tests import fpu_oracle, test_sse_diff, test_x87_diff
    recorded = []
    add, check, assemble_many = fpu_oracle.Batch.add, fpu_oracle.Batch.check, asm.assemble_many

    def record(self, lines, *args, **kwargs):
        recorded.append("\n".join(lines))
        add(self, lines, *args, **kwargs)

    def stop(*args, **kwargs):
        raise _Stop

    fpu_oracle.Batch.add, fpu_oracle.Batch.check, asm.assemble_many = record, lambda *a: None, stop
    try:
        for module in (test_sse_diff, test_x87_diff):
            for name, fn in vars(module).items():
                if name.startswith("test_") and callable(fn):
                    for kwargs in _parametrizations(fn):
                        try:
                            fn(None, **kwargs)
                        except _Stop:
                            pass
    finally:
        fpu_oracle.Batch.add, fpu_oracle.Batch.check, asm.assemble_many = add, check, assemble_many
    return recorded


def _parametrizations(fn):
    """Keyword arguments for each case of a test's single-name ``parametrize`` marks."""
    combos = [{}]
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize" and "," not in mark.args[0]:
            combos = [dict(c, **{mark.args[0]: v}) for c in combos for v in mark.args[1]]
    extra = set(inspect.signature(fn).parameters) - {"run_snippet"}
    return [c for c in combos if set(c) == extra]


def instructions(code: bytes):
    """Decode a snippet's bytes one instruction after another (64-bit code)."""
    at = 0
    while at < len(code):
        try:
            ins = decode(lambda i: code[at + i], 8, at)
        except (DecodeError, IndexError):
            at += 1
            continue
        yield ins
        at += ins.length


def exercised(impl: Implemented, snippets) -> Counter:
    """How many times each (canonical) 64-bit form occurs in the snippets."""
    counts = Counter()
    for code in asm.assemble_many(sorted(set(snippets))):
        for ins in instructions(code):
            counts[impl.form_of(ins)] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz", type=int, default=300, help="fuzz programs to sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sources = {"directed": directed_snippets(), "fuzz": fuzz_snippets(args.fuzz, args.seed),
               "groups": group_snippets(), "smc": smc_snippets(), "sse/x87": batch_snippets()}
    print("snippets: " + ", ".join("%s %d" % (k, len(v)) for k, v in sources.items()))
    impl = Implemented()
    report(impl, exercised(impl, [s for v in sources.values() for s in v]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
