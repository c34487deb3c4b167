"""Allocation rules: what FMS starts, continues and pauses, on small real studies."""

from __future__ import annotations

import collections
import logging
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from synthetic import add_curve
import torch

import optuna_fms
from optuna_fms._surrogate import GPSurrogate
from optuna_fms._surrogate import acquisition
from optuna_fms._surrogate._data import Curve
from optuna_fms._surrogate._data import build_training_set
from optuna_fms._surrogate._fitted import FittedModel
from optuna_fms._surrogate._model import RowLayout
from optuna_fms._surrogate.allocation import RULES
from optuna_fms._surrogate.allocation import OneStepEI
from optuna_fms._surrogate.allocation import Options
from optuna_fms._surrogate.allocation import PromotingOneStep
from optuna_fms._surrogate.allocation import View
from optuna_fms._surrogate.allocation import make_rule


STEPS = 8


def _train(trial: optuna.Trial, store, quality: float, steps: int, checkpoints: bool) -> float:
    """A saturating curve to ``quality`` over ``steps`` steps, reported (and checkpointed,
    resumed) as a user's objective does."""
    model = torch.nn.Linear(2, 1)
    start = optuna_fms.resume(trial, model, artifact_store=store) if checkpoints else 0
    value = 0.0
    for step in range(start, steps):
        value = quality * (1 - math.exp(-(step + 1) / 3))
        if checkpoints:
            optuna_fms.save_checkpoint(trial, model, step=step, artifact_store=store)
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def _small_space_objective(store, checkpoints: bool = True):
    """A space of 12 configurations (a 4-level categorical and an integer with 3 values)."""

    def objective(trial: optuna.Trial) -> float:
        c = trial.suggest_categorical("c", ["m0", "m1", "m2", "m3"])
        k = trial.suggest_int("k", 0, 2)
        quality = 0.5 + 0.4 * ((int(c[1:]) * 7 % 4) / 3) - 0.1 * k
        return _train(trial, store, quality, STEPS, checkpoints)

    return objective


def _study(tmp_path: Path, allocation: str | None = None, seed: int = 0):
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    kwargs = {} if allocation is None else {"allocation": allocation}
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_fms.FMSSampler(seed=seed, artifact_store=store, **kwargs),
        pruner=optuna_fms.FMSPruner(max_steps=STEPS, seed=seed),
    )
    return study, store


@pytest.mark.parametrize("allocation", sorted(RULES))
def test_small_space_continues_and_never_restarts(
    tmp_path: Path, allocation: str, caplog: pytest.LogCaptureFixture
) -> None:
    study, store = _study(tmp_path, allocation)
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        study.optimize(_small_space_objective(store), n_trials=60)
    paused_open: set[tuple] = set()
    started = collections.Counter()
    for t in study.trials:  # in creation order (one worker)
        key = (t.params["c"], t.params["k"])
        if t.user_attrs.get("fms:continues") is None:
            assert key not in paused_open, f"trial {t.number} restarted a paused {key}"
            started[key] += 1
        else:
            paused_open.discard(key)
        if t.user_attrs.get("fms:paused") is not None:
            paused_open.add(key)
    assert max(started.values()) == 1
    n_paused = sum(1 for t in study.trials if t.user_attrs.get("fms:paused") is not None)
    n_continued = sum(1 for t in study.trials if t.user_attrs.get("fms:continues"))
    exhausted = "search is exhausted" in caplog.text
    assert n_continued >= n_paused / 2 or exhausted
    # Every configuration trained to the full budget once, then the study stopped by itself.
    assert exhausted and len(study.trials) < 60
    full = {(t.params["c"], t.params["k"]) for t in study.trials if len(t.intermediate_values)}
    assert len(full) == 12


