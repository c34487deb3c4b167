"""Benchmark metrics: regret against epochs spent, Kendall's tau, mean and standard error.

Definitions (also in ``docs/benchmarks.md``):

Scores are in the hub's higher-is-better units (:attr:`Hub.scores`: the validation accuracy,
or minus the validation loss on a minimised hub), so every definition below reads the same for
both directions.

- *Best observed* after ``e`` epochs spent: the highest validation score reported by any trial
  in the first ``e`` replayed epochs (every reported epoch counts, not only final ones;
  epochs a continuation copies from its parent are not replayed again and not counted).
- *Regret* after ``e`` epochs: ``hub.best_final_score - best observed``. The reference is the
  best *final* score of the hub, so the regret can be slightly negative where an intermediate
  epoch beats every final score (zoo hub: by at most 0.003).
- *Incumbent regret* after ``e`` epochs (the FMS paper's definition): ``hub.best_final_score``
  minus the true final score of the configuration with the best observed score so far.
- *Kendall's tau*: ``scipy.stats.kendalltau(predicted[c], true[c])`` over every configuration
  ``c`` of the hub, where ``predicted[c]`` is the surrogate's forecast of ``c``'s final score
  and ``true[c]`` the hub's final score (values per configuration, never lists of indices:
  see docs/benchmarks.md, "Metrics").
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import Any

import numpy as np
from scipy import stats


REGRET_BUDGETS = (50, 100, 200, 500)
TAU_BUDGETS = (50, 100, 200, 500)


def kendall_tau(
    predicted: Sequence[float] | np.ndarray, true: Sequence[float] | np.ndarray
) -> float:
    """Kendall's tau-b between predicted and true scores of the same configurations.

    ``predicted[i]`` and ``true[i]`` must refer to the same configuration ``i``. Returns NaN
    when either side is constant or non-finite values leave fewer than two configurations.

    Examples
    --------
    >>> round(kendall_tau([0.1, 0.2, 0.3], [0.5, 0.7, 0.9]), 6)
    1.0
    >>> round(kendall_tau([0.3, 0.2, 0.1], [0.5, 0.7, 0.9]), 6)
    -1.0
    """
    p = np.asarray(predicted, dtype=float)
    t = np.asarray(true, dtype=float)
    if p.shape != t.shape:
        raise ValueError(f"predicted {p.shape} and true {t.shape} differ in shape.")
    ok = np.isfinite(p) & np.isfinite(t)
    if ok.sum() < 2:
        return math.nan
    tau = stats.kendalltau(p[ok], t[ok]).statistic
    return float(tau)


def regret_curve(best_observed: Sequence[float], reference: float) -> np.ndarray:
    """``reference - best_observed[e]`` for every epoch count ``e`` (index ``e - 1``)."""
    return reference - np.asarray(best_observed, dtype=float)


def at_budget(curve: np.ndarray, budget: int) -> float:
    """Value of a per-epoch curve after ``budget`` epochs (NaN if the run spent fewer)."""
    return float(curve[budget - 1]) if 1 <= budget <= len(curve) else math.nan


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard error of the mean (ddof=1) and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se, len(v)


def fmt_mean_se(values: Sequence[float], digits: int = 3) -> str:
    """``"0.012 ± 0.003"``; ``"n/a"`` when no finite value."""
    m, se, n = mean_se(values)
    if n == 0:
        return "n/a"
    if not np.isfinite(se):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def mean_curve(curves: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error, epoch by epoch, over runs (truncated to the shortest)."""
    n = min(len(c) for c in curves)
    a = np.stack([np.asarray(c[:n], dtype=float) for c in curves])
    se = a.std(axis=0, ddof=1) / math.sqrt(len(a)) if len(a) > 1 else np.zeros(n)
    return a.mean(axis=0), se


def reference_predictors(hub: Any) -> dict[str, float]:
    """Kendall's tau over all of ``hub``'s configurations of the simplest predictors of the
    final score, computed from the hub alone: what a forecaster must beat.

    - ``"<param>"``: each ordered hyper-parameter's value (its grid index), alone
      (categorical ones have no order and are left out);
    - ``"start source accuracy"``: the source-task accuracy of the weights a configuration
      starts from (the zoo member's or pretrained variant's quality, known before training;
      left out on hubs trained from scratch);
    - ``"score after 1 epoch"``, ``"score after 3 epochs"``, ``"score after 10% of epochs"``
      (``ceil(0.1 * n_epochs)`` epochs): the configuration's own validation score after that
      many epochs (what a model-free method sees after spending them).

    Scores are the hub's higher-is-better ones (:attr:`Hub.scores`), so a positive tau means
    the predictor ranks like the final result on a minimised hub too. A hyper-parameter can
    rank in either direction; the sign is kept (a forecaster must beat the absolute value of
    the best one).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from optuna_fms.bench import Hub, build_hub
    >>> hub = Hub.load(build_hub("tiny", Path(tempfile.mkdtemp()), workers=1, progress=False))
    >>> sorted(reference_predictors(hub))  # doctest: +NORMALIZE_WHITESPACE
    ['batch_size', 'lr', 'score after 1 epoch', 'score after 10% of epochs',
     'score after 3 epochs', 'start source accuracy']
    """
    final = hub.final_scores()
    out: dict[str, float] = {}
    for name in hub.ordered:
        out[name] = kendall_tau([c[name] for c in hub.configs], final)
    starts = hub.index["starts"]
    source = [starts[i]["info"]["source_val_accuracy"] for i in hub.index["config_start"]]
    if all(a is not None for a in source):
        out["start source accuracy"] = kendall_tau(source, final)
    for e in (1, 3):
        if e <= hub.n_epochs:
            out[f"score after {e} epoch{'s' if e > 1 else ''}"] = kendall_tau(
                hub.scores[:, e - 1], final
            )
    e = math.ceil(0.1 * hub.n_epochs)
    out["score after 10% of epochs"] = kendall_tau(hub.scores[:, e - 1], final)
    return out


def best_reference(taus: dict[str, float]) -> tuple[str, float]:
    """The reference predictor with the largest absolute tau: ``(name, tau)``."""
    name = max(taus, key=lambda k: abs(taus[k]) if np.isfinite(taus[k]) else -1.0)
    return name, taus[name]
