"""FMSSampler behaviour beyond Optuna's contract suite."""

from __future__ import annotations

import logging
import math
from pathlib import Path
import pickle
import warnings

import optuna
from optuna.trial import TrialState
import pytest
from synthetic import make_objective
import workers

import optuna_fms
from optuna_fms import FMSPruner
from optuna_fms import FMSSampler
from optuna_fms._surrogate import GPSurrogate
from optuna_fms._surrogate import SurrogateFitError
from optuna_fms._surrogate._surrogate import Surrogate


def _sampler(seed: int | None = 0, **kwargs) -> FMSSampler:
    kwargs = {
        "n_startup_trials": 4,
        "n_candidates": 64,
        "n_scratch_epochs": 60,
        "n_warm_epochs": 10,
        **kwargs,
    }
    return FMSSampler(seed=seed, **kwargs)


def _run(sampler: FMSSampler, n_trials: int = 8, storage=None, pruner=None) -> optuna.Study:
    study = optuna.create_study(
        direction="maximize",
        sampler=sampler,
        pruner=pruner or FMSPruner(max_steps=20, n_startup_trials=4, pause_startup=False),
        storage=storage,
    )
    study.optimize(make_objective([]), n_trials=n_trials)
    return study


def test_seed_makes_runs_reproducible() -> None:
    a = _run(_sampler(seed=3))
    b = _run(_sampler(seed=3))
    c = _run(_sampler(seed=4))
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.state for t in a.trials] == [t.state for t in b.trials]
    assert [t.params for t in a.trials] != [t.params for t in c.trials]


def test_reseed_rng_changes_the_stream() -> None:
    sampler = _sampler(seed=3)
    a = _run(sampler, n_trials=3)
    sampler.reseed_rng()
    b = _run(sampler, n_trials=3)
    assert [t.params for t in a.trials] != [t.params for t in b.trials]


def test_pickles_and_keeps_working_after_unpickling() -> None:
    sampler = _sampler()
    study = _run(sampler, n_trials=6)
    clone = pickle.loads(pickle.dumps(sampler))
    study.sampler = clone
    study.optimize(make_objective([]), n_trials=2)
    assert len(study.trials) == 8
    assert all(t.state != TrialState.FAIL for t in study.trials)


def test_minimize_and_maximize_both_improve() -> None:
    for direction, sign in [("maximize", 1.0), ("minimize", -1.0)]:
        study = optuna.create_study(direction=direction, sampler=_sampler(n_startup_trials=5))
        study.optimize(lambda t, s=sign: s * -((t.suggest_float("x", -5, 5) - 2.0) ** 2), 20)
        assert abs(study.best_params["x"] - 2.0) < 0.5


def test_multi_objective_is_refused_with_a_clear_message() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=_sampler())
    with pytest.raises(ValueError, match="single-objective"):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=1)


def test_works_under_hyperband_restricted_study() -> None:
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=20, reduction_factor=3)
    study = _run(_sampler(), n_trials=12, pruner=pruner)
    assert len(study.trials) == 12
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def test_conditional_parameters_fall_back_to_independent_sampling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def objective(trial: optuna.Trial) -> float:
        kind = trial.suggest_categorical("kind", ["a", "b"])
        x = trial.suggest_float("x", -1, 1)
        if kind == "a":
            x += trial.suggest_int("n", 1, 9, step=2)
        else:
            x += trial.suggest_float("w", 1e-3, 1.0, log=True)
        return x

    study = optuna.create_study(sampler=_sampler())
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        study.optimize(objective, n_trials=14)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    for t in study.trials:
        assert ("n" in t.params) == (t.params["kind"] == "a")
    messages = [r.message for r in caplog.records if "not in every trial" in r.message]
    assert 1 <= len(messages) <= 2  # once per conditional parameter, not per trial


def test_all_distribution_kinds_stay_in_range() -> None:
    def objective(trial: optuna.Trial) -> float:
        a = trial.suggest_float("a", 1e-5, 1.0, log=True)
        b = trial.suggest_float("b", -2.0, 2.0, step=0.25)
        c = trial.suggest_int("c", 1, 64, log=True)
        d = trial.suggest_int("d", 0, 10, step=5)
        e = trial.suggest_categorical("e", [None, 1, "two", 3.0])
        assert b in [x * 0.25 - 2 for x in range(17)] and d in (0, 5, 10)
        return a + b + c + d + (1 if e is None else 0)

    study = optuna.create_study(sampler=_sampler())
    study.optimize(objective, n_trials=10)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


@pytest.mark.parametrize("kind", ["gp", "deep-kernel"])
def test_fit_failures_fall_back_to_random_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    def broken_fit(self, layout, rows, y) -> None:
        raise SurrogateFitError("Cholesky failed")

    monkeypatch.setattr(GPSurrogate if kind == "gp" else Surrogate, "fit", broken_fit)
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        study = _run(_sampler(surrogate=kind), n_trials=10)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    failures = [r for r in caplog.records if "surrogate failed" in r.message]
    assert len(failures) == 1


