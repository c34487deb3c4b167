"""Synthetic multi-fidelity objectives with known answers, shared by the tests."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna


MAX_STEPS = 20


def add_curve(
    study: optuna.Study,
    params: dict[str, Any],
    distributions: dict[str, optuna.distributions.BaseDistribution],
    curve: list[float],
    state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE,
    value: float | None = None,
    **kwargs: Any,
) -> None:
    """Add a finished trial of ``params`` that reported ``curve`` at steps 0, 1, ...

    A complete trial's value is its last report unless ``value`` is given; other keywords go
    to :func:`optuna.trial.create_trial` (``system_attrs``, ``user_attrs``).
    """
    if value is None and state == optuna.trial.TrialState.COMPLETE and curve:
        value = curve[-1]
    study.add_trial(
        optuna.trial.create_trial(
            params=params,
            distributions=distributions,
            intermediate_values=dict(enumerate(curve)),
            state=state,
            value=value if state == optuna.trial.TrialState.COMPLETE else None,
            **kwargs,
        )
    )


def final_score(x: float, y: float) -> float:
    """Quality at the full budget: one broad optimum at (0.3, 0.7), score in [0, 1]."""
    return math.exp(-4.0 * ((x - 0.3) ** 2 + (y - 0.7) ** 2))


def curve(x: float, y: float, step: int) -> float:
    """Saturating learning curve; speed varies with y so that early ranks can mislead."""
    rate = 0.15 + 0.35 * (1 - y)
    return final_score(x, y) * (1 - math.exp(-rate * (step + 1)))


def make_objective(epochs: list[int], noise: float = 0.0, seed: int = 0):
    """Objective reporting ``curve`` at every step; appends the epochs it ran to ``epochs``."""
    rng = np.random.RandomState(seed)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        y = trial.suggest_float("y", 0.0, 1.0)
        value = 0.0
        for step in range(MAX_STEPS):
            value = curve(x, y, step) + noise * rng.randn()
            epochs.append(1)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return objective


def best_so_far(study: optuna.Study) -> float:
    """Best true final score among configurations the study has touched."""
    scores = [final_score(t.params["x"], t.params["y"]) for t in study.trials if t.params]
    return max(scores) if scores else 0.0
