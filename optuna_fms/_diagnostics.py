"""What the surrogate learned on a study: its fitted hyperparameters and its errors."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING

from optuna.study import Study

from optuna_fms._engine import Engine
from optuna_fms._engine import fitted
from optuna_fms._forecast import engine_for


if TYPE_CHECKING:
    from optuna_fms._sampler import FMSSampler


@dataclass(frozen=True)
class Diagnostics:
    """The surrogate's current fit on a study, in standardised units (targets have mean 0 and
    standard deviation 1 over the observations; inputs lie in ``[0, 1]``).

    Attributes
    ----------
    surrogate:
        The model's name (``"gp"`` or ``"deep-kernel"``: its ``name``).
    n_configurations, n_rows:
        Learning curves and training rows the fit read.
    noise:
        The fitted noise variance.
    lengthscales:
        One per input of the ``"gp"`` model (a parameter, a weight component, the log
        budget); large means the input barely matters. Empty for the deep kernel.
    trend:
        The ``"gp"`` model's prior-mean trend per numeric input at the full budget: how much
        the forecast final score changes over the input's range (standard deviations), far
        from the observations. Empty for the deep kernel or ``trend="constant"``.
    train_rmse:
        Root mean squared error of the posterior mean on the training rows.
    held_out_rmse:
        The same on each configuration's rows with that configuration left out (the GP
        conditioned on the others, hyperparameters kept): how well it predicts a curve it
        has not seen. NaN for the deep kernel, which would need a refit per configuration.
    """

    surrogate: str
    n_configurations: int
    n_rows: int
    noise: float
    train_rmse: float
    held_out_rmse: float
    lengthscales: dict[str, float] = field(default_factory=dict)
    trend: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"surrogate {self.surrogate}: {self.n_configurations} configurations, "
            f"{self.n_rows} rows",
            f"noise variance {self.noise:.3g}; RMSE train {self.train_rmse:.3f}, "
            f"held out (leave one configuration out) {self.held_out_rmse:.3f}",
        ]
        if self.lengthscales:
            lines.append(
                "lengthscales: "
                + ", ".join(f"{k} {v:.3g}" for k, v in sorted(self.lengthscales.items()))
            )
        if self.trend:
            lines.append(
                "trend at the full budget: "
                + ", ".join(f"{k} {v:+.3g}" for k, v in sorted(self.trend.items()))
            )
        return "\n".join(lines)


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
        Kept for the benchmarks: the engine to read (``sampler.engine``).

    Raises
    ------
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
    _, fit = fitted(study, engine_for(sampler, engine))
    data = fit.model.data
    surrogate = fit.model.surrogate
    r = surrogate.report(data.rows, data.y, data.owner)
    return Diagnostics(
        surrogate.name,
        len(fit.curves),
        r.n_rows,
        r.noise,
        r.train_rmse,
        r.held_out_rmse,
        r.lengthscales,
        r.trend,
    )
