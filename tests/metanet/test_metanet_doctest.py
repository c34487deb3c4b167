from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import optuna_fms.metanet
import optuna_fms.metanet.layers


# Modules with private pieces only (the builder, subsampling) or a table (the layers package).
_WITHOUT_EXAMPLES = {"_builder", "_subsample", "layers"}


def _modules() -> list[str]:
    found = []
    for package in (optuna_fms.metanet, optuna_fms.metanet.layers):
        for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            if info.name.rpartition(".")[2] not in _WITHOUT_EXAMPLES:
                found.append(info.name)
    return sorted(found)


@pytest.mark.parametrize("module", _modules())
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
