"""Differential fuzzing against the silicon: a bounded, seeded run for CI, plus the
generator's and shrinker's own checks (which need no kvmpy)."""

import random

import pytest

from tests.oracle import asm, diff, fuzz, native

pytestmark = pytest.mark.skipif(native.unavailable_reason() is not None,
                                reason=native.unavailable_reason() or "")
SEED, COUNT, LENGTH = 20240601, 300, 10


def test_generated_programs_are_valid_and_never_fault():
    rng = random.Random(SEED)
    programs = [fuzz.Generator(rng).program(LENGTH) for _ in range(COUNT)]
    asm.assemble_many(p.source for p in programs)
    for p in programs:
        assert fuzz.undefined_at_end(p.units) is not None, p.source
        r = native.run_native(asm.assemble(p.source), p.regs, p.rflags, p.mem)
        assert r.exception is None, f"vector {r.exception} from:\n{p.source}"
        assert r.regs["rbx"] == p.regs["rbx"] and r.regs["rsp"] == native.STACK_TOP
    mnemonics = {line.split()[0] for p in programs for u in p.units
                 for line in u.text.replace(":", ";").split(";") if line.strip()}
    assert {"add", "imul", "idiv", "lea", "push", "cmpxchg", "bswap"} <= mnemonics


def test_reading_an_undefined_flag_makes_a_program_invalid():
    units = [fuzz.Unit("and eax, ecx", 0, fuzz.ARITH & ~native.AF, native.AF)]
    assert fuzz.undefined_at_end(units) == native.AF
    assert fuzz.undefined_at_end(units + [fuzz.Unit("lahf", fuzz.ARITH & ~native.OF)]) is None
    assert fuzz.undefined_at_end(units + [fuzz.Unit("setc al", native.CF)]) == native.AF


MARK = "mov r15, 0x1122334455667788"


def _buggy_processor(code, regs, rflags, mem):
    """The silicon, except that it loads a wrong constant for one marked instruction."""
    marked = asm.assemble(MARK)
    return native.run_native(code.replace(marked, marked[:2] + b"\x89" + marked[3:]),
                             regs, rflags, mem)


def test_shrinker_isolates_the_offending_instruction():
    program = fuzz.Generator(random.Random(SEED)).program(LENGTH)
    program.units.append(fuzz.Unit(MARK))
    assert fuzz.check(program, native.run_native) == []
    problems = fuzz.check(program, _buggy_processor)
    assert problems and problems[0].startswith("r15")
    small = fuzz.shrink(program, _buggy_processor)
    assert [u.text for u in small.units] == [MARK]
    assert MARK in fuzz.report(small, problems)


def test_fuzz_matches_kvmpy():
    run_snippet = diff.load_run_snippet()
    compared, failures = fuzz.fuzz(COUNT, SEED, LENGTH, run_snippet)
    assert not failures, f"{len(failures)} of {COUNT} programs differ:\n\n" + "\n\n".join(failures[:5])
