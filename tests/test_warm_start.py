"""Warm starts from earlier studies: informed first decisions, shared parameters, bad input."""

from __future__ import annotations

import logging

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
import pytest

import optuna_fms
from optuna_fms._warm_start import WarmStart


STEPS = 4


def _objective(peak: float, with_c: bool = True, sign: float = 1.0):
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        bonus = 0.0
        if with_c:
            bonus = 0.2 if trial.suggest_categorical("c", ["a", "b"]) == "a" else 0.0
        value = 0.0
        for step in range(STEPS):
            value = sign * (-4 * (x - peak) ** 2 + bonus + 0.1 * step)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return objective


def _earlier(peak: float = 0.8, n: int = 20, with_c: bool = True) -> optuna.Study:
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    study.optimize(_objective(peak, with_c), n_trials=n)
    return study


def _new(seed: int, **kwargs) -> optuna.Study:
    return optuna.create_study(
        direction="maximize",
        sampler=optuna_fms.FMSSampler(seed=seed, n_startup_trials=5, **kwargs),
        pruner=optuna_fms.FMSPruner(max_steps=STEPS, n_startup_trials=5),
    )


def test_startup_trials_take_what_earlier_studies_forecast_best() -> None:
    earlier = _earlier(peak=0.8)
    study = _new(1, warm_start=[earlier])
    study.optimize(_objective(0.8), n_trials=5)
    informed = study.trials  # the first too: in the earlier studies' search space
    assert all(abs(t.params["x"] - 0.8) < 0.15 for t in informed), [t.params for t in informed]
    assert all(t.params["c"] == "a" for t in informed)
    xs = sorted(t.params["x"] for t in informed)
    assert min(np.diff(xs)) > 0.01  # several configurations, not the same one four times
    # The same seed without a warm start explores at random: nothing carries over unasked.
    cold = _new(1)
    cold.optimize(_objective(0.8), n_trials=5)
    assert [t.params for t in cold.trials] != [t.params for t in informed]
    assert not all(abs(t.params["x"] - 0.8) < 0.15 for t in cold.trials)
    assert cold.sampler.engine._warm is None


def test_the_new_gp_reads_the_earlier_forecast_as_an_input() -> None:
    study = _new(0, warm_start=[_earlier(peak=0.3)])
    study.optimize(_objective(0.3), n_trials=10)
    diagnostics = optuna_fms.diagnose(study)
    assert "warm_start" in diagnostics.lengthscales
    assert "warm_start" in diagnostics.trend
    # Related tasks: the fitted trend on the earlier forecast is positive (higher forecast,
    # higher score).
    assert diagnostics.trend["warm_start"] > 0


def test_without_its_trend_the_earlier_forecast_is_a_kernel_input_only() -> None:
    study = _new(0, warm_start=[_earlier(peak=0.3)])
    study.sampler.engine._surrogate_kwargs["related_trend"] = False  # an experiment's knob
    study.optimize(_objective(0.3), n_trials=10)
    diagnostics = optuna_fms.diagnose(study)
    assert "warm_start" in diagnostics.lengthscales
    assert "warm_start" not in diagnostics.trend and "x" in diagnostics.trend


def test_the_dashboard_note_names_the_earlier_studies() -> None:
    from optuna_fms import DashboardReport

    earlier = _earlier(peak=0.3, n=6)
    study = _new(0, warm_start=[earlier], weights="stats")
    study.optimize(_objective(0.3), n_trials=3)
    note = DashboardReport().note(study)
    expected = f"weights (statistics); warm start from 1 earlier study: `{earlier.study_name}`"
    assert f"| Surrogate reads | hyperparameters, budget; {expected} |" in note


def test_other_search_spaces_share_the_common_parameters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    earlier = _earlier(peak=0.8, with_c=False)  # has x only
    warm = WarmStart([earlier])
    space = {
        "x": FloatDistribution(0.0, 1.0),
        "c": optuna.distributions.CategoricalDistribution(["a", "b"]),
    }
    with caplog.at_level(logging.INFO, logger="optuna_fms"):
        assert warm.fit(space) == ["x"]
        warm.fit(dict(reversed(space.items())))  # the same space: no second fit, no log
    assert len([r for r in caplog.records if "do not share ['c']" in r.message]) == 1
    # A changed distribution is not shared either.
    assert warm.fit({"x": FloatDistribution(0.0, 2.0)}) == []
    assert not warm.ready
    study = _new(2, warm_start=[earlier])
    study.optimize(_objective(0.8), n_trials=8)  # runs with the partly shared space
    assert len(study.trials) == 8


def test_bad_warm_starts_are_refused_with_a_message() -> None:
    multi = optuna.create_study(directions=["maximize", "minimize"])
    with pytest.raises(ValueError, match="multi-objective"):
        optuna_fms.FMSSampler(warm_start=[multi])
    with pytest.raises(ValueError, match="'gp' surrogate"):
        optuna_fms.FMSSampler(surrogate="deep-kernel", warm_start=[_earlier(n=3)])


def test_a_minimised_earlier_study_is_read_the_right_way_round() -> None:
    earlier = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    earlier.optimize(_objective(0.8, with_c=False, sign=-1.0), n_trials=15)
    study = _new(3, warm_start=[earlier])
    study.optimize(_objective(0.8, with_c=False), n_trials=4)
    assert all(abs(t.params["x"] - 0.8) < 0.15 for t in study.trials)


def test_an_unreadable_earlier_study_warns_once_and_the_study_goes_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    earlier = _earlier(peak=0.8, n=6)

    def broken(*args, **kwargs):
        raise RuntimeError("database is gone")

    monkeypatch.setattr(earlier._storage, "get_all_trials", broken)
    study = _new(4, warm_start=[earlier])
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        study.optimize(_objective(0.8), n_trials=8)
    assert len(study.trials) == 8
    assert all(t.state != optuna.trial.TrialState.FAIL for t in study.trials)
    warnings = [r for r in caplog.records if "could not be read or fitted" in r.message]
    assert len(warnings) == 1 and "database is gone" in warnings[0].message
