"""bnfold's annotations hold: mypy checks bnfold/ with the configuration in pyproject.toml ([tool.mypy]).

The package ships ``py.typed``, so its annotations are part of its public API; this keeps them true.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_error_in_bnfold():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install '.[test]' installs it)")
    # From the repository root, so that pyproject.toml's [tool.mypy] (files, python_version, overrides) applies.
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mypy found errors (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
