"""The ``"gp"`` surrogate's prior mean: a trend in the hyperparameters that can change with
the budget, so that a forecast far from every observation keeps the direction the data
showed (docs/experiments.md, "The GP surrogate")."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from optuna_fms._surrogate import GPSurrogate
from optuna_fms._surrogate import RowLayout


MAX_STEPS = 30


def _rows(layout: RowLayout, x: np.ndarray, budget: np.ndarray) -> np.ndarray:
    rows = np.zeros((len(x), layout.width))
    rows[:, : x.shape[1]] = x
    rows[:, layout.budget] = budget / MAX_STEPS
    return rows


def _fit_and_rank(trend: str, score, x_seen: np.ndarray, budgets: list[int]) -> float:
    """Fit on ``score(x, budget)`` at ``x_seen`` and ``budgets``; Kendall's tau of the
    forecast final score against the true one at unseen ``x`` beyond the observed range."""
    layout = RowLayout(
        x_dim=2, curve_len=0, x_groups=[0, 1], x_names=["a", "b"], max_steps=MAX_STEPS
    )
    x = np.repeat(x_seen, len(budgets), axis=0)
    b = np.tile(np.array(budgets, dtype=float), len(x_seen))
    y = score(x, b)
    # Noise-free data and an exactly linear score: with the default nugget (0.1) the MAP fit
    # explains this small sample by a short lengthscale and a small trend instead (tau
    # 0.15); the trend's own effect is what this test isolates.
    gp = GPSurrogate(trend=trend, min_noise=1e-5)  # type: ignore[arg-type]
    gp.fit(layout, _rows(layout, x, b), (y - y.mean()) / y.std())
    grid = np.random.RandomState(1).rand(60, 2)
    grid[:, 0] = 0.6 + 0.4 * grid[:, 0]  # beyond every observation in "a"
    full = np.full(len(grid), float(MAX_STEPS))
    mean, _ = gp.predict(_rows(layout, grid, full))
    return float(kendalltau(mean, score(grid, full))[0])


def _seen() -> np.ndarray:
    rng = np.random.RandomState(0)
    return np.column_stack([0.5 * rng.rand(8), rng.rand(8)])


@pytest.mark.parametrize("trend", ["linear", "linear-budget"])
def test_a_trend_ranks_configurations_beyond_the_observations(trend: str) -> None:
    def score(x: np.ndarray, b: np.ndarray) -> np.ndarray:
        return 2.0 * x[:, 0] + 0.3 * np.log(b)

    with_trend = _fit_and_rank(trend, score, _seen(), [1, 3, 10, 30])
    constant = _fit_and_rank("constant", score, _seen(), [1, 3, 10, 30])
    # Far from the data a constant mean reverts every forecast to the same value.
    assert with_trend > 0.8
    assert with_trend > constant + 0.3


def test_diagnostics_report_the_trend_at_the_full_budget() -> None:
    layout = RowLayout(
        x_dim=2, curve_len=0, x_groups=[0, 1], x_names=["a", "b"], max_steps=MAX_STEPS
    )
    x = np.repeat(_seen(), 3, axis=0)
    b = np.tile([1.0, 10.0, 30.0], 8)
    y = 2.0 * x[:, 0] - 1.0 * x[:, 1]
    gp = GPSurrogate()
    gp.fit(layout, _rows(layout, x, b), (y - y.mean()) / y.std())
    trend = gp.diagnostics().trend
    assert set(trend) == {"a", "b"}
    assert trend["a"] > 0 > trend["b"]
    assert GPSurrogate(trend="constant").fit(layout, _rows(layout, x, b), y) is None


def test_an_unknown_trend_is_refused() -> None:
    with pytest.raises(ValueError, match="trend must be"):
        GPSurrogate(trend="quadratic")  # type: ignore[arg-type]


def test_the_cholesky_posterior_equals_gpytorchs() -> None:
    import gpytorch
    import torch

    layout = RowLayout(
        x_dim=2, curve_len=0, x_groups=[0, 1], x_names=["a", "b"], max_steps=MAX_STEPS
    )
    rng = np.random.RandomState(3)
    x = rng.rand(40, 2)
    b = rng.randint(1, MAX_STEPS + 1, size=40).astype(float)
    y = np.sin(5 * x[:, 0]) + x[:, 1] * np.log(b)
    gp = GPSurrogate()
    gp.fit(layout, _rows(layout, x, b), (y - y.mean()) / y.std())
    query = _rows(layout, rng.rand(25, 2), rng.randint(1, MAX_STEPS + 1, size=25).astype(float))
    mean, std = gp.predict(query)
    model = gp._model
    assert model is not None
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
        post = model(torch.as_tensor(gp._features(query), dtype=torch.float64))
    np.testing.assert_allclose(mean, post.mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(std, post.variance.clamp_min(1e-12).sqrt().numpy(), atol=1e-5)


def _categorical_and_numeric(
    effect: float,
) -> tuple[RowLayout, np.ndarray, np.ndarray, np.ndarray]:
    """Columns: a two-way one-hot categorical "c", then the numeric "a"; the score is
    ``a + effect * c`` at budgets 1, 10 and 30. Returns layout, x, budgets and the
    standardised score."""
    layout = RowLayout(
        x_dim=3, curve_len=0, x_groups=[0, 0, 1], x_names=["c", "a"], max_steps=MAX_STEPS
    )
    rng = np.random.RandomState(0)
    cat = rng.randint(0, 2, size=24)
    x = np.column_stack([cat == 0, cat == 1, rng.rand(24)]).astype(float)
    b = np.tile([1.0, 10.0, 30.0], 8)
    y = x[:, 2] + effect * cat
    return layout, x, b, (y - y.mean()) / y.std()


def test_categoricals_get_no_trend_and_numeric_inputs_keep_their_names() -> None:
    layout, x, b, y = _categorical_and_numeric(0.5)
    gp = GPSurrogate()
    gp.fit(layout, _rows(layout, x, b), y)
    d = gp.diagnostics()
    assert set(d.trend) == {"a"} and d.trend["a"] > 0
    assert set(d.lengthscales) == {"c", "a", "log_budget"}


def test_an_ignored_parameter_is_not_read() -> None:
    # "c" (one-hot, two columns) carries the signal, but the GP is told not to read it.
    layout, x, b, y = _categorical_and_numeric(2.0)
    flipped = x.copy()
    flipped[:, :2] = flipped[:, 1::-1]
    reads, ignores = GPSurrogate(), GPSurrogate(ignore=["c"])
    for gp in (reads, ignores):
        gp.fit(layout, _rows(layout, x, b), y)
    assert set(ignores.diagnostics().lengthscales) == {"a", "log_budget"}
    a, _ = ignores.predict(_rows(layout, x, b))
    a_flipped, _ = ignores.predict(_rows(layout, flipped, b))
    np.testing.assert_allclose(a, a_flipped)
    r, _ = reads.predict(_rows(layout, x, b))
    r_flipped, _ = reads.predict(_rows(layout, flipped, b))
    assert np.abs(r - r_flipped).max() > 0.5


def test_a_noise_floor_above_the_initial_noise_fits() -> None:
    # The cold start used to initialise the noise at 1e-2 whatever the floor: below a floor
    # of 0.1 that is an invalid value, and every fit failed.
    layout = RowLayout(x_dim=2, curve_len=0, x_groups=[0, 1], x_names=["a", "b"], max_steps=30)
    x = _seen()
    y = x[:, 0] - x[:, 1]
    gp = GPSurrogate(min_noise=0.1)
    gp.fit(layout, _rows(layout, x, np.full(len(x), 30.0)), (y - y.mean()) / y.std())
    assert gp.diagnostics().noise >= 0.1


def test_decisions_read_a_posterior_pinned_to_the_observations() -> None:
    # With a noise floor the forecast posterior does not pin a configuration's latent score
    # to its observations; ``decision_noise`` gives the acquisition one that does, with the
    # same hyperparameters, and leaves the forecasts alone.
    layout = RowLayout(x_dim=2, curve_len=0, x_groups=[0, 1], x_names=["a", "b"], max_steps=30)
    x = _seen()
    y = x[:, 0] - x[:, 1]
    rows = _rows(layout, x, np.full(len(x), 30.0))
    target = (y - y.mean()) / y.std()
    plain = GPSurrogate(min_noise=0.1, decision_noise=None)
    pinned = GPSurrogate(min_noise=0.1, decision_noise=1e-5)
    for gp in (plain, pinned):
        gp.fit(layout, rows, target)
    mean, std = pinned.predict(rows)
    np.testing.assert_allclose((mean, std), plain.predict(rows))
    np.testing.assert_allclose(plain.predict(rows, decide=True), (mean, std))
    decide_mean, decide_std = pinned.predict(rows, decide=True)
    assert decide_std.max() < 0.1 * std.min()
    np.testing.assert_allclose(decide_mean, target, atol=0.05)
    assert np.abs(mean - target).max() > 0.1


def test_noise_and_trend_prior_settings_must_be_positive() -> None:
    with pytest.raises(ValueError, match="decision_noise"):
        GPSurrogate(decision_noise=0.0)
    with pytest.raises(ValueError, match="trend_change_std"):
        GPSurrogate(trend_change_std=0.0)
