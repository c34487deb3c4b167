"""What a fitted surrogate learned: the record :func:`optuna_fms.diagnose` returns, which each
model fills in (:meth:`SurrogateModel.report <optuna_fms._surrogate.SurrogateModel.report>`)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field


@dataclass(frozen=True)
class Diagnostics:
    """The surrogate's current fit on a study, in standardised units (targets have mean 0 and
    standard deviation 1 over the observations; inputs lie in ``[0, 1]``).

    Attributes
    ----------
    surrogate:
        The model's ``name`` (``"gp"``, ``"deep-kernel"``).
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
