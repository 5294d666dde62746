"""Directed differential tests: each instruction family runs natively (the silicon oracle)
and on kvmpy's processor from the same states, and must end in the same registers, defined
flags, data area and exception.  The kvmpy half skips until ``kvmpy.testing.snippet`` exists."""

import pytest

from tests.oracle import asm, diff
from tests.oracle.cases import FAMILIES
from tests.oracle.native import run_native, unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=unavailable_reason() or "")
MAX_REPORTED = 20


@pytest.fixture(scope="module")
def assembled():
    """Assemble every family's snippets in one GNU as run; return the cases by family."""
    cases = {name: make() for name, make in FAMILIES.items()}
    asm.assemble_many({c.asm for family in cases.values() for c in family})
    return cases


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_matches_silicon(name, assembled, run_snippet):
    problems = []
    for case in assembled[name]:
        problems += diff.run_case(case, asm.assemble(case.asm), run_snippet)
    shown = "\n".join(problems[:MAX_REPORTED])
    more = f"\n... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    assert not problems, f"{len(problems)} differences from the silicon:\n{shown}{more}"


def test_cases_are_valid_on_silicon(assembled):
    """The test data itself: every case runs natively, faulting exactly in '-fault'
    families (so a kvmpy difference is never a bad case)."""
    wrong = []
    for name, cases in assembled.items():
        for case in cases:
            r = run_native(asm.assemble(case.asm), case.regs, case.rflags, case.mem)
            if (r.exception is not None) != name.endswith("-fault"):
                wrong.append(f"{name}: {case.describe()} -> exception {r.exception}")
    assert not wrong, "\n".join(wrong[:MAX_REPORTED])
