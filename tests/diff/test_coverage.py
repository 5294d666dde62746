"""The implemented-forms probe of ``kvmpy.testing.coverage``: facts any working processor shows."""

import io
from collections import Counter

import pytest

from kvmpy.hw.translate import codegen
from kvmpy.testing.coverage import Form, Implemented, report
from kvmpy.hw.translate.decoder import MAP0F, MAP0F38
from tests.oracle.coverage import instructions


@pytest.fixture(scope="module")
def impl():
    return Implemented()


def outcome(impl, bits, opc, reg=None, mem=False, pfx="", w=False, rm=None):
    return impl.outcome.get(impl.canonical(Form(bits, opc, reg, rm, mem, pfx, w)))


def test_every_emitter_translates_without_python_errors(impl):
    assert not impl.errors, sorted(impl.errors.items())[:5]
    probed = {f.opc for f in impl.outcome if f.bits == 64}
    assert probed == set(codegen.EMITTERS)


@pytest.mark.parametrize("bits", [64, 32])
def test_one_byte_alu_is_implemented_in_every_form(impl, bits):
    for base in range(0x00, 0x40, 8):
        for opc in range(base, base + 4):
            for mem in (False, True):
                for pfx in ("", "66"):
                    assert outcome(impl, bits, opc, mem=mem, pfx=pfx) == "ok", (bits, hex(opc), mem, pfx)
        assert outcome(impl, bits, base + 4, mem=None) == "ok"
        assert outcome(impl, bits, base + 5, mem=None) == "ok"
        for reg in range(8):        # group 1: 81 /reg
            assert outcome(impl, bits, 0x81, reg=reg, mem=True) == "ok"


def test_prefixes_that_change_nothing_are_aliases(impl):
    add = Form(64, 0x01, None, None, False, "", False)
    assert impl.canonical(add._replace(pfx="F3")) == add
    assert impl.canonical(add._replace(w=True)) != add          # 64-bit operand size is a form


def test_sse_forms_are_selected_by_mandatory_prefix(impl):
    for pfx in ("", "66", "F3", "F2"):                          # addps / addpd / addss / addsd
        assert outcome(impl, 64, MAP0F | 0x58, pfx=pfx) == "ok", pfx
        assert outcome(impl, 64, MAP0F | 0x58, pfx=pfx, mem=True) == "ok", pfx
    assert outcome(impl, 64, MAP0F38 | 0x00, pfx="66") == "ok"  # pshufb xmm
    assert outcome(impl, 64, MAP0F | 0xB8, pfx="F3") == "ok"    # popcnt
    assert outcome(impl, 64, MAP0F | 0xB8) == "ud"              # 0F B8 without F3: #UD
    sse64 = [f for f in impl.forms("ok", 64) if f.opc >> 8 and f.pfx in ("66", "F2", "F3")]
    assert len(sse64) > 200


def test_undefined_forms_are_classified(impl):
    assert outcome(impl, 64, 0xFE, reg=2) == "ud"               # group 4 has only INC/DEC
    assert outcome(impl, 64, 0x27, mem=None) in ("nodecode", "ud")   # DAA in 64-bit mode
    assert outcome(impl, 32, 0x27, mem=None) == "ok"


def test_decoded_instructions_map_onto_forms(impl):
    code = bytes.fromhex("f30f58c1" "4801c8" "f3011b" "d9e0")  # addss; add rax,rcx; rep add [rbx]; fchs
    forms = [impl.form_of(i) for i in instructions(code)]
    assert [impl.outcome[f] for f in forms] == ["ok"] * 4
    assert forms[0].pfx == "F3" and forms[1].w and forms[2] == impl.canonical(Form(64, 1, None, None, True, "", 0))
    assert (forms[3].reg, forms[3].rm) == (4, 0)


def test_report_counts_exercised_forms(impl):
    hit = Counter({impl.form_of(i): 1 for i in instructions(bytes.fromhex("f30f58c1"))})
    out = io.StringIO()
    summary = report(impl, hit, out=out)
    assert summary["exercised"] == 1 and summary["ok64"] > 1500
    assert "never compared" in out.getvalue() and "compared against silicon: 1 of" in out.getvalue()
