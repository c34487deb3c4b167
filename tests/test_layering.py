"""The sampler and the pruner are thin adapters of Optuna's interfaces (issue 23).

They read trials through Optuna's public Study API and leave every storage write, and every
claim, to the freeze-thaw package (:class:`optuna_fms._freeze_thaw.FreezeThaw`). The import
contracts in ``.importlinter`` forbid the imports; this test also forbids reaching a storage
through an object (``study._storage``), which no import contract can see.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest


_PACKAGE = Path(__file__).resolve().parent.parent / "optuna_fms"
_FORBIDDEN_MODULES = ("optuna.storages", "optuna_fms._freeze_thaw._claims")


def _forbidden(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _FORBIDDEN_MODULES)


def _violations(source: str) -> list[str]:
    """Each access to an attribute named ``_storage`` and each import of a forbidden module,
    as ``"line N: what"``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "_storage":
            found.append(f"line {node.lineno}: accesses ._storage")
        elif isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: imports {a.name}" for a in node.names if _forbidden(a.name)
            ]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            # ``from optuna import storages`` and ``from optuna_fms._freeze_thaw import
            # _claims`` import the forbidden module too.
            modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            found += [f"line {node.lineno}: imports {m}" for m in modules if _forbidden(m)][:1]
    return found


@pytest.mark.parametrize("module", ["_sampler.py", "_pruner.py"])
def test_sampler_and_pruner_reach_no_storage_and_no_claims(module: str) -> None:
    source = (_PACKAGE / module).read_text(encoding="utf-8")
    assert _violations(source) == [], (
        f"optuna_fms/{module} must read trials with study.get_trials(deepcopy=False, ...) "
        "and record through engine.freeze_thaw(study) (FreezeThaw), not reach the storage "
        "or the claims itself"
    )


@pytest.mark.parametrize(
    "source",
    [
        "trials = study._storage.get_all_trials(study._study_id, deepcopy=False)",
        "trial = study._storage.get_trial(trial_id)",
        "storage = getattr(study, 'x')._storage",
        "from optuna.storages import BaseStorage",
        "from optuna.storages._heartbeat import is_heartbeat_enabled",
        "from optuna import storages",
        "import optuna.storages",
        "from optuna_fms._freeze_thaw import _claims",
        "from optuna_fms._freeze_thaw._claims import open_claims",
    ],
)
def test_the_check_catches_storage_and_claims(source: str) -> None:
    assert len(_violations(source)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "trials = study.get_trials(deepcopy=False)",
        "trial = engine.freeze_thaw(study).trial(trial_id)",
        "from optuna_fms._freeze_thaw import FreezeThaw",
        "from optuna.storages_extra import x",
        "storage = self.storage",
    ],
)
def test_the_check_lets_the_public_api_through(source: str) -> None:
    assert _violations(source) == []