def test_without_checkpoints_restarts_only_to_go_further(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Pauses are final prunes. Once every configuration has been started, one pruned short
    # of the full budget can go on only from scratch: each such restart trains past the step
    # where its configuration's furthest trial stopped, until every configuration reached the
    # full budget and the search is exhausted.
    study, store = _study(tmp_path)
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        study.optimize(_small_space_objective(store, checkpoints=False), n_trials=80)
    assert not any(t.user_attrs.get("fms:continues") for t in study.trials)
    furthest: dict[tuple, int] = {}
    for t in study.trials:  # in creation order (one worker)
        key = (t.params["c"], t.params["k"])
        if key in furthest:
            assert len(furthest) == 12, f"trial {t.number} repeated {key} with others unseen"
            assert furthest[key] + 1 < STEPS, f"trial {t.number} retrained a finished {key}"
            assert t.system_attrs["fms:restart"]["step"] == furthest[key]
            assert t.last_step > furthest[key]
        furthest[key] = max(furthest.get(key, -1), t.last_step)
    assert sum("fms:restart" in t.system_attrs for t in study.trials) >= 1
    if "search is exhausted" in caplog.text:
        assert all(last == STEPS - 1 for last in furthest.values())


def _large_space_pruned_steps(tmp_path: Path, checkpoints: bool) -> list[int]:
    """Budgets (steps trained) at which trials of a 40-trial study over a continuous space
    were pruned, with or without checkpoints."""
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / str(checkpoints)))

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        width = trial.suggest_int("width", 8, 64)
        quality = 0.9 - 0.1 * abs(math.log10(lr) + 2) - 0.001 * abs(width - 40)
        return _train(trial, store, quality, 9, checkpoints)

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_fms.FMSSampler(seed=0, artifact_store=store),
        pruner=optuna_fms.FMSPruner(max_steps=9, seed=0),
    )
    study.optimize(objective, n_trials=40)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    return [t.last_step + 1 for t in pruned]


def test_without_checkpoints_stops_only_at_rungs(tmp_path: Path) -> None:
    # A stop without a checkpoint cannot be undone: it happens only at successive halving's
    # rungs (budgets 1 and 3 of 9), not wherever one more step looks worth less than a new
    # configuration (as a pause with a checkpoint may).
    without = _large_space_pruned_steps(tmp_path, checkpoints=False)
    assert without and set(without) <= {1, 3}, collections.Counter(without)
    with_ckpt = _large_space_pruned_steps(tmp_path, checkpoints=True)
    assert set(with_ckpt) - {1, 3}, collections.Counter(with_ckpt)


def _categorical_study(tmp_path: Path, n_levels: int) -> int:
    """Continuations in a 50-trial study whose curves do not depend on how many levels the
    categorical has (its effect repeats every 5 levels)."""
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / str(n_levels)))

    def objective(trial: optuna.Trial) -> float:
        c = trial.suggest_categorical("model", list(range(n_levels)))
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        quality = 0.9 - 0.1 * abs(math.log10(lr) + 2) - 0.05 * ((c * 37) % 5) / 4
        return _train(trial, store, quality, 10, checkpoints=True)

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_fms.FMSSampler(seed=0, artifact_store=store),
        pruner=optuna_fms.FMSPruner(max_steps=10, seed=0),
    )
    study.optimize(objective, n_trials=50)
    return sum(1 for t in study.trials if t.user_attrs.get("fms:continues"))


def test_a_hundred_level_categorical_does_not_over_explore(tmp_path: Path) -> None:
    few = _categorical_study(tmp_path, 5)
    many = _categorical_study(tmp_path, 100)
    assert few >= 5
    assert many >= 0.7 * few, (many, few)


def test_one_step_rule_is_dyhpos_argmax() -> None:
    rng = np.random.RandomState(0)
    fresh_ei, paused_ei = rng.rand(7), rng.rand(3)
    from optuna_fms._surrogate.allocation._one_step import pick_best

    pick, choice = pick_best(fresh_ei, paused_ei), acquisition.choose(fresh_ei, paused_ei)
    assert (pick.fresh, pick.paused, pick.value) == (choice.fresh, choice.paused, choice.best_ei)


def test_make_rule_names_and_objects() -> None:
    assert isinstance(make_rule("one-step"), OneStepEI)
    rule = OneStepEI()
    assert make_rule(rule) is rule
    with pytest.raises(ValueError, match="Unknown allocation rule"):
        make_rule("hyperband")
    assert len(Options.fresh(np.zeros((0, 3)))) == 0


