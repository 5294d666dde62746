"""Property-based differential tests: hypothesis draws operands and flags for the
arithmetic, shift and multiply instructions; each drawn state runs on the silicon and on
kvmpy's processor, and the results must agree (undefined flags masked, per the SDM).

Hypothesis shrinks any disagreement to a minimal state, which complements the directed
edge values in tests/oracle/cases.py and the fuzzer's random sequences.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.oracle import asm, diff, flagspec
from tests.oracle.native import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

REGS = {1: ("al", "bl"), 2: ("ax", "bx"), 4: ("eax", "ebx"), 8: ("rax", "rbx")}
BINARY = ("add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test")
ONE_COUNT = ("shl", "shr", "sar", "rol", "ror", "rcl", "rcr")
USER_FLAGS = 0x8D5 | 0x400
RUN_SNIPPET = diff.load_run_snippet()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
edgy = st.one_of(u64, st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
                                        0xFFFFFFFF, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]))
flags = st.integers(min_value=0, max_value=USER_FLAGS).map(lambda f: f & USER_FLAGS)


def _check(text, regs, rflags, mnemonic, size, count=None):
    code = asm.assemble(text)
    case = diff.Case(text, regs, rflags, undefined_flags=flagspec.undefined_flags(mnemonic, size, count))
    problems = diff.run_case(case, code, RUN_SNIPPET)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("size", sorted(REGS))
@pytest.mark.parametrize("op", BINARY)
@SETTINGS
@given(a=edgy, b=edgy, fl=flags)
def test_binary_alu(op, size, a, b, fl):
    d, s = REGS[size]
    _check(f"{op} {d}, {s}", {"rax": a, "rbx": b}, fl, op, size)


@pytest.mark.parametrize("size", [1, 4, 8])
@pytest.mark.parametrize("op", ONE_COUNT)
@SETTINGS
@given(a=edgy, count=st.integers(min_value=0, max_value=70), fl=flags)
def test_shift_rotate_by_cl(op, size, a, count, fl):
    _check(f"{op} {REGS[size][0]}, cl", {"rax": a, "rcx": count}, fl, op, size, count)


@pytest.mark.parametrize("op", ["mul", "imul"])
@pytest.mark.parametrize("size", sorted(REGS))
@SETTINGS
@given(a=edgy, b=edgy, fl=flags)
def test_widening_multiply(op, size, a, b, fl):
    _check(f"{op} {REGS[size][1]}", {"rax": a, "rbx": b, "rdx": 0}, fl, op, size)
