"""What the surrogate learned on a study: its fitted hyperparameters and its errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.study import Study

from optuna_fms._engine import fitted
from optuna_fms._forecast import engine_of_sampler
from optuna_fms._surrogate import Diagnostics as Diagnostics


if TYPE_CHECKING:
    from optuna_fms._engine import Engine
    from optuna_fms._sampler import FMSSampler


def diagnose(
    study: Study, *, sampler: FMSSampler | None = None, engine: Engine | None = None
) -> Diagnostics:
    """Fitted noise, lengthscales and training vs held-out error of the study's surrogate.

    Parameters
    ----------
    study:
        A study optimised with :class:`~optuna_fms.FMSSampler` (or any study with learning
        curves, for which a surrogate is fitted on the spot).
    sampler:
        The :class:`~optuna_fms.FMSSampler` whose settings and surrogate to read instead of
        the study's sampler.
    engine:
        The engine to read: ``sampler.engine`` of an :class:`~optuna_fms.FMSSampler`.

        .. deprecated:: 0.1.0
            ``engine`` will be removed in 0.3.0. Pass ``sampler=``, the
            :class:`~optuna_fms.FMSSampler` whose ``engine`` it is, instead.

    Raises
    ------
    ValueError
        If both ``sampler`` and ``engine`` are given.
    optuna_fms.SurrogateFitError
        If the surrogate has no fit on the study.

    Examples
    --------
    >>> import optuna, optuna_fms
    >>> space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    >>> study = optuna.create_study(direction="maximize")
    >>> for lr in (0.001, 0.01, 0.1, 1.0):
    ...     curve = {s: 1 - (1 - lr) ** (s + 1) for s in range(5)}
    ...     study.add_trial(optuna.trial.create_trial(
    ...         params={"lr": lr}, distributions=space, value=curve[4],
    ...         intermediate_values=curve))
    >>> sampler = optuna_fms.FMSSampler(max_steps=5, surrogate="gp")
    >>> d = optuna_fms.diagnose(study, sampler=sampler)
    >>> d.n_configurations, sorted(d.lengthscales), d.held_out_rmse >= 0
    (4, ['log_budget', 'lr'], True)
    """
    _, fit = fitted(study, engine_of_sampler("diagnose", sampler, engine))
    data = fit.model.data
    return fit.model.surrogate.report(data.rows, data.y, data.owner, len(fit.curves))
