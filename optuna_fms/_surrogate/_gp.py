"""A GP that is right with few curves: ARD Matern-5/2 with priors over (x, log budget, weights).

The deep-kernel GP learns ~10k feature-extractor weights from 4-50 configurations and
overfits. This model has one lengthscale per input, an output scale, a noise and a constant
mean, with the priors Optuna's GPSampler puts on them, fitted by L-BFGS on the marginal
likelihood plus the log prior (a MAP fit), warm-started from the previous fit.

Its inputs, read from the same packed rows as the deep kernel's:

- the encoded hyperparameters (``[0, 1]`` each, one-hot categoricals);
- the budget on a log scale, ``log(b) / log(max_steps)`` in ``[0, 1]``;
- with checkpoint features, a few standardised principal components of the weight embedding
  of the row's weights (fixed per fit: no feature is learned from 5-50 configurations).

It reads no learning curve: a configuration's observed values are training rows at their
budgets, and its final score is the posterior at the full budget given them (all queries are
rows of the kind the model is trained on: a configuration at a budget).

Two posteriors share the fitted hyperparameters. Forecasts read the one with the fitted noise,
at least :data:`MIN_NOISE`: with 20-70 configurations, mostly at one step, an additive trend
plus a Matern kernel cannot represent every observation, and a nugget that absorbs the
misfit ranks the final scores better than interpolating them. Decisions (expected
improvements) read one conditioned with :data:`DECISION_NOISE`, which pins a running
trial's latent score to its own observations: with the nugget there, a trial's next step
kept a high expected improvement however it had done, and the pruner ran a few trials to
the full budget instead of looking at many configurations (docs/experiments.md, "fourth
pass").
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import math
from typing import Any
from typing import ClassVar

import gpytorch
from linear_operator.utils.errors import NotPSDError
import numpy as np
import torch

from optuna_fms._surrogate._diagnostics import Diagnostics
from optuna_fms._surrogate._fitted import ModelContext
from optuna_fms._surrogate._gp_model import TREND_CHANGE_STD
from optuna_fms._surrogate._gp_model import GPDiagnostics
from optuna_fms._surrogate._gp_model import Trend
from optuna_fms._surrogate._gp_model import _check_plausible
from optuna_fms._surrogate._gp_model import _ExactGP
from optuna_fms._surrogate._gp_model import _held_out_error
from optuna_fms._surrogate._gp_model import _initialise
from optuna_fms._surrogate._gp_model import _map_fit
from optuna_fms._surrogate._gp_model import _Posterior
from optuna_fms._surrogate._gp_model import _set_values
from optuna_fms._surrogate._model import RowLayout
from optuna_fms._surrogate._surrogate import SurrogateFitError
from optuna_fms._surrogate._surrogate import _single_thread


MIN_NOISE = 0.1
"""Lower bound of the fitted noise variance (standardised units)."""
DECISION_NOISE = 1e-5
"""Noise variance of the posterior that decisions read (standardised units)."""
N_WEIGHT_COMPONENTS = 2
"""Principal components of the weight embedding the kernel reads."""


class GPSurrogate:
    """ARD Matern-5/2 GP with priors on (hyperparameters, log budget, weight components).

    Same interface as :class:`~optuna_fms._surrogate.Surrogate`: ``fit`` on packed rows and
    standardised targets, ``condition`` on new rows without refitting the hyperparameters,
    ``predict`` posterior mean and std.

    Parameters
    ----------
    seed:
        Unused by the fit (deterministic); kept for the common interface.
    max_iter:
        L-BFGS iterations per fit.
    min_noise:
        Lower bound of the fitted noise variance (standardised units).
    embed:
        Optional ``bank indices -> (n, k) array``: the weight embedding of each row's weights
        (``-1``: none). The kernel reads its first principal components.
    trend:
        The prior mean in the hyperparameters (:data:`Trend`). The default,
        ``"linear-budget"``, ranked configurations best over both benchmark hubs
        (docs/experiments.md); ``"constant"`` is Optuna GPSampler's choice.
    ignore:
        Parameter names the kernel does not read (they are still sampled), e.g. a model-zoo
        member that ``embed`` describes by its start weights instead of an opaque category.
    decision_noise:
        Noise variance of the posterior that decisions read (``predict(..., decide=True)``:
        expected improvements), ``None`` for the fitted one. Forecasts always use the fitted
        noise. A small value pins a trial's latent score to its own observations, so that
        whether its next step is worth running does not depend on the nugget.
    trend_change_std:
        Prior standard deviation of the ``"linear-budget"`` trend's change along the budget
        (:data:`TREND_CHANGE_STD`).
    related:
        Optional ``(layout, rows) -> (n,) array``: a forecast of each row from related tasks
        (:meth:`optuna_fms._warm_start.WarmStart.feature`), read as one more numeric input
        named ``"warm_start"``, with a lengthscale and a trend coefficient like a
        hyperparameter's.
    related_trend:
        Give the related forecast a trend coefficient (else it is a kernel input only).
    weights_trend:
        Give the weight components a trend coefficient too (for an embedding that predicts
        quality, such as a pretrained metanetwork's).

    Examples
    --------
    >>> import numpy as np
    >>> lay = RowLayout(x_dim=1, curve_len=0, max_steps=10)
    >>> rng = np.random.RandomState(0)
    >>> rows = np.zeros((30, lay.width))
    >>> rows[:, 0] = rng.rand(30)
    >>> rows[:, lay.budget] = rng.randint(1, 11, size=30) / 10
    >>> y = np.sin(6 * rows[:, 0]) * rows[:, lay.budget]
    >>> gp = GPSurrogate()
    >>> gp.fit(lay, rows, (y - y.mean()) / y.std())
    >>> mean, std = gp.predict(rows[:3])
    >>> mean.shape, bool((std > 0).all()), gp.diagnostics().n_rows
    ((3,), True, 30)
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        max_iter: int = 60,
        min_noise: float = MIN_NOISE,
        embed: Callable[[np.ndarray], np.ndarray] | None = None,
        trend: Trend = "linear-budget",
        ignore: Sequence[str] = (),
        decision_noise: float | None = DECISION_NOISE,
        trend_change_std: float = TREND_CHANGE_STD,
        related: Callable[[RowLayout, np.ndarray], np.ndarray] | None = None,
        weights_trend: bool = False,
        related_trend: bool = True,
    ) -> None:
        if not trend_change_std > 0:
            raise ValueError(f"trend_change_std must be > 0, got {trend_change_std}.")
        self._change_std = trend_change_std
        if decision_noise is not None and not decision_noise > 0:
            raise ValueError(f"decision_noise must be > 0 or None, got {decision_noise}.")
        self._decision_noise = decision_noise
        self._ignore = frozenset(ignore)
        if trend not in ("constant", "linear", "linear-budget"):
            raise ValueError(
                f"trend must be 'constant', 'linear' or 'linear-budget', not {trend!r}."
            )
        self._trend: Trend = trend
        self._seed = seed
        self._max_iter = max_iter
        self._min_noise = min_noise
        self._embed = embed
        self._related = related
        self._weights_trend = weights_trend
        self._related_trend = related_trend
        self._model: _ExactGP | None = None
        self._posteriors: dict[bool, _Posterior] = {}
        self._layout: RowLayout | None = None
        self._pca: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._names: list[str] = []
        self._groups: list[int] = []
        self._n_hyper = 0
        self._n_fits = 0

    name: ClassVar[str] = "gp"
    reads_curves: ClassVar[bool] = False
    shares_training: ClassVar[bool] = True
    reads_related: ClassVar[bool] = True
    default_retrain_growth: ClassVar[float] = 0.2
    sampler_options: ClassVar[Mapping[str, str]] = {"gp_trend": "trend", "start_params": "ignore"}

    @classmethod
    def build(cls, context: ModelContext, **kwargs: Any) -> GPSurrogate:
        """A GP reading the fixed embedding of the context's weight bank and the forecasts of
        earlier studies (it trains no metanetwork: ``fine_tune`` does not apply)."""
        embed = context.bank.embedding if context.bank is not None else None
        return cls(seed=context.seed, embed=embed, related=context.related, **kwargs)

    def report(
        self, rows: np.ndarray, y: np.ndarray, owner: np.ndarray, n_configurations: int
    ) -> Diagnostics:
        """The fitted hyperparameters (:meth:`diagnostics`) and the errors
        (:meth:`held_out_error`)."""
        d = self.diagnostics()
        train, held = self.held_out_error(rows, y, owner)
        return Diagnostics(
            self.name,
            n_configurations,
            d.n_rows,
            d.noise,
            train,
            held,
            dict(d.lengthscales),
            dict(d.trend),
        )

    # ------------------------------------------------------------------ features
    def _features(self, rows: np.ndarray) -> np.ndarray:
        """``[x | related forecast | weight components | log budget]`` of packed rows."""
        lay = self._layout
        assert lay is not None
        max_steps = lay.max_steps
        frac = np.clip(rows[:, lay.budget], 1e-12, None)
        log_budget = 1.0 + np.log(frac) / math.log(max_steps) if max_steps > 1 else frac
        parts = [rows[:, self._columns(lay)]]
        if self._related is not None:
            parts.append(np.asarray(self._related(lay, rows), dtype=float)[:, None])
        if self._pca is not None:
            assert self._embed is not None
            mean, basis, scale = self._pca
            emb = self._embed(rows[:, lay.ckpt])
            parts.append(((emb - mean) @ basis) / scale)
        parts.append(log_budget[:, None])
        return np.concatenate(parts, axis=1)

    def _fit_pca(self, rows: np.ndarray) -> None:
        """Principal components of the weight embeddings of the training rows' weights."""
        self._pca = None
        if self._embed is None:
            return
        lay = self._layout
        assert lay is not None
        idx = np.unique(rows[:, lay.ckpt])
        idx = idx[idx >= 0]
        if len(idx) < 3:
            return
        emb = self._embed(idx)
        mean = emb.mean(0)
        _, sing, vt = np.linalg.svd(emb - mean, full_matrices=False)
        k = int(min(N_WEIGHT_COMPONENTS, (sing > 1e-8 * max(sing[0], 1e-30)).sum()))
        if k == 0:
            return
        basis = vt[:k].T
        proj = (emb - mean) @ basis
        # Scale each component to the unit interval of the training weights, like the
        # hyperparameters, so that the lengthscale prior means the same for every input.
        span = proj.max(0) - proj.min(0)
        self._pca = (mean, basis, np.where(span > 1e-12, span, 1.0))

    def _columns(self, layout: RowLayout) -> list[int]:
        """The encoded hyperparameter columns the kernel reads (all but ``ignore``'s)."""
        return [i for i, g in enumerate(layout.x_groups) if layout.x_names[g] not in self._ignore]

    def _set_inputs(self, layout: RowLayout, x: torch.Tensor) -> None:
        """Parameter group and name of each kernel input of the feature rows ``x``."""
        columns = self._columns(layout)
        n_related = int(self._related is not None)
        n_pc = x.shape[1] - len(columns) - n_related - 1
        kept = sorted({layout.x_groups[i] for i in columns})
        renumber = {g: k for k, g in enumerate(kept)}
        self._groups = [renumber[layout.x_groups[i]] for i in columns]
        self._groups += [len(kept) + i for i in range(n_related + n_pc)]
        self._names = [layout.x_names[g] for g in kept] + ["warm_start"] * n_related
        self._names += [f"weights_pc{i}" for i in range(n_pc)]
        # The trend reads the first ``n_hyper`` inputs: the hyperparameters, then the related
        # forecast and the weight components where they get a trend too.
        n_related_trend = n_related if self._related_trend else 0
        self._n_hyper = len(columns) + n_related_trend
        if self._weights_trend and n_related_trend == n_related:
            self._n_hyper += n_pc

    def _new_model(self, x: torch.Tensor, y: torch.Tensor) -> _ExactGP:
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(self._min_noise)
        )
        return _ExactGP(
            x, y, likelihood, self._groups, self._trend, self._n_hyper, self._change_std
        ).double()

    def _settings(self) -> dict[str, Any]:
        """What makes two GPs' hyperparameters interchangeable besides their inputs."""
        return {
            "trend": self._trend,
            "min_noise": self._min_noise,
            "ignore": sorted(self._ignore),
            "trend_change_std": self._change_std,
            "related": self._related is not None,
            "weights_trend": self._weights_trend,
            "related_trend": self._related_trend,
        }

    # ------------------------------------------------------------------ fit
    def fit(self, layout: RowLayout, rows: np.ndarray, y: np.ndarray) -> None:
        """Fit the hyperparameters (MAP) on packed ``rows`` and standardised targets ``y``.

        Raises
        ------
        SurrogateFitError
            If the fit fails from the warm start and from the default initialisation.
        """
        warm = self._model if self._layout is not None and _same(self._layout, layout) else None
        self._layout = layout
        self._fit_pca(rows)
        x, yt = self._unique_rows(rows, y)
        self._set_inputs(layout, x)
        if warm is not None and warm.train_inputs[0].shape[1] != x.shape[1]:
            warm = None
        last: Exception | None = None
        with _single_thread():
            for start in ([warm] if warm is not None else []) + [None]:
                try:
                    self._model = self._train(x, yt, start)
                    self._n_fits += 1
                    return
                except (RuntimeError, ValueError, NotPSDError) as err:
                    last = err
        self._model = None
        raise SurrogateFitError(f"GP fit failed: {last}") from last

    def _unique_rows(self, rows: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # The packed rows repeat each configuration's latest observation with an empty curve
        # (for the deep kernel); this model reads no curve, so those rows are duplicates.
        feats = self._features(rows)
        _, keep = np.unique(np.column_stack([feats, y]).round(12), axis=0, return_index=True)
        keep = np.sort(keep)
        x = torch.as_tensor(feats[keep], dtype=torch.float64)
        return x, torch.as_tensor(y[keep], dtype=torch.float64)

    def _initialise(self, model: _ExactGP) -> None:
        """The hyperparameters a cold fit starts from."""
        _initialise(model, max(self._groups, default=0) + 1, self._min_noise)

    def _train(self, x: torch.Tensor, y: torch.Tensor, warm: _ExactGP | None) -> _ExactGP:
        model = self._new_model(x, y)
        if warm is not None:
            model.load_state_dict(warm.state_dict(), strict=False)
            model.set_train_data(x, y, strict=False)
        else:
            self._initialise(model)
        return _map_fit(model, x, y, self._max_iter)

    # ------------------------------------------------------------------ query
    def condition(self, rows: np.ndarray, y: np.ndarray) -> None:
        """Condition the fitted GP on new data without refitting its hyperparameters.

        Raises
        ------
        SurrogateFitError
            If there is no fitted model, or the posterior is not finite on the new data.
        """
        if self._model is None:
            raise SurrogateFitError("No fitted GP to condition.")
        x, yt = self._unique_rows(rows, y)
        if x.shape[1] != self._model.train_inputs[0].shape[1]:
            raise SurrogateFitError("The inputs changed shape; the GP must be refitted.")
        self._model.set_train_data(x, yt, strict=False)
        self.predict(rows[:1])

    def predict(self, rows: np.ndarray, *, decide: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation (standardised units) of the latent score;
        ``decide=True`` for the posterior decisions read (see ``decision_noise``).

        Raises
        ------
        SurrogateFitError
            If the posterior cannot be computed or is not finite.
        """
        model = self._model
        if model is None:
            raise RuntimeError("The GP has not been fitted.")
        noise = self._decision_noise if decide else None
        try:
            post = self._posteriors.get(noise is not None)
            if post is None or post.model is not model or post.x is not model.train_inputs[0]:
                with _single_thread():
                    post = self._posteriors[noise is not None] = _Posterior(model, noise)
            with _single_thread():
                return post(torch.as_tensor(self._features(rows), dtype=torch.float64))
        except (
            torch.linalg.LinAlgError,
            np.linalg.LinAlgError,
            NotPSDError,
        ) as err:  # a factorisation failed: the caller falls back as for a failed fit
            raise SurrogateFitError(f"The GP posterior cannot be computed: {err}") from err

    def held_out_error(
        self, rows: np.ndarray, y: np.ndarray, groups: np.ndarray
    ) -> tuple[float, float]:
        """Root mean squared error (standardised units) on the training rows, and on each
        group's rows when the GP is conditioned on the other groups only (leave one
        configuration out; the hyperparameters stay those of the full fit)."""
        if self._model is None:
            raise RuntimeError("The GP has not been fitted.")
        feats = torch.as_tensor(self._features(rows), dtype=torch.float64)
        yt = torch.as_tensor(y, dtype=torch.float64)
        with _single_thread():
            return _held_out_error(self._model, feats, yt, groups)

    def diagnostics(self) -> GPDiagnostics:
        """Noise, output scale and one lengthscale per input of the current fit."""
        if self._model is None:
            raise RuntimeError("The GP has not been fitted.")
        model = self._model
        lengthscale = model.x_kernel.lengthscale.detach().reshape(-1).tolist()
        lengthscales = dict(zip(self._names, lengthscale))
        lengthscales["log_budget"] = float(model.budget_kernel.base_kernel.lengthscale.item())
        return GPDiagnostics(
            noise=float(model.likelihood.noise.item()),
            persistent_scale=float(model.persistent.constant.item()),
            budget_scale=float(model.budget_kernel.outputscale.item()),
            budget_slope=float(model.mean_module.slope.item()),
            lengthscales=lengthscales,
            n_rows=int(model.train_inputs[0].shape[0]),
            trend=self._trend_at_full_budget(),
        )

    def _trend_at_full_budget(self) -> dict[str, float]:
        assert self._model is not None
        mean = self._model.mean_module
        names = [self._names[self._groups[i]] for i in mean._trend.tolist()]
        return dict(zip(names, mean.trend.detach().tolist()))

    # ------------------------------------------------------------------ sharing
    def hyperparameters(self) -> dict[str, Any]:
        """The fitted hyperparameters as JSON-serialisable data, for
        :meth:`load_hyperparameters` in another process: the inputs' names, the prior mean's
        form and every raw (unconstrained) parameter of the model as a list of floats."""
        if self._model is None:
            raise RuntimeError("The GP has not been fitted.")
        return {
            "names": list(self._names),
            "settings": self._settings(),
            "values": {
                name: [float(v) for v in p.detach().reshape(-1).tolist()]
                for name, p in self._model.named_parameters()
            },
        }

    def load_hyperparameters(
        self, layout: RowLayout, rows: np.ndarray, y: np.ndarray, hyperparameters: Any
    ) -> None:
        """Condition a GP with the given hyperparameters (from :meth:`hyperparameters` of a
        fit on the same kind of rows) on ``rows`` and ``y``, without fitting: what a worker
        does with another worker's training. A later :meth:`fit` warm-starts from them.

        Raises
        ------
        SurrogateFitError
            If ``hyperparameters`` do not match this model and layout (input names, prior
            mean, parameter names and sizes), are not finite, or give a posterior that is
            not finite. The surrogate is then left as it was.
        """
        saved = dict(vars(self))
        try:
            with _single_thread():
                self._load_hyperparameters(layout, rows, y, hyperparameters)
        except (SurrogateFitError, RuntimeError, ValueError, TypeError) as err:
            vars(self).update(saved)
            if isinstance(err, SurrogateFitError):
                raise
            raise SurrogateFitError(f"Could not load the hyperparameters: {err}") from err

    def _load_hyperparameters(
        self, layout: RowLayout, rows: np.ndarray, y: np.ndarray, hyperparameters: Any
    ) -> None:
        if (
            not isinstance(hyperparameters, dict)
            or hyperparameters.get("settings") != self._settings()
        ):
            raise SurrogateFitError("The hyperparameters are of a GP with other settings.")
        values = hyperparameters.get("values")
        self._layout = layout
        self._fit_pca(rows)
        x, yt = self._unique_rows(rows, y)
        self._set_inputs(layout, x)
        if hyperparameters.get("names") != self._names or not isinstance(values, dict):
            raise SurrogateFitError("The hyperparameters are for other inputs.")
        model = self._new_model(x, yt)
        params = dict(model.named_parameters())
        if set(values) != set(params):
            raise SurrogateFitError("The hyperparameters name other parameters than this GP's.")
        _set_values(params, values)
        self._check_plausible(model, x, yt)
        model.eval()
        model.likelihood.eval()
        self._model = model
        self._posteriors = {}
        self.predict(rows[:1])

    def _check_plausible(self, model: _ExactGP, x: torch.Tensor, y: torch.Tensor) -> None:
        """Refuse hyperparameters that explain ``y`` worse than the start of a cold fit.

        Another worker's training, fitted on a part of these observations, explains them
        far better than where a fit starts from; finite values that no fit on this data
        would reach (a planted record: tau 0.93 -> -0.25, with std 0) explain them worse.
        """
        cold = self._new_model(x, y)
        self._initialise(cold)
        _check_plausible(model, cold, x, y)


def _same(a: RowLayout, b: RowLayout) -> bool:
    return (a.x_dim, a.curve_len, a.max_steps) == (b.x_dim, b.curve_len, b.max_steps)
