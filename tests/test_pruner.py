"""FMSPruner on synthetic curve families whose final ranking is known."""

from __future__ import annotations

import math

import numpy as np
import optuna
from optuna.trial import TrialState
import pytest

from optuna_fms import FMSPruner
from optuna_fms import FMSSampler
from optuna_fms import _attrs


STEPS = 12


def _saturating(quality: float, step: int) -> float:
    return quality * (1.0 - math.exp(-0.4 * (step + 1)))


def _objective(trial: optuna.Trial) -> float:
    q = trial.suggest_float("q", 0.0, 1.0)
    value = 0.0
    for step in range(STEPS):
        value = _saturating(q, step)
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


@pytest.fixture
def warm_study() -> optuna.Study:
    """Eight configurations spread over the quality range, all run to the end."""
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=FMSPruner(
            max_steps=STEPS, n_startup_trials=8, min_steps=2, pause_startup=False, seed=0
        ),
    )
    for q in np.linspace(0.05, 0.85, 8):
        study.enqueue_trial({"q": float(q)})
    study.optimize(_objective, n_trials=8)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    return study


def test_keeps_the_best_curve_and_pauses_clearly_worse_ones(warm_study: optuna.Study) -> None:
    for q in [0.97, 0.1, 0.05]:
        warm_study.enqueue_trial({"q": q})
    warm_study.optimize(_objective, n_trials=3)
    best, bad, worst = warm_study.trials[-3:]
    assert best.state == TrialState.COMPLETE
    assert len(best.intermediate_values) == STEPS
    for t in (bad, worst):
        assert t.state == TrialState.PRUNED
        assert len(t.intermediate_values) < STEPS // 2
        assert t.user_attrs[_attrs.PAUSED]["step"] == t.last_step
    forecast = best.user_attrs[_attrs.FORECAST]
    assert forecast["mean"] > _saturating(0.85, STEPS - 1)


def test_never_prunes_before_min_steps_or_during_startup() -> None:
    pruner = FMSPruner(max_steps=STEPS, n_startup_trials=3, min_steps=4, pause_startup=False)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for q in [0.9, 0.8, 0.7, 0.01, 0.02]:
        study.enqueue_trial({"q": q})
    study.optimize(_objective, n_trials=5)
    assert [t.state for t in study.trials[:3]] == [TrialState.COMPLETE] * 3
    for t in study.trials[3:]:
        assert len(t.intermediate_values) >= 4


def test_dyhpo_start_pauses_startup_trials_at_min_steps() -> None:
    pruner = FMSPruner(max_steps=STEPS, n_startup_trials=3, min_steps=2)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for q in [0.9, 0.8, 0.7]:
        study.enqueue_trial({"q": q})
    study.optimize(_objective, n_trials=3)
    for t in study.trials:
        assert t.state == TrialState.PRUNED
        assert sorted(t.intermediate_values) == [0, 1]
        assert t.user_attrs[_attrs.PAUSED]["step"] == 1


def test_interval_limits_decision_steps(warm_study: optuna.Study) -> None:
    warm_study.pruner = FMSPruner(max_steps=STEPS, n_startup_trials=8, min_steps=3, interval=4)
    warm_study.enqueue_trial({"q": 0.02})
    warm_study.optimize(_objective, n_trials=1)
    t = warm_study.trials[-1]
    assert t.state == TrialState.PRUNED
    assert (t.last_step + 1 - 3) % 4 == 0


def test_nan_and_inf_reports_neither_crash_nor_pause_everything() -> None:
    def objective(trial: optuna.Trial) -> float:
        q = trial.suggest_float("q", 0.0, 1.0)
        value = 0.0
        for step in range(STEPS):
            value = _saturating(q, step)
            if trial.number % 3 == 1 and step % 4 == 2:
                value = float("nan")
            if trial.number % 5 == 2 and step == 3:
                value = float("inf") if step % 2 else float("-inf")
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return _saturating(q, STEPS - 1)

    study = optuna.create_study(
        direction="maximize",
        sampler=FMSSampler(seed=0, n_startup_trials=4, n_candidates=64, n_scratch_epochs=100),
        pruner=FMSPruner(max_steps=STEPS, n_startup_trials=4, pause_startup=False),
    )
    study.optimize(objective, n_trials=16)
    states = [t.state for t in study.trials]
    assert TrialState.FAIL not in states
    assert states.count(TrialState.COMPLETE) >= 5
    for t in study.trials:
        if t.state == TrialState.PRUNED:
            assert not math.isnan(t.intermediate_values[t.last_step])


def test_validates_arguments() -> None:
    with pytest.raises(ValueError):
        FMSPruner(max_steps=0)
    with pytest.raises(ValueError):
        FMSPruner(max_steps=5, interval=0)
    with pytest.raises(ValueError):
        FMSPruner(max_steps=5, tolerance=-1)