def _assert_falls_back_once(caplog: pytest.LogCaptureFixture) -> None:
    """A study whose surrogate prediction fails runs all its trials, warning once."""
    pruner = FMSPruner(max_steps=20, n_startup_trials=2)
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        study = _run(_sampler(n_startup_trials=2), n_trials=8, pruner=pruner)
    assert len(study.trials) == 8
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert len([r for r in caplog.records if "surrogate failed" in r.message]) == 1


def test_prediction_failures_fall_back_too(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_predict(self, rows, decide=False):
        raise SurrogateFitError("prediction is not finite")

    monkeypatch.setattr(GPSurrogate, "predict", broken_predict)
    _assert_falls_back_once(caplog)


def test_a_linear_algebra_error_in_prediction_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from optuna_fms._surrogate import _gp

    class SingularPosterior:
        def __init__(self, model, noise) -> None:
            raise torch.linalg.LinAlgError("linalg.cholesky: The factorization could not be done")

    monkeypatch.setattr(_gp, "_Posterior", SingularPosterior)
    _assert_falls_back_once(caplog)


def test_cholesky_trouble_recovers_with_jitter_or_restart() -> None:
    import numpy as np

    from optuna_fms._surrogate._model import RowLayout

    layout = RowLayout(x_dim=1, curve_len=0)
    rows = np.zeros((30, layout.width))  # Thirty identical rows: a singular kernel matrix.
    surrogate = Surrogate(seed=0, n_scratch_epochs=20)
    surrogate.fit(layout, rows, np.linspace(-1, 1, 30))
    mean, std = surrogate.predict(rows[:2])
    assert np.isfinite(mean).all() and np.isfinite(std).all()


def test_sampler_and_pruner_share_one_surrogate() -> None:
    sampler = _sampler()
    pruner = FMSPruner(max_steps=20, n_startup_trials=4)
    study = _run(sampler, n_trials=10, pruner=pruner)
    assert pruner.engine(study) is sampler.engine
    surrogate = sampler.engine.surrogate(study)
    assert surrogate is not None and surrogate._n_fits > 0
    # The pruner's own engine (for studies without an FMSSampler) never fitted anything.
    assert pruner._own.surrogate(study) is None


def test_pruner_alone_fits_its_own_surrogate() -> None:
    pruner = FMSPruner(max_steps=20, n_startup_trials=4)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=0), pruner=pruner
    )
    study.optimize(make_objective([]), n_trials=10)
    assert pruner.engine(study) is not None
    surrogate = pruner.engine(study).surrogate(study)
    assert surrogate is not None and surrogate._n_fits > 0


def _storages(tmp_path: Path) -> list[object]:
    out: list[object] = [
        None,
        f"sqlite:///{tmp_path / 'fms.db'}",
        workers.make_storage(f"journal:{tmp_path / 'fms.log'}"),
    ]
    url = workers.postgres_url(required=False)
    return out if url is None else [*out, url]


def test_runs_on_every_storage(tmp_path: Path) -> None:
    for storage in _storages(tmp_path):
        study = _run(_sampler(), n_trials=7, storage=storage)
        assert len(study.trials) == 7, storage
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


def test_forecasts_stay_finite_for_huge_reported_values() -> None:
    # Squares of values near 1e200 overflow: the standardisation must not turn them into inf.
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        for step in range(6):
            trial.report(1e200 * (x + 0.1) * (1 - math.exp(-(step + 1) / 3)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 1e200 * (x + 0.1)

    study = optuna.create_study(
        direction="maximize",
        sampler=FMSSampler(seed=0, n_startup_trials=3),
        pruner=FMSPruner(max_steps=6, n_startup_trials=3),
    )
    study.optimize(objective, n_trials=10)
    low, high = optuna_fms.forecast(study, [{"x": 0.05}, {"x": 0.95}])
    assert all(math.isfinite(v) for v in (low.mean, low.std, high.mean, high.std))
    assert 1e199 < low.mean < high.mean < 1e201


@pytest.mark.parametrize("surrogate", ["gp", "deep-kernel"])
@pytest.mark.parametrize("step", [10**9, 2**53, 2**63 - 1])
def test_a_report_at_a_huge_step_under_another_pruner(
    tmp_path: Path, surrogate: str, step: int
) -> None:
    # Optuna (and SQLite) accept any step up to 2**63 - 1; MedianPruner sets no max_steps, so
    # the budget is the largest step reported. The deep kernel's rows were that wide
    # (MemoryError at 10**9), and a budget of 2**53 + 1 did not survive float (KeyError).
    study = optuna.create_study(
        direction="maximize",
        storage=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        sampler=_sampler(n_startup_trials=2, surrogate=surrogate),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=100),
    )

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        for s in range(3):
            trial.report(x * (s + 1), s)
        if trial.number == 2:
            trial.report(x, step)
        return x

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no int64 overflow either
        study.optimize(objective, n_trials=6)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    assert study.trials[2].intermediate_values[step] == study.trials[2].value
    assert study.sampler.engine.current_fit(study) is not None  # the surrogate was used
