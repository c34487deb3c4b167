"""The GP model behind :class:`~optuna_fms._surrogate._gp.GPSurrogate`: its kernel, prior
mean, exact posterior and MAP objective (with the priors Optuna's GPSampler puts on a GP's
hyperparameters, plus a Gaussian prior on the mean's trend).

``k((x, b), (x', b')) = k_x(x, x') * (s_q + s_b * k_b(b, b'))`` around a mean that rises in
log budget, with an optional linear trend in the hyperparameters (:data:`Trend`).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any
from typing import Literal
import warnings

import gpytorch
from linear_operator import to_linear_operator
from linear_operator.utils.errors import NotPSDError
import numpy as np
import torch

from optuna_fms._surrogate._surrogate import SurrogateFitError


TREND_PRIOR_STD = 1.0
"""Prior standard deviation of each trend coefficient: a change of one standard deviation of
the score over an input's whole range."""
TREND_CHANGE_STD = 0.5
"""Prior standard deviation of the change of a ``"linear-budget"`` trend coefficient from
the full budget to one step (with most observations after one step, a wide prior halves the
final trend the first steps show; ``0`` is the ``"linear"`` trend)."""

Trend = Literal["constant", "linear", "linear-budget"]
"""The prior mean in the hyperparameters (it always has a slope in log budget):
``"constant"``; ``"linear"``, a linear trend in each numeric input; ``"linear-budget"``, that
trend with a slope that changes linearly in log budget (an input may matter more, or the
other way round, at the end of training than after one epoch)."""


@dataclass(frozen=True)
class GPDiagnostics:
    """The fitted hyperparameters of one fit (standardised units; inputs in ``[0, 1]``)."""

    noise: float
    persistent_scale: float
    """Variance of the part of a configuration's quality that persists across budgets."""
    budget_scale: float
    """Variance of its smooth deviation from that along log budget."""
    budget_slope: float
    """Slope of the prior mean in log budget (0 to 1 over the full budget)."""
    lengthscales: dict[str, float]
    n_rows: int
    trend: dict[str, float]
    """The prior mean's trend per numeric input at the full budget: the change of the
    forecast final score over the input's range, in standard deviations."""