def _add(study, space, lr, curve, state=optuna.trial.TrialState.PRUNED):
    add_curve(study, {"lr": lr}, space, curve, state)


def test_recommend_never_picks_a_diverged_configuration() -> None:
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    study = optuna.create_study(direction="maximize")
    # The furthest-trained configuration diverged after a good start.
    _add(study, space, 0.9, [0.6, 0.8, 0.9, 0.3, 0.12, 0.1, 0.1, 0.1])
    for lr, curve in ((0.01, [0.5, 0.7, 0.8, 0.85]), (0.02, [0.55, 0.72, 0.82])):
        _add(study, space, lr, curve)
    _add(study, space, 0.001, [0.2, 0.25])
    best = optuna_fms.recommend(study, sampler=optuna_fms.FMSSampler(max_steps=10))
    assert best.params["lr"] in (0.01, 0.02)
    assert 0.0 <= best.mean - best.std and best.mean + best.std <= 1.0


def test_forecasts_stay_in_the_metric_range() -> None:
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    study = optuna.create_study(direction="maximize")
    for i, lr in enumerate((0.002, 0.01, 0.05, 0.2, 0.6)):
        # Steep curves that end near 1: a linear extrapolation would leave [0, 1].
        _add(study, space, lr, [min(1.0, 0.2 + 0.18 * (s + 1) * (i + 1) / 3) for s in range(4)])
    forecasts = optuna_fms.forecast(study, sampler=optuna_fms.FMSSampler(max_steps=30))
    assert all(0.0 <= f.mean - f.std and f.mean + f.std <= 1.0 for f in forecasts)
    # Declared otherwise, the range is the declared one.
    wide = optuna_fms.FMSSampler(max_steps=30, metric_range=(-5.0, 5.0))
    unbounded = optuna_fms.forecast(study, sampler=wide)
    assert any(f.mean + f.std > 1.0 for f in unbounded)
    with pytest.raises(ValueError, match="metric_range"):
        optuna_fms._engine.Engine(metric_range=(1.0, 0.0))


def _view_of(n_observed: int) -> tuple[View, Options]:
    """A GP fitted on ``n_observed`` one-step curves (and one at step 2) whose final score
    grows with x, and, as the one paused option, the best configuration paused at step 2
    (between the rungs 1 and 3 of 9 steps)."""
    xs = np.linspace(0.0, 0.8, n_observed)
    curves = [
        Curve(key=i, params={}, steps=np.arange(1), values=np.array([x]), x=np.array([x]))
        for i, x in enumerate(xs)
    ]
    curves.append(
        Curve(
            key=99, params={}, steps=np.arange(2), values=np.array([0.9, 1.0]), x=np.array([0.9])
        )
    )
    layout = RowLayout(x_dim=1, curve_len=0, max_steps=9)
    data = build_training_set(curves, layout, 9, 256, np.random.RandomState(0))
    gp = GPSurrogate(seed=0)
    gp.fit(layout, data.rows, data.y)
    model = FittedModel(layout, 9, data, gp)
    observed = Options(
        np.array([c.x for c in curves]),
        np.array([len(c.steps) for c in curves]),
        [data.scale(c.values) for c in curves],
    )
    paused = Options(np.array([[0.9]]), np.array([2]), [data.scale(curves[-1].values)])
    return View(model, np.random.RandomState(0), lambda: observed), paused


def test_a_trial_paused_between_rungs_is_promoted_once_enough_reached_the_rung() -> None:
    # The one-step rule pauses anywhere; a trial paused past its rung is ranked at the rung
    # below only once eta**2 configurations have reached it (before, never again).
    rule = PromotingOneStep()
    few_view, few_paused = _view_of(5)
    assert rule._rungs.promotion(few_view, few_paused, between=9) is None
    many_view, many_paused = _view_of(12)
    assert rule._rungs.promotion(many_view, many_paused, between=9) is not None
    assert rule._rungs.promotion(many_view, many_paused) is None  # the rule before
    pick = rule.choose(many_view, Options.fresh(np.array([[0.1], [0.2]])), many_paused)
    assert pick.paused == 0
