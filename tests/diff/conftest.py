"""Fixtures of the comparisons with the silicon."""

import pytest

from tests.oracle import diff
from tests.oracle.native import unavailable_reason


@pytest.fixture(scope="session")
def run_snippet():
    """kvmpy's side of the oracle: run a snippet on the processor alone (kvmpy.testing.snippet)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    return diff.load_run_snippet()
