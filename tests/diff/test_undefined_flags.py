"""The flags the manuals leave undefined, against the silicon, all six compared.

MUL/IMUL (every form and width) and shifts/rotates/SHLD/SHRD by random counts run natively
and on kvmpy's processor under the model of the host's vendor (``host``).  AMD's silicon is
consistent (Zen 3: ``mul_keeps_szap``, ``shift_flags_amd`` in ``kvmpy.hw.models``), so on an
AMD host every flag must match.  The Intel model's undefined flags are kvmpy's choice (no
Intel silicon was measured): on an Intel host this test skips, and
``tests/data/silicon/amd-EPYC-Milan.json`` keeps the AMD model checked there.
"""

import random

import pytest

from kvmpy.hw import models
from tests.oracle import asm, native
from tests.oracle.native import USER_FLAGS

pytestmark = [
    pytest.mark.skipif(native.unavailable_reason() is not None, reason=native.unavailable_reason() or ""),
    pytest.mark.skipif(models.host_vendor() != models.AMD,
                       reason="the Intel model's undefined flags are not established (no Intel silicon)"),
]

WIDTHS = (("al", "bl", 8), ("ax", "bx", 16), ("eax", "ebx", 32), ("rax", "rbx", 64))
MUL_FORMS = ("mul {b}", "imul {b}", "imul {a}, {b}", "imul {a}, {b}, 7")


def _cases(seed):
    rng = random.Random(seed)
    start = lambda: rng.choice([0, USER_FLAGS & ~0x400, rng.getrandbits(12) & USER_FLAGS & ~0x400])
    out = []
    for a, b, n in WIDTHS:
        for form in MUL_FORMS:
            if n == 8 and form.count("{a}"):
                continue            # no 8-bit two- or three-operand IMUL
            for _ in range(6):
                out.append((form.format(a=a, b=b), {"rax": rng.getrandbits(64) >> rng.choice([0, n // 2]),
                                                    "rbx": rng.getrandbits(64) >> rng.choice([0, n // 2])}, start()))
        for op in ("shl", "shr", "sar", "rol", "ror", "rcl", "rcr"):
            for _ in range(6):
                count = rng.choice([1, 2, n - 1, n, n + 1, rng.randrange(1, 64)])
                out.append(("%s %s, cl" % (op, a), {"rax": rng.getrandbits(64), "rcx": count}, start()))
        if n > 8:
            for op in ("shld", "shrd"):
                for _ in range(6):
                    count = rng.randrange(1, n if n > 16 else 16)
                    out.append(("%s %s, %s, cl" % (op, a, b), {"rax": rng.getrandbits(64), "rbx": rng.getrandbits(64),
                                                              "rcx": count}, start()))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_undefined_flags_match_the_silicon(run_snippet, seed):
    cases = _cases(seed)
    codes = asm.assemble_many(src for src, _, _ in cases)
    problems = []
    for (src, regs, flags), code in zip(cases, codes):
        want = native.run_native(code, regs, flags)
        got = run_snippet(code, regs, flags, model="host")
        if (want.rflags ^ got.rflags) & USER_FLAGS or want.regs["rax"] != got.regs["rax"]:
            problems.append("%s %s from %#x: silicon %#x, kvmpy %#x" % (src, regs, flags, want.rflags & USER_FLAGS,
                                                                        got.rflags & USER_FLAGS))
    assert not problems, "\n".join(problems[:10])
