"""Forecasts at the full budget in the objective's units, inside its range."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal

import numpy as np
from optuna.study import Study

from optuna_fms._engine._curves import longest_curves
from optuna_fms._engine._records import FinalForecast
from optuna_fms._engine._records import Fit
from optuna_fms._surrogate import Curve
from optuna_fms._surrogate._bounds import truncate


if TYPE_CHECKING:
    from optuna_fms._engine._engine import Engine

MetricRange = tuple[float, float] | Literal["auto"] | None


def check_metric_range(metric_range: MetricRange) -> MetricRange:
    """``metric_range`` as floats, or :class:`ValueError` unless ``low < high``."""
    if isinstance(metric_range, tuple):
        low, high = (float(v) for v in metric_range)
        if not low < high:
            raise ValueError(
                f"metric_range must be (low, high) with low < high, got {metric_range}."
            )
        return (low, high)
    return metric_range


class Forecaster:
    """Turns an engine's fit into forecasts of final scores, in the objective's units.

    Parameters
    ----------
    engine:
        The engine whose fits (and weight inputs) are read.
    metric_range:
        ``(low, high)``, ``"auto"`` or ``None``: see :meth:`metric_range`.

    Examples
    --------
    >>> import optuna
    >>> from optuna_fms._engine import Engine
    >>> study = optuna.create_study(direction="maximize")
    >>> for i in range(4):
    ...     t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    ...     for step in range(3):
    ...         t.report(0.1 * t.params["x"] * (step + 1), step)
    ...     _ = study.tell(t, 0.3 * t.params["x"])
    >>> engine = Engine(seed=0, max_steps=3)
    >>> fit = engine.refresh(study, eager=True)
    >>> engine.forecaster.metric_range(study, fit)  # every value in [0, 1]
    (0.0, 1.0)
    >>> final = engine.forecaster.forecast_final(study, fit, [{"x": 0.5}])
    >>> final.curves, bool(0.0 <= final.mean[0] <= 1.0)
    ([None], True)
    """

    def __init__(self, engine: Engine, metric_range: MetricRange) -> None:
        self._engine = engine
        self._metric_range = check_metric_range(metric_range)

    def forecast_final(
        self,
        study: Study,
        fit: Fit,
        params_list: Sequence[Mapping[str, Any]] | None = None,
        *,
        bounded: bool = True,
    ) -> FinalForecast:
        """Forecast the score at the full budget (objective units) of configurations.

        ``params_list=None`` forecasts every observed configuration. A configuration some
        trial has run is forecast from the longest such learning curve (and, with weights,
        that trial's newest checkpoint); one no trial has run from its parameters and
        starting weights alone (never weights of a run that has not happened).
        ``bounded=False`` leaves the forecasts unrestricted by the metric's range (the
        model's own normal forecast, for comparing uncertainties).
        """
        with self._engine.lock:
            return self._forecast_final(study, fit, params_list, bounded)

    def _forecast_final(
        self,
        study: Study,
        fit: Fit,
        params_list: Sequence[Mapping[str, Any]] | None,
        bounded: bool,
    ) -> FinalForecast:
        longest = {c.x.tobytes(): c for c in longest_curves(fit)}
        if params_list is None:
            curves: list[Curve | None] = list(longest.values())
            params = [dict(c.params) for c in longest.values()]
        else:
            for p in params_list:
                if not fit.encoder.contains(p):
                    raise ValueError(
                        f"{dict(p)} is not in the search space the surrogate models "
                        f"({sorted(fit.encoder.search_space)})."
                    )
            params = [{n: p[n] for n in fit.encoder.search_space} for p in params_list]
        n = len(params)
        x = fit.encoder.encode(params) if n else np.zeros((0, fit.encoder.dim))
        if params_list is not None:
            curves = [longest.get(row.tobytes()) for row in x]
        histories: list[np.ndarray] = [np.zeros(0)] * n
        inputs = self._engine.weight_inputs
        ckpts = inputs.start_indices(params)
        for i, curve in enumerate(curves):
            if curve is None:
                continue
            histories[i] = curve.values[curve.steps < fit.max_steps - 1]
            if ckpts is not None:
                ckpts[i] = inputs.index(curve, fit.max_steps, fit.trials[curve.key])
        if n == 0:
            return FinalForecast(params, curves, np.zeros(0), np.zeros(0))
        budgets = np.full(n, float(fit.max_steps))
        mean, std = self.objective_units(
            study, fit, *fit.model.predict(x, budgets, histories, ckpts), bounded=bounded
        )
        return FinalForecast(params, curves, mean, std)

    def metric_range(self, study: Study, fit: Fit) -> tuple[float, float] | None:
        """The range the objective's values lie in: the one declared (``metric_range``),
        else ``(0, 1)`` where every value observed so far is in it (an accuracy, a rate),
        else ``None``."""
        if self._metric_range != "auto":
            return self._metric_range
        sign = self._engine.sign(study)
        values = [sign * c.values for c in fit.curves]
        if values:
            every = np.concatenate(values)
            every = every[np.isfinite(every)]
            if len(every) and every.min() >= 0.0 and every.max() <= 1.0:
                return (0.0, 1.0)
        return None

    def objective_units(
        self, study: Study, fit: Fit, mean: np.ndarray, std: np.ndarray, bounded: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Standardised forecasts in the objective's units, inside its range (if any)."""
        mean, std = fit.model.to_objective(mean, std)
        mean = self._engine.sign(study) * mean
        bounds = self.metric_range(study, fit) if bounded else None
        if bounds is not None:
            mean, std = truncate(mean, std, *bounds)
        return mean, std
