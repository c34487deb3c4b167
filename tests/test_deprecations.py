"""No deprecation warning from optuna-fms's code under the installed (newest) Optuna.

A short FMS study runs the public API end to end: ``FMSSampler`` (with the shipped graph
metanetwork reading the checkpoints) and ``FMSPruner`` on SQLite storage, checkpoints through
``save_checkpoint``/``resume`` (continued trials) and ``load_checkpoint``/``read_checkpoint``,
``EpochBudget``, ``DashboardReport`` (when optuna-dashboard is installed), ``forecast``,
``recommend`` and ``diagnose`` (with ``sampler=``: the deprecated ``engine=`` keyword, whose
``FutureWarning`` is deliberate, is not passed), and a second study warm-started from the first.

Every ``DeprecationWarning``, ``PendingDeprecationWarning`` and ``FutureWarning`` emitted
meanwhile is recorded with the stack that emitted it. The test fails on one attributed to a
module of ``optuna_fms`` (the warning's file: our own ``warnings.warn``, or a deprecated API
of Optuna, torch, ... whose warning points at its caller), and on one raised inside Optuna
while optuna-fms is on the stack (an Optuna deprecation reached through our calls, whatever
its ``stacklevel``). Deprecations that other libraries raise inside themselves (torch's own
modules, for example) are not optuna-fms's to fix and are left out.

The check is ``check_an_fms_study``, importable: tests/test_version_ends.py runs it under the
oldest Optuna that pyproject.toml supports, in a subprocess.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
import importlib.util
from pathlib import Path
import traceback
from typing import Any
from typing import TextIO
import warnings

import optuna
import pytest
import torch
from torch import nn

import optuna_fms


PACKAGE = Path(optuna_fms.__file__).resolve().parent
OPTUNA = Path(optuna.__file__).resolve().parent
CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
MAX_STEPS = 4


@dataclass
class _Emitted:
    category: type[Warning]
    message: str
    filename: str
    lineno: int
    stack: list[traceback.FrameSummary]

    def __str__(self) -> str:
        frames = "".join(traceback.format_list(self.stack[-8:]))
        return (
            f"{self.category.__name__}: {self.message} ({self.filename}:{self.lineno})\n{frames}"
        )


def _inside(filename: str, folder: Path) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def deprecations() -> Iterator[list[_Emitted]]:
    """Record every deprecation warning emitted in the block, with the stack that emitted it."""
    emitted: list[_Emitted] = []

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if issubclass(category, CATEGORIES):
            stack = traceback.extract_stack()[:-1]
            emitted.append(_Emitted(category, str(message), filename, lineno, stack))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for category in CATEGORIES:
            warnings.simplefilter("always", category)
        warnings.showwarning = show
        yield emitted


def ours(w: _Emitted) -> bool:
    """Whether ``w`` is optuna-fms's: emitted in its code, or in Optuna's below a frame of it."""
    if _inside(w.filename, PACKAGE):
        return True
    in_optuna = _inside(w.filename, OPTUNA)
    return in_optuna and any(_inside(f.filename, PACKAGE) for f in w.stack)


_X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
_Y = (_X[:, 0] - _X[:, 1] > 0).long()


def objective(trial: optuna.Trial) -> float:
    """A tiny MLP trained for ``MAX_STEPS`` epochs, with checkpoints, resumable, prunable."""
    lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    hidden = trial.suggest_int("hidden", 2, 16, log=True)
    torch.manual_seed(trial.number)
    model = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    start = optuna_fms.resume(trial, model, optimizer)
    score = 0.0
    for epoch in range(start, MAX_STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(_X), _Y).backward()
        optimizer.step()
        with torch.no_grad():
            score = (model(_X).argmax(1) == _Y).float().mean().item()
        optuna_fms.save_checkpoint(trial, model, step=epoch, optimizer=optimizer)
        trial.report(score, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return score


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the study (far faster on cores shared with other jobs)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def check_an_fms_study(folder: Path) -> str:
    """Run the short FMS study in ``folder``; fail on a deprecation warning from optuna-fms.

    Importable (tests/test_version_ends.py runs it under the oldest supported Optuna). Returns
    the study's SQLite storage URL (studies ``"first"`` and ``"second"``); the checkpoints are
    in a ``FileSystemArtifactStore`` on ``folder``.
    """
    storage = f"sqlite:///{folder / 'fms.db'}"
    store = optuna.artifacts.FileSystemArtifactStore(str(folder))
    with deprecations() as emitted:
        sampler = optuna_fms.FMSSampler(
            artifact_store=store, seed=0, weights="gmn", n_scratch_epochs=30
        )
        study = optuna.create_study(
            study_name="first",
            direction="maximize",
            storage=storage,
            sampler=sampler,
            pruner=optuna_fms.FMSPruner(max_steps=MAX_STEPS),
        )
        callbacks: list[Any] = [optuna_fms.EpochBudget(24)]
        report = None
        if importlib.util.find_spec("optuna_dashboard") is not None:
            report = optuna_fms.DashboardReport(every=4)
            callbacks.append(report)
        study.optimize(objective, callbacks=callbacks)
        if report is not None:
            assert report.write(study)

        trials = study.trials
        assert any(t.user_attrs.get("fms:continues") for t in trials), "nothing continued"
        saved = [t for t in trials if t.user_attrs.get("fms:checkpoints")]
        assert saved
        assert optuna_fms.load_checkpoint(saved[-1], artifact_store=store)
        assert optuna_fms.read_checkpoint(saved[-1], artifact_store=store).optimizer_state
        assert optuna_fms.epochs_spent(trials) >= 24
        forecasts = optuna_fms.forecast(study, sampler=sampler)
        assert forecasts
        assert optuna_fms.forecast(study, [{"lr": 0.1, "hidden": 8}])[0].trial is None
        assert optuna_fms.recommend(study, sampler=sampler).params
        assert str(optuna_fms.diagnose(study, sampler=sampler))

        warm = optuna.create_study(
            study_name="second",
            direction="maximize",
            storage=storage,
            sampler=optuna_fms.FMSSampler(
                artifact_store=store, seed=1, warm_start=[study], n_scratch_epochs=30
            ),
            pruner=optuna_fms.FMSPruner(max_steps=MAX_STEPS),
        )
        warm.optimize(objective, n_trials=3)

    found = [w for w in emitted if ours(w)]
    assert not found, "\n\n".join(map(str, found))
    return storage


@pytest.mark.usefixtures("one_thread")
def test_an_fms_study_emits_no_deprecation_warning_from_optuna_fms(tmp_path: Path) -> None:
    check_an_fms_study(tmp_path)


def test_the_recorder_sees_a_deprecation_from_optuna_fms_code() -> None:
    # The check above can fail: a warning attributed to a module of optuna_fms counts as
    # ours, one from elsewhere (this test file) does not.
    # So does one raised inside Optuna below a frame of optuna_fms (compiled here under a file
    # name of the package), whatever file its stacklevel names.
    def optuna_warns() -> None:
        warnings.warn_explicit("optuna's", FutureWarning, str(OPTUNA / "x.py"), 1, module="x")

    called_from_package = compile("optuna_warns()", str(PACKAGE / "_caller.py"), "exec")
    with deprecations() as emitted:
        warnings.warn_explicit(
            "deprecated", FutureWarning, str(PACKAGE / "_forecast.py"), 1, module="optuna_fms"
        )
        warnings.warn("elsewhere", DeprecationWarning, stacklevel=1)
        exec(called_from_package, {"optuna_warns": optuna_warns})
        optuna_warns()  # from this test: not ours
    assert [w.message for w in emitted if ours(w)] == ["deprecated", "optuna's"]
    assert [w.message for w in emitted if not ours(w)] == ["elsewhere", "optuna's"]


def test_the_deprecated_engine_keyword_is_the_one_deliberate_warning() -> None:
    # The check above leaves engine= out on purpose; it does warn (tests/test_forecast.py has
    # the details). Here only: the warning comes from a function of optuna_fms.
    study = optuna.create_study(direction="maximize")
    sampler = optuna_fms.FMSSampler(seed=0)
    with deprecations() as emitted, contextlib.suppress(Exception):
        optuna_fms.forecast(study, engine=sampler.engine)
    # (A first import of gpytorch may add torch's own deprecations: not counted here.)
    deliberate = [w for w in emitted if "engine" in w.message]
    assert [w.category for w in deliberate] == [FutureWarning]
    assert "sampler=" in deliberate[0].message
    assert any(_inside(f.filename, PACKAGE) for f in deliberate[0].stack)
    assert not any(ours(w) for w in emitted)  # it points at the caller, this test


@pytest.mark.parametrize("name", ["RetryFailedTrialCallback", "constraints_func"])
def test_the_package_uses_none_of_optunas_deprecated_apis(name: str) -> None:
    # Optuna 5 deprecated both; optuna-fms must not touch them (on any Optuna it supports).
    users = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts and name in p.read_text()
    ]
    assert not users