class _GroupedMatern(gpytorch.kernels.Kernel):
    """Matern-5/2 with one lengthscale per *parameter*: the one-hot columns of a categorical
    share theirs, so two different categories are one fixed distance apart (as in Optuna's
    GPSampler) instead of adding a lengthscale per category."""

    def __init__(self, groups: list[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("_group", torch.as_tensor(groups, dtype=torch.long))
        n = max(groups, default=0) + 1
        self.register_parameter("raw_lengthscale", torch.nn.Parameter(torch.zeros(n)))
        self.register_constraint("raw_lengthscale", gpytorch.constraints.Positive())

    @property
    def lengthscale(self) -> torch.Tensor:
        return self.raw_lengthscale_constraint.transform(self.raw_lengthscale)

    @lengthscale.setter
    def lengthscale(self, value: torch.Tensor) -> None:
        raw = self.raw_lengthscale_constraint.inverse_transform(torch.as_tensor(value))
        self.initialize(raw_lengthscale=raw.to(self.raw_lengthscale))

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params: object
    ) -> torch.Tensor:
        ls = self.lengthscale[self._group]
        d = self.covar_dist(x1 / ls, x2 / ls, diag=diag, **params)  # type: ignore[arg-type]
        r = math.sqrt(5.0) * d
        return (1.0 + r + r**2 / 3.0) * torch.exp(-r)


class _BudgetMean(gpytorch.means.Mean):
    """A constant plus a slope in log budget (scores rise with training), plus a linear trend
    in the ``trend`` columns, optionally changing linearly in log budget.

    The trend is what lets a few configurations inform the whole space: far from every
    observation a constant mean forecasts the same score for all configurations (ties),
    a trend keeps the direction the data showed (a larger learning rate was better). Its
    coefficients have a Gaussian prior (:data:`TREND_PRIOR_STD`) in the MAP fit.
    """

    def __init__(
        self, trend: list[int], budget_trend: bool, change_std: float = TREND_CHANGE_STD
    ) -> None:
        super().__init__()
        self.change_std = change_std
        """Prior standard deviation of the trend's change from the full budget to one step."""
        self.constant = torch.nn.Parameter(torch.zeros(1))
        self.slope = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("_trend", torch.as_tensor(trend, dtype=torch.long))
        # The trend at the full budget, and its change towards one step (log budget 0).
        # Anchoring at the full budget shares strength: most observations are early ones,
        # and they inform the final trend unless the data show that it changes. (Two
        # independent trends, after one step and at the end, each with its own prior, left
        # the final one near 0 and ranked at tau 0.26 instead of 0.51 on the zoo hub.)
        self.trend = torch.nn.Parameter(torch.zeros(len(trend)))
        self.budget_trend = torch.nn.Parameter(torch.zeros(len(trend) if budget_trend else 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_budget = x[..., -1]
        out = self.constant + self.slope * log_budget
        if len(self._trend):
            centred = x[..., self._trend] - 0.5
            out = out + centred @ self.trend
            if len(self.budget_trend):
                out = out + (centred * (log_budget[..., None] - 1.0)) @ self.budget_trend
        return out

    def log_prior(self) -> torch.Tensor:
        """Gaussian log prior density of the trend coefficients (up to a constant)."""
        return -0.5 * (
            ((self.trend / TREND_PRIOR_STD) ** 2).sum()
            + ((self.budget_trend / self.change_std) ** 2).sum()
        )


class _ExactGP(gpytorch.models.ExactGP):
    """``k((x, b), (x', b')) = k_x(x, x') * (s_q + s_b * k_b(b, b'))``.

    A configuration's quality persists across budgets (the ``s_q`` part) and deviates from
    it smoothly in log budget (the ``s_b`` part), around a mean that rises in log budget.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        likelihood: gpytorch.likelihoods.Likelihood,
        groups: list[int],
        trend: Trend = "constant",
        n_hyper: int | None = None,
        change_std: float = TREND_CHANGE_STD,
    ) -> None:
        super().__init__(x, y, likelihood)
        n_x = len(groups)
        # Numeric hyperparameters (a group of one column, among the first ``n_hyper``
        # columns) get a trend; one-hot categoricals do not (a coefficient per category
        # overfits a 60-way choice), nor do the weight components (a trend in them ranked the
        # zoo hub at 0.43 instead of 0.48 without weights).
        sizes = np.bincount(groups) if groups else np.zeros(0, dtype=int)
        hyper = n_x if n_hyper is None else n_hyper
        columns = (
            []
            if trend == "constant"
            else [i for i, g in enumerate(groups[:hyper]) if sizes[g] == 1]
        )
        self.mean_module = _BudgetMean(columns, trend == "linear-budget", change_std)
        self.n_x = n_x
        self.x_kernel = _GroupedMatern(groups)
        self.persistent = gpytorch.kernels.ConstantKernel()
        self.budget_kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=2.5))

    def covariance(self, a: torch.Tensor, b: torch.Tensor, diag: bool = False) -> torch.Tensor:
        """The kernel between feature rows ``a`` and ``b``, dense (or its diagonal).

        Dense products: linear_operator's lazy product of kernels costs more than the
        elementwise product of these small matrices."""
        n = self.n_x
        k_x = self.x_kernel.forward(a[..., :n], b[..., :n], diag=diag)
        budget = self.budget_kernel.base_kernel.forward(
            a[..., n : n + 1], b[..., n : n + 1], diag=diag
        )
        scale = self.budget_kernel.outputscale.reshape(())
        return k_x * (self.persistent.constant.reshape(()) + scale * budget)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        covar = to_linear_operator(self.covariance(x, x))
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), covar)


class _Posterior:
    """The exact posterior of a fitted :class:`_ExactGP` on its training data, by one
    Cholesky factorisation (no Lanczos approximation of the variance, none of
    linear_operator's bookkeeping per query: a pruner decision predicts a handful of rows).
    ``noise`` replaces the fitted noise variance when given.

    Raises
    ------
    SurrogateFitError
        If the covariance is not positive definite even with jitter.
    """

    def __init__(self, model: _ExactGP, noise: float | None = None) -> None:
        self.model = model
        self.x = model.train_inputs[0]
        y = model.train_targets
        with torch.no_grad():
            k = model.covariance(self.x, self.x)
            nugget = model.likelihood.noise.reshape(()) if noise is None else noise
            k = k + nugget * torch.eye(len(y), dtype=k.dtype)
            self.chol = _cholesky(k)
            residual = (y - model.mean_module(self.x)).unsqueeze(-1)
            self.alpha = torch.cholesky_solve(residual, self.chol).squeeze(-1)

    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        model = self.model
        with torch.no_grad():
            cross = model.covariance(x, self.x)
            mean = model.mean_module(x) + cross @ self.alpha
            v = torch.linalg.solve_triangular(self.chol, cross.T, upper=False)
            var = model.covariance(x, x, diag=True) - (v**2).sum(0)
        mean_np = mean.numpy()
        std = var.clamp_min(1e-12).sqrt().numpy()
        if not (np.isfinite(mean_np).all() and np.isfinite(std).all()):
            raise SurrogateFitError("GP prediction is not finite.")
        return mean_np, std


def _cholesky(k: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of ``k``, with growing jitter if it is not numerically positive
    definite (as GPyTorch does)."""
    scale = float(k.diagonal().mean())
    for jitter in (0.0, 1e-8, 1e-6, 1e-4):
        chol, info = torch.linalg.cholesky_ex(
            k + jitter * scale * torch.eye(len(k), dtype=k.dtype)
        )
        if int(info) == 0 and bool(torch.isfinite(chol).all()):
            return chol
    raise SurrogateFitError("The GP covariance is not positive definite.")


def _map_loss(model: _ExactGP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What the MAP fit minimises: the negative log marginal likelihood of ``y`` plus the
    negative log prior (``model`` in training mode)."""
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    return -mll(model(x), y) * len(y) - _log_prior(model)


def _log_prior(model: _ExactGP) -> torch.Tensor:
    """Optuna GPSampler's priors: inverse squared lengthscales near 1, Gamma(2, 1) scales
    and a Gamma(1.1, 30) noise variance (small noise unless the data says otherwise); and a
    Gaussian prior on the mean's trend coefficients."""
    lengthscales = torch.cat(
        [
            model.x_kernel.lengthscale.reshape(-1),
            model.budget_kernel.base_kernel.lengthscale.reshape(-1),
        ]
    )
    inv_sq = 1.0 / lengthscales**2
    scales = torch.cat(
        [model.persistent.constant.reshape(-1), model.budget_kernel.outputscale.reshape(-1)]
    )
    noise = model.likelihood.noise.reshape(-1)[0]
    return (
        model.mean_module.log_prior()
        - (0.1 / inv_sq + 0.1 * inv_sq).sum()
        + ((2.0 - 1.0) * torch.log(scales) - scales).sum()
        + (1.1 - 1.0) * torch.log(noise)
        - 30.0 * noise
    )


def _initialise(model: _ExactGP, n_lengthscales: int, min_noise: float) -> None:
    """Set the hyperparameters a cold fit starts from."""
    model.x_kernel.lengthscale = torch.ones(n_lengthscales)
    model.budget_kernel.base_kernel.lengthscale = 1.0
    model.persistent.constant = torch.tensor(1.0)
    model.budget_kernel.outputscale = 0.5
    model.likelihood.noise = max(1e-2, 2.0 * min_noise)


def _map_fit(model: _ExactGP, x: torch.Tensor, y: torch.Tensor, max_iter: int) -> _ExactGP:
    """Fit ``model``'s hyperparameters by L-BFGS on :func:`_map_loss`; ``model`` in eval mode."""
    model.train()
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _map_loss(model, x, y)
        if not torch.isfinite(loss):
            raise ValueError("non-finite marginal likelihood")
        loss.backward()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpytorch.utils.warnings.NumericalWarning)
        optimizer.step(closure)
    model.eval()
    model.likelihood.eval()
    return model


def _set_values(params: dict[str, torch.nn.Parameter], values: dict[str, Any]) -> None:
    """Copy JSON ``values`` (name -> list of floats) into ``params``.

    Raises
    ------
    SurrogateFitError
        If a value is malformed (not a list of numbers of the parameter's size) or not finite.
    """
    with torch.no_grad():
        for name, param in params.items():
            value = values[name]
            if (
                not isinstance(value, list)
                or len(value) != param.numel()
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            ):
                raise SurrogateFitError(f"Malformed hyperparameter {name!r}.")
            tensor = torch.tensor(value, dtype=torch.float64).reshape(param.shape)
            if not bool(torch.isfinite(tensor).all()):
                raise SurrogateFitError(f"Hyperparameter {name!r} is not finite.")
            param.copy_(tensor)


def _check_plausible(model: _ExactGP, cold: _ExactGP, x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse ``model``'s hyperparameters if they explain ``y`` worse than ``cold`` (the
    start of a cold fit) does.

    Raises
    ------
    SurrogateFitError
        If they do, or the objective cannot be computed.
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", gpytorch.utils.warnings.NumericalWarning)
        model.train()
        cold.train()
        try:
            mine, start = float(_map_loss(model, x, y)), float(_map_loss(cold, x, y))
        except (RuntimeError, ValueError, NotPSDError) as err:
            raise SurrogateFitError(f"The hyperparameters do not fit the data: {err}") from err
    if not math.isfinite(mine) or mine > start:
        raise SurrogateFitError(
            "The hyperparameters explain the observations worse than an untrained GP "
            f"(negative log posterior {mine:.4g} > {start:.4g})."
        )


def _held_out_error(
    model: _ExactGP, feats: torch.Tensor, y: torch.Tensor, groups: np.ndarray
) -> tuple[float, float]:
    """Root mean squared error of ``model`` on the feature rows ``feats``, conditioned on all
    of them and, per group, on the other groups only; ``model``'s data is restored after."""
    train_x, train_y = model.train_inputs[0], model.train_targets
    errors = []
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", gpytorch.utils.warnings.NumericalWarning)
            warnings.simplefilter("ignore", gpytorch.utils.warnings.GPInputWarning)
            model.set_train_data(feats, y, strict=False)
            train = float(((model(feats).mean - y) ** 2).mean().sqrt())
            for g in np.unique(groups):
                out = torch.as_tensor(groups == g)
                if bool(out.all()):
                    continue
                model.set_train_data(feats[~out], y[~out], strict=False)
                errors.append(((model(feats[out]).mean - y[out]) ** 2).numpy())
    finally:
        model.set_train_data(train_x, train_y, strict=False)
    held = float(np.sqrt(np.concatenate(errors).mean())) if errors else float("nan")
    return train, held
