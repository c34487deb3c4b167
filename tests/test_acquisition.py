"""optuna_fms/_surrogate/acquisition.py: expected improvement, the incumbent at each budget,
candidates, DyHPO's choice and the pruner's rule (run this first when changing it)."""

from __future__ import annotations

import numpy as np
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution

from optuna_fms._surrogate import Curve
from optuna_fms._surrogate import FittedModel
from optuna_fms._surrogate import GPSurrogate
from optuna_fms._surrogate import RowLayout
from optuna_fms._surrogate import SpaceEncoder
from optuna_fms._surrogate import acquisition
from optuna_fms._surrogate import build_training_set


def _layout() -> RowLayout:
    return RowLayout(x_dim=2, curve_len=0, x_groups=[0, 1], x_names=["a", "b"], max_steps=10)


def _points(n: int) -> np.ndarray:
    rng = np.random.RandomState(0)
    return np.column_stack([0.5 * rng.rand(n), rng.rand(n)])


def test_expected_improvement_grows_with_mean_and_uncertainty() -> None:
    best = np.zeros(3)
    by_mean = acquisition.expected_improvement(np.array([-1.0, 0.0, 1.0]), np.ones(3), best)
    by_std = acquisition.expected_improvement(np.zeros(3), np.array([0.1, 1.0, 2.0]), best)
    assert (np.diff(by_mean) > 0).all() and (np.diff(by_std) > 0).all()
    # No uncertainty: the improvement itself, never negative.
    certain = acquisition.expected_improvement(np.array([-1.0, 2.0]), np.zeros(2), np.zeros(2))
    np.testing.assert_allclose(certain, [0.0, 2.0], atol=1e-9)


def test_the_acquisition_decides_on_the_pinned_posterior() -> None:
    layout = _layout()
    x = _points(8)
    curves = [
        Curve(i, {}, np.arange(3), (row[0] - row[1]) * np.array([0.5, 0.8, 1.0]), row)
        for i, row in enumerate(x)
    ]
    data = build_training_set(curves, layout, 10, 256, np.random.RandomState(0))
    gp = GPSurrogate(min_noise=0.1, decision_noise=1e-5)
    gp.fit(layout, data.rows, data.y)
    model = FittedModel(layout, 10, data, gp)
    budgets = np.full(len(x), 3.0)  # every configuration's last observed budget
    histories = [c.values[:2] for c in curves]
    scores = acquisition.score(model, x, budgets, histories)
    _, std = model.predict(x, budgets, histories)
    assert scores.std.max() < 0.1 * std.min()


def test_a_budget_nobody_reached_is_compared_with_the_best_below_it() -> None:
    # The leading trial (4 steps) is behind the overall best (a lucky 2-step value): its
    # fifth step is compared with the best after 4 steps, not with that luckier value.
    layout = _layout()
    x = _points(8)[:2]
    curves = [
        Curve(0, {}, np.arange(4), np.array([0.1, 0.2, 0.3, 0.4]), x[0]),
        Curve(1, {}, np.arange(2), np.array([0.2, 0.9]), x[1]),
    ]
    data = build_training_set(curves, layout, 10, 256, np.random.RandomState(0))
    model = FittedModel(layout, 10, data, GPSurrogate())
    best = acquisition.incumbent(model, np.array([2, 4, 5, 9]))
    at = data.best_at_budget
    np.testing.assert_allclose(best, [at[2], at[4], at[4], at[4]])
    assert at[2] > at[4]


def test_fresh_candidates_stay_in_the_cube_and_move_around_the_best() -> None:
    encoder = SpaceEncoder(
        {"x": FloatDistribution(0, 1), "c": CategoricalDistribution(["a", "b", "c"])}
    )
    best = encoder.encode([{"x": 0.5, "c": "b"}])
    column = encoder.groups.index(encoder.names.index("x"))
    rng = np.random.RandomState(0)
    x = acquisition.fresh_candidates(encoder, best, 16, rng)
    assert x.shape == (32, encoder.dim)
    assert ((x >= 0) & (x <= 1)).all()
    local = x[16:]
    assert np.abs(local[:, column] - 0.5).max() < 0.3  # the local moves stay near the best
    # Without a best configuration, the quasi-random half only; an empty space is one row.
    assert acquisition.fresh_candidates(encoder, np.zeros((0, encoder.dim)), 16, rng).shape == (
        16,
        encoder.dim,
    )
    assert acquisition.fresh_candidates(SpaceEncoder({}), best, 16, rng).shape == (1, 0)


def test_choose_continues_only_a_paused_trial_that_beats_every_fresh_one() -> None:
    fresh = np.array([0.1, 0.4, 0.2])
    assert acquisition.choose(fresh, np.array([0.3, 0.4])) == acquisition.Choice(1, None, 0.4)
    assert acquisition.choose(fresh, np.array([0.3, 0.5])) == acquisition.Choice(1, 1, 0.5)
    assert acquisition.choose(fresh, np.zeros(0)).paused is None


def test_keeps_running_weighs_its_ei_against_the_alternative_with_the_tolerance() -> None:
    assert acquisition.keeps_running(0.3, 0.3, tolerance=1.0)  # ties keep running
    assert not acquisition.keeps_running(0.29, 0.3, tolerance=1.0)
    assert acquisition.keeps_running(0.0, 0.0, tolerance=0.5)
    assert acquisition.keeps_running(0.16, 0.3, tolerance=0.5)
