"""The surrogate's forecast of configurations' final scores, for users and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
import warnings

import numpy as np
from optuna.study import Study

from optuna_fms._engine import Engine
from optuna_fms._engine import fitted
from optuna_fms._engine import longest_curves


if TYPE_CHECKING:
    from optuna_fms._sampler import FMSSampler


_ENGINE_DEPRECATED_IN = "0.1.0"
_ENGINE_REMOVED_IN = "0.3.0"
"""The ``engine`` argument of :func:`forecast`, :func:`recommend` and
:func:`~optuna_fms.diagnose`: deprecated in this version, removed in that one."""


@dataclass(frozen=True)
class Forecast:
    """A configuration's forecast score at the full budget, in the objective's units.

    Attributes
    ----------
    params:
        The configuration (the parameters the surrogate models).
    mean, std:
        Posterior mean and standard deviation of the score after ``step + 1`` steps.
    step:
        The last step of the full budget.
    trial:
        Number of the trial whose learning curve (and checkpoint) the forecast extends, or
        ``None`` for a configuration no trial has run: that one is read from its parameters
        (and starting weights) alone.
    last_step:
        The last step observed of that trial's curve (``None`` with ``trial``).
    """

    params: dict[str, Any]
    mean: float
    std: float
    step: int
    trial: int | None = None
    last_step: int | None = None


def forecast(
    study: Study,
    params: Sequence[Mapping[str, Any]] | None = None,
    *,
    sampler: FMSSampler | None = None,
    engine: Engine | None = None,
) -> list[Forecast]:
    """Forecast the final score of configurations with the study's surrogate.

    The surrogate is the one the study's :class:`~optuna_fms.FMSSampler` fits (brought up to
    date first, as the sampler would before its next trial); for a study with another
    sampler, a surrogate with default settings is fitted for this call.

    Parameters
    ----------
    study:
        A single-objective study with at least two learning curves (reported values).
    params:
        The configurations to forecast. A configuration some trial has run is forecast from
        the longest learning curve observed for it; one no trial has run from its parameters
        alone. ``None`` forecasts every configuration observed so far.
    sampler:
        The :class:`~optuna_fms.FMSSampler` whose settings and surrogate to use instead of
        the study's sampler (one built for several calls on a study run with another
        sampler, for example).
    engine:
        The engine to use: ``sampler.engine`` of an :class:`~optuna_fms.FMSSampler`.

        .. deprecated:: 0.1.0
            ``engine`` will be removed in 0.3.0. Pass ``sampler=``, the
            :class:`~optuna_fms.FMSSampler` whose ``engine`` it is, instead.

    Returns
    -------
    One :class:`Forecast` per configuration, in order.

    Raises
    ------
    ValueError
        If a configuration lies outside the search space the surrogate models, the study
        is multi-objective, or both ``sampler`` and ``engine`` are given.
    optuna_fms.SurrogateFitError
        If the surrogate cannot be fitted yet (fewer than two learning curves) or its fit
        failed.

    Examples
    --------
    >>> import optuna, optuna_fms
    >>> def objective(trial):
    ...     x = trial.suggest_float("x", 0, 1)
    ...     for step in range(4):
    ...         trial.report(x * (step + 1) / 4, step)
    ...     return x
    >>> study = optuna.create_study(
    ...     direction="maximize",
    ...     sampler=optuna_fms.FMSSampler(seed=0, n_startup_trials=3, n_scratch_epochs=30),
    ...     pruner=optuna_fms.FMSPruner(max_steps=4),
    ... )
    >>> study.optimize(objective, n_trials=5)
    >>> best = max(optuna_fms.forecast(study), key=lambda f: f.mean)
    >>> best.trial is not None, best.step
    (True, 3)
    >>> [f.trial for f in optuna_fms.forecast(study, [{"x": 0.123456}])]
    [None]
    """
    if study._is_multi_objective():
        raise ValueError("forecast supports single-objective studies only.")
    engine, fit = fitted(study, engine_of_sampler("forecast", sampler, engine))
    final = engine.forecaster.forecast_final(study, fit, params)
    out = []
    for p, curve, m, s in zip(final.params, final.curves, final.mean, final.std):
        trial = None if curve is None else fit.trials[curve.key].number
        last = None if curve is None else curve.last_step
        out.append(Forecast(p, float(m), float(s), fit.max_steps - 1, trial, last))
    return out


def recommend(
    study: Study, *, sampler: FMSSampler | None = None, engine: Engine | None = None
) -> Forecast:
    """The configuration to use, the best last observed score, with the forecast of its
    final score.

    Use it instead of ``study.best_trial``, which picks the best *reported* value: under
    pruning that is often a lucky value of a short run, or an early epoch. The recommendation
    is the configuration whose newest observation (the end of its longest curve) is the best
    (the longer curve on ties), and its forecast at the full budget from that curve. A trial
    that diverged after a good start is never recommended (its newest value is bad).

    The forecast does not overrule an observation. Letting a configuration trained as far
    replace it when its forecast cleared the observed score by one (or two) standard
    deviations lost more than it gained on the hub suite: in two rounds, 3 of 600 seed-marks
    better (by 2.5 in all) and 11 worse (by 4.2), mostly on a validation loss that later
    rose (docs/experiments.md). Forecasts rank configurations; an observed score picks the
    single best more reliably.

    Parameters
    ----------
    study:
        A single-objective study with learning curves.
    sampler:
        The :class:`~optuna_fms.FMSSampler` whose settings and surrogate to use instead of
        the study's sampler.
    engine:
        The engine to use: ``sampler.engine`` of an :class:`~optuna_fms.FMSSampler`.

        .. deprecated:: 0.1.0
            ``engine`` will be removed in 0.3.0. Pass ``sampler=``, the
            :class:`~optuna_fms.FMSSampler` whose ``engine`` it is, instead.

    Returns
    -------
    The :class:`Forecast` of the recommended configuration: its parameters, the forecast
    mean and std, and the trial whose curve it extends.

    Raises
    ------
    ValueError
        If the study is multi-objective, or both ``sampler`` and ``engine`` are given.
    optuna_fms.SurrogateFitError
        If the surrogate cannot be fitted yet.

    Examples
    --------
    >>> import optuna, optuna_fms
    >>> space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    >>> study = optuna.create_study(direction="minimize")
    >>> for lr, steps in ((0.01, 6), (0.1, 2), (0.5, 6)):
    ...     curve = {s: (1 - lr) ** (s + 1) for s in range(steps)}
    ...     study.add_trial(optuna.trial.create_trial(
    ...         params={"lr": lr}, distributions=space, intermediate_values=curve,
    ...         state=optuna.trial.TrialState.PRUNED))
    >>> best = optuna_fms.recommend(study, sampler=optuna_fms.FMSSampler(max_steps=6))
    >>> best.params["lr"], best.step
    (0.5, 5)
    """
    if study._is_multi_objective():
        raise ValueError("recommend supports single-objective studies only.")
    engine, fit = fitted(study, engine_of_sampler("recommend", sampler, engine))
    curves = longest_curves(fit)
    last = np.array([c.values[-1] for c in curves])  # Curve values: higher is better
    steps = np.array([c.last_step for c in curves])
    # The best last observed score, the longer curve on ties.
    best = int(np.lexsort((steps, np.where(np.isfinite(last), last, -np.inf)))[-1])
    curve = curves[best]
    chosen = engine.forecaster.forecast_final(study, fit, [curve.params])
    return Forecast(
        dict(curve.params),
        float(chosen.mean[0]),
        float(chosen.std[0]),
        fit.max_steps - 1,
        fit.trials[curve.key].number,
        curve.last_step,
    )


def engine_of_sampler(
    function: str, sampler: FMSSampler | None, engine: Engine | None = None
) -> Engine | None:
    """The engine the public ``function`` reads with: the ``sampler``'s, else the deprecated
    ``engine`` argument (``None``: the study's sampler's, see
    :func:`~optuna_fms._engine.fitted`).

    Passing ``engine`` emits a :class:`FutureWarning`; passing both is a :class:`ValueError`.
    """
    if engine is None:
        return None if sampler is None else sampler.engine
    if sampler is not None:
        raise ValueError(
            f"optuna_fms.{function}() takes sampler= or the deprecated engine=, not both: "
            "pass only sampler= (its engine is sampler.engine)."
        )
    warnings.warn(
        f"The engine argument of optuna_fms.{function}() is deprecated since "
        f"v{_ENGINE_DEPRECATED_IN} and is scheduled for removal in v{_ENGINE_REMOVED_IN}. "
        "Pass sampler=, an optuna_fms.FMSSampler, instead: the call uses its engine "
        "(sampler.engine).",
        FutureWarning,
        stacklevel=3,
    )
    return engine
