from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module", ["_structure", "_graph", "_errors", "_gmn", "_stats", "_pretrained"]
)
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(f"optuna_fms.metanet.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
