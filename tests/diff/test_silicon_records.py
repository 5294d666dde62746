"""Every vendor's silicon, checked on any host: the answers recorded from (or, marked
``"source": "manual"``, derived from the manuals for) each vendor's silicon in
``tests/data/silicon/`` must be what kvmpy's processor gives under that file's CPU model.

The live comparisons (``tests/diff/test_*_diff.py``, ``tests/oracle``) check the model of the host's
vendor against the host; these files keep the other vendor's model checked too.  Re-record the
host's file with ``python -m tests.oracle.record``.
"""

import functools
import json
import pathlib

import pytest

from kvmpy.hw import models
from kvmpy.testing import snippet
from tests.oracle import vendor_cases

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "silicon"
FILES = sorted(DATA_DIR.glob("*.json"))


def _load(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_record_is_well_formed(path):
    data = _load(path)
    assert data["source"] in ("silicon", "manual")
    assert data["model"] in models.MODELS
    assert {"cpu", "vendor", "kernel", "family", "model", "stepping", "microcode"} <= set(data["machine"])
    assert data["machine"]["vendor"] == models.MODELS[data["model"]].vendor
    assert set(data["results"]) <= set(vendor_cases.CASES)
    if data["source"] == "manual":
        assert set(data["provenance"]) == set(data["results"]), "each manual result says where it is from"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_model_gives_the_recorded_results(path):
    data = _load(path)
    got = vendor_cases.run_all(functools.partial(snippet.run_snippet, model=data["model"]))
    problems = ["%s: %s: recorded %s, kvmpy (%s) %s" % (case, field, want, data["model"], got[case][field])
                for case, fields in data["results"].items() for field, want in fields.items()
                if got[case][field] != want]
    assert not problems, "\n".join(problems)


def test_both_vendors_are_recorded():
    """One file per vendor at least, and the two vendors' answers differ in every case
    where both files have a field (else the case would not tell the models apart)."""
    by_vendor = {}
    for p in FILES:
        d = _load(p)
        by_vendor.setdefault(d["machine"]["vendor"], d)
    assert set(by_vendor) == {models.INTEL, models.AMD}
    intel, amd = by_vendor[models.INTEL]["results"], by_vendor[models.AMD]["results"]
    differing = [c for c in intel if c in amd and any(
        f != "exception" and f in amd[c] and amd[c][f] != v for f, v in intel[c].items())]
    assert len(differing) >= 5, differing
