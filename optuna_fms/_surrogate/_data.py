"""Learning curves as packed training rows for the surrogate, and the rows it is asked about."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np

from optuna_fms._surrogate._model import RowLayout


@dataclass
class Curve:
    """One configuration's observed learning curve, in "higher is better" units.

    ``steps`` are the steps of the observations (budget = step + 1); ``key`` identifies the
    run it was read from (the engine uses the trial id) and ``checkpoints`` maps steps to the
    ids of the checkpoints stored after them.

    Examples
    --------
    >>> import numpy as np
    >>> c = Curve(key=7, params={"lr": 0.1}, steps=np.array([0, 1, 2]),
    ...           values=np.array([0.1, 0.2, 0.3]), checkpoints={0: "a", 2: "c"})
    >>> c.last_step, c.checkpoint_before(3)
    (2, (0, 'a'))
    """

    key: int
    params: dict[str, Any]
    steps: np.ndarray
    values: np.ndarray
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    checkpoints: dict[int, str] = field(default_factory=dict)

    def checkpoint_before(self, budget: int) -> tuple[int, str] | None:
        """The newest stored checkpoint a model at ``budget`` may read: the weights after at
        most ``budget - 1`` epochs (never those of the epoch being predicted)."""
        steps = [s for s in self.checkpoints if s <= budget - 2]
        if not steps:
            return None
        step = max(steps)
        return step, self.checkpoints[step]

    @property
    def last_step(self) -> int:
        return int(self.steps[-1]) if len(self.steps) else -1


@dataclass
class Standardizer:
    """Affine map to standard units; infinities are clipped to the finite range first."""

    mean: float
    std: float
    low: float
    high: float

    @classmethod
    def fit(cls, values: np.ndarray) -> Standardizer:
        finite = values[np.isfinite(values)]
        if len(finite) == 0:
            return cls(0.0, 1.0, -1.0, 1.0)
        # In units of the largest magnitude: squares of values near 1e200 overflow to inf.
        unit = float(np.abs(finite).max()) or 1.0
        mean, std = float((finite / unit).mean()) * unit, float((finite / unit).std()) * unit
        floor = max(unit, 1.0)  # 1.0 for the usual scores, as before
        return cls(mean, std if std > 1e-12 * floor else floor, finite.min(), finite.max())

    def __call__(self, values: np.ndarray) -> np.ndarray:
        clipped = np.clip(values, self.low, self.high)
        return (clipped - self.mean) / self.std


def pack_rows(
    layout: RowLayout,
    x: np.ndarray,
    budgets: np.ndarray,
    histories: Sequence[np.ndarray],
    max_steps: int,
    scale: Standardizer,
    ckpts: np.ndarray | None = None,
) -> np.ndarray:
    """Pack inputs into the row layout the feature extractor reads.

    ``histories[i]`` is the curve observed before the budget in row ``i`` (NaN = missing).
    """
    n = len(x)
    rows = np.zeros((n, layout.width))
    rows[:, : layout.x_dim] = x
    rows[:, layout.budget] = budgets / max_steps
    width = layout.curve_len
    for i, hist in enumerate(histories):
        tail = hist[-width:] if width else hist[:0]
        if len(tail) == 0:
            continue
        observed = ~np.isnan(tail)
        vals = np.where(observed, scale(np.nan_to_num(tail, nan=0.0)), 0.0)
        rows[i, layout.curve.start : layout.curve.start + len(tail)] = vals
        rows[i, layout.mask.start : layout.mask.start + len(tail)] = observed
    rows[:, layout.ckpt] = -1 if ckpts is None else ckpts
    return rows


@dataclass
class TrainingSet:
    """Packed rows and standardised targets, with the incumbent per budget and the index of
    the curve each row was read from (``owner``)."""

    rows: np.ndarray
    y: np.ndarray
    scale: Standardizer
    best_at_budget: dict[int, float]
    owner: np.ndarray


def build_training_set(
    curves: Sequence[Curve],
    layout: RowLayout,
    max_steps: int,
    max_rows: int,
    rng: np.random.RandomState,
    row_weights: Callable[[Curve, int], float] | None = None,
) -> TrainingSet:
    """All (configuration, budget, curve so far) -> value rows, capped at ``max_rows``.

    Besides one row per observation, each configuration's latest observation appears once
    more with an *empty* history (and its starting weights): the input the surrogate sees
    when it forecasts a configuration that has not run yet, at any budget. Without these
    rows an empty curve only ever occurs at the first step in training.

    When the cap binds, those rows and each curve's latest observation are kept first (what
    the decisions read), then the rest are drawn at random with ``rng``.
    """
    # Every observation (curve, position in it), in curve order; NaN values left out.
    lengths = [len(c.steps) for c in curves]
    values_flat = np.concatenate([c.values for c in curves]) if curves else np.zeros(0)
    steps_flat = np.concatenate([c.steps for c in curves]) if curves else np.zeros(0)
    owner_flat = np.repeat(np.arange(len(curves)), lengths)
    index_flat = np.concatenate([np.arange(n) for n in lengths]) if curves else np.zeros(0)
    keep_obs = ~np.isnan(values_flat)
    owner = owner_flat[keep_obs].astype(int).tolist()
    index = index_flat[keep_obs].astype(int).tolist()
    all_values = values_flat[keep_obs].astype(float)
    scale = Standardizer.fit(all_values)
    y_obs = scale(all_values)
    obs_budget = steps_flat[keep_obs].astype(int) + 1
    best: dict[int, float] = {}
    for b in np.unique(obs_budget):
        best[int(b)] = float(np.max(y_obs[obs_budget == b]))
    # The position of each curve's latest observation (positions run in curve order).
    last_pos: dict[int, int] = {o: pos for pos, o in enumerate(owner)}
    # Rows: (observation position, history length); the priors have an empty history.
    pos_a = np.concatenate([np.arange(len(owner)), [p for p in last_pos.values() if index[p]]])
    pos_a = pos_a.astype(int)
    hist_len = np.concatenate([np.asarray(index, dtype=int), np.zeros(len(pos_a) - len(owner))])
    hist_len = hist_len.astype(int)

    chosen = np.arange(len(pos_a))
    if len(chosen) > max_rows:
        first = np.zeros(len(pos_a), dtype=bool)
        first[list(last_pos.values())] = True
        first[len(owner) :] = True
        keep = np.flatnonzero(first)
        if len(keep) >= max_rows:
            chosen = np.sort(rng.choice(keep, size=max_rows, replace=False))
        else:
            others = np.flatnonzero(~first)
            extra = rng.choice(others, size=max_rows - len(keep), replace=False)
            chosen = np.sort(np.concatenate([keep, extra]))

    owners = [owner[p] for p in pos_a[chosen]]
    x = np.stack([curves[o].x for o in owners]) if owners else np.zeros((0, layout.x_dim))
    budgets = np.array([curves[owner[p]].steps[index[p]] + 1 for p in pos_a[chosen]])
    hist = [curves[o].values[:h] for o, h in zip(owners, hist_len[chosen])]
    ckpts = None
    if row_weights is not None:
        # An observation row reads the weights from before its budget; a prior row (empty
        # history) the starting weights, like a configuration that has not run.
        prior = chosen >= len(owner)
        ckpts = np.array(
            [row_weights(curves[o], 1 if p else int(b)) for o, p, b in zip(owners, prior, budgets)]
        )
    rows = pack_rows(layout, x, budgets, hist, max_steps, scale, ckpts)
    return TrainingSet(
        rows=rows,
        y=y_obs[pos_a[chosen]],
        scale=scale,
        best_at_budget=best,
        owner=np.asarray(owners, dtype=int),
    )
