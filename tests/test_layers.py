"""The import contracts in pyproject.toml hold: the stack's layers, the kernel's own layers,
and no import cycle inside any package (import-linter, run as ``lint-imports`` would)."""

from pathlib import Path

import pytest

cli = pytest.importorskip("importlinter.cli", reason="import-linter is installed on CPython only")

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_import_contracts_are_kept():
    assert cli.lint_imports(config_filename=str(PYPROJECT), no_cache=True) == cli.EXIT_STATUS_SUCCESS
