"""Fit and query the deep-kernel GP, recovering from numerical failures."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import contextmanager
import copy
import math
from typing import Any
from typing import ClassVar
import warnings

import gpytorch
import numpy as np
import torch

from optuna_fms._surrogate._diagnostics import Diagnostics
from optuna_fms._surrogate._fitted import ModelContext
from optuna_fms._surrogate._model import DeepKernelGP
from optuna_fms._surrogate._model import FeatureExtractor
from optuna_fms._surrogate._model import RowLayout
from optuna_fms._surrogate._weights import EMBED_DIM
from optuna_fms._surrogate._weights import CheckpointEncoder


class SurrogateFitError(RuntimeError):
    """Raised when the GP cannot be fitted even after jitter and a restart from scratch."""


@contextmanager
def _single_thread() -> Iterator[None]:
    # Small GP fits are dominated by thread start-up and contention; one thread is fastest
    # (the same reasoning as Optuna's GPSampler).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class Surrogate:
    """A deep-kernel GP trained on the negative exact marginal log likelihood.

    The first fit (and any fit after a failure or a change of input layout) trains from
    scratch for ``n_scratch_epochs``; later fits warm-start from the previous weights for
    ``n_warm_epochs`` (DyHPO's schedule). Full-batch Adam.

    Parameters
    ----------
    seed:
        Seeds the initial weights; the global torch RNG is left untouched.
    lr:
        Adam's learning rate.
    n_scratch_epochs, n_warm_epochs:
        Epochs for a fit from scratch and for a warm-started refit.
    weight_encoder_factory:
        Optional ``() -> (module, dim)`` that builds the checkpoint encoder joined into the
        feature extractor (see :class:`~optuna_fms._surrogate._model.FeatureExtractor`).

    Examples
    --------
    >>> import numpy as np
    >>> from optuna_fms._surrogate._model import RowLayout
    >>> lay = RowLayout(x_dim=1, curve_len=0)
    >>> rows = np.random.RandomState(0).rand(20, lay.width)
    >>> s = Surrogate(seed=0, n_scratch_epochs=20)
    >>> s.fit(lay, rows, np.sin(6 * rows[:, 0]))
    >>> mean, std = s.predict(rows[:3])
    >>> mean.shape, bool((std > 0).all())
    ((3,), True)
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        lr: float = 1e-2,
        n_scratch_epochs: int = 300,
        n_warm_epochs: int = 50,
        weight_encoder_factory: Callable[[], tuple[torch.nn.Module, int]] | None = None,
    ) -> None:
        self._seed = seed
        self._lr = lr
        self._n_scratch = n_scratch_epochs
        self._n_warm = n_warm_epochs
        self._weight_encoder_factory = weight_encoder_factory
        self._model: DeepKernelGP | None = None
        self._layout_key: tuple[int, int] | None = None
        self._n_fits = 0

    name: ClassVar[str] = "deep-kernel"
    reads_curves: ClassVar[bool] = True
    shares_training: ClassVar[bool] = False
    reads_related: ClassVar[bool] = False
    default_retrain_growth: ClassVar[float] = 0.0
    sampler_options: ClassVar[Mapping[str, str]] = {
        "lr": "lr",
        "n_scratch_epochs": "n_scratch_epochs",
        "n_warm_epochs": "n_warm_epochs",
    }

    @classmethod
    def build(cls, context: ModelContext, **kwargs: Any) -> Surrogate:
        """A deep kernel whose feature extractor embeds the checkpoints of the context's
        weight bank (trained with it; a pretrained metanetwork only with ``fine_tune``). It
        reads no forecasts of earlier studies."""
        factory = None
        bank = context.bank
        if bank is not None:

            def factory() -> tuple[torch.nn.Module, int]:
                return CheckpointEncoder(bank, fine_tune=context.fine_tune), EMBED_DIM

        return cls(seed=context.seed, weight_encoder_factory=factory, **kwargs)

    def report(
        self, rows: np.ndarray, y: np.ndarray, owner: np.ndarray, n_configurations: int
    ) -> Diagnostics:
        """Training error and fitted noise (no held-out error: it would need a refit per
        configuration; no lengthscales: the kernel reads learned features)."""
        mean, _ = self.predict(rows)
        train = math.sqrt(float(((mean - y) ** 2).mean()))
        noise = float("nan")
        if self._model is not None:
            noise = float(self._model.likelihood.noise.item())
        return Diagnostics(self.name, n_configurations, len(y), noise, train, float("nan"))

    def fit(self, layout: RowLayout, rows: np.ndarray, y: np.ndarray) -> None:
        """Fit on packed ``rows`` and standardised targets ``y``.

        Raises
        ------
        SurrogateFitError
            If training fails with and without extra jitter and from scratch.
        """
        x_t = torch.as_tensor(rows, dtype=torch.float64)
        y_t = torch.as_tensor(y, dtype=torch.float64)
        key = (layout.x_dim, layout.curve_len)
        warm = self._model is not None and self._layout_key == key
        attempts = (
            [(warm, 1e-6), (False, 1e-6), (False, 1e-3)]
            if warm
            else [
                (False, 1e-6),
                (False, 1e-3),
            ]
        )
        last_error: Exception | None = None
        with _single_thread():
            for warm_start, jitter in attempts:
                try:
                    model = self._train(layout, x_t, y_t, warm_start, jitter)
                except (RuntimeError, ValueError, gpytorch.utils.errors.NotPSDError) as err:
                    last_error = err
                    continue
                self._model, self._layout_key, self._jitter = model, key, jitter
                self._n_fits += 1
                return
        self._model = None
        raise SurrogateFitError(f"Surrogate fit failed: {last_error}") from last_error

    def _new_model(self, layout: RowLayout, x: torch.Tensor, y: torch.Tensor) -> DeepKernelGP:
        seed = 0 if self._seed is None else self._seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + self._n_fits)
            encoder, dim = (
                self._weight_encoder_factory() if self._weight_encoder_factory else (None, 0)
            )
            extractor = FeatureExtractor(layout, weight_dim=dim)
            likelihood = gpytorch.likelihoods.GaussianLikelihood(
                noise_constraint=gpytorch.constraints.GreaterThan(1e-4)
            )
            model = DeepKernelGP(x, y, likelihood, extractor).double()
            # The checkpoint encoder joins after the cast: it stays in float32.
            model.extractor.weight_encoder = encoder
            return model

    def _train(
        self, layout: RowLayout, x: torch.Tensor, y: torch.Tensor, warm: bool, jitter: float
    ) -> DeepKernelGP:
        if warm:
            assert self._model is not None
            model = copy.deepcopy(self._model)
            model.set_train_data(x, y, strict=False)
            epochs = self._n_warm
        else:
            model = self._new_model(layout, x, y)
            epochs = self._n_scratch
        model.train()
        model.likelihood.train()
        encoder: Any = model.extractor.weight_encoder  # a CheckpointEncoder or None
        enc_params = set() if encoder is None else {id(p) for p in encoder.parameters()}
        optimizer = torch.optim.Adam(
            [p for p in model.parameters() if id(p) not in enc_params], lr=self._lr
        )
        enc_optimizer = None
        if encoder is not None:
            enc_optimizer = torch.optim.Adam(encoder.parameters(), lr=self._lr)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
        with gpytorch.settings.cholesky_jitter(double_value=jitter), warnings.catch_warnings():
            warnings.simplefilter("ignore", gpytorch.utils.warnings.NumericalWarning)
            for epoch in range(epochs):
                grad_pass = encoder is not None and epoch % encoder.grad_every == 0
                if encoder is not None:
                    encoder.grad_pass = grad_pass
                optimizer.zero_grad()
                if enc_optimizer is not None:
                    enc_optimizer.zero_grad()
                loss = -mll(model(x), y)
                if not torch.isfinite(loss):
                    raise ValueError("non-finite marginal log likelihood")
                loss.backward()
                optimizer.step()
                if enc_optimizer is not None and grad_pass:
                    enc_optimizer.step()
        if encoder is not None:
            encoder.grad_pass = False
            encoder.invalidate()
        model.eval()
        model.likelihood.eval()
        return model

    def condition(self, rows: np.ndarray, y: np.ndarray) -> None:
        """Condition the trained GP on new data without training (an exact posterior update).

        Raises
        ------
        SurrogateFitError
            If there is no trained model, or the posterior is not finite on the new data.
        """
        if self._model is None:
            raise SurrogateFitError("No trained surrogate to condition.")
        x_t = torch.as_tensor(rows, dtype=torch.float64)
        y_t = torch.as_tensor(y, dtype=torch.float64)
        self._model.set_train_data(x_t, y_t, strict=False)
        self.predict(rows[:1])  # Builds the posterior cache now; raises if it is not finite.

    def predict(self, rows: np.ndarray, *, decide: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation (standardised units) of the latent score
        (the same posterior for decisions, ``decide=True``, and forecasts)."""
        if self._model is None:
            raise RuntimeError("The surrogate has not been fitted.")
        return _posterior(self._model, torch.as_tensor(rows, dtype=torch.float64), self._jitter)


def _posterior(
    model: gpytorch.models.ExactGP, x: torch.Tensor, jitter: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std of an exact GP in eval mode at ``x`` (one thread, no grad).

    Raises
    ------
    SurrogateFitError
        If the posterior is not finite.
    """
    with (
        _single_thread(),
        torch.no_grad(),
        gpytorch.settings.fast_pred_var(),
        gpytorch.settings.cholesky_jitter(double_value=jitter),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", gpytorch.utils.warnings.NumericalWarning)
        post = model(x)
        mean = post.mean.numpy()
        std = post.variance.clamp_min(1e-12).sqrt().numpy()
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise SurrogateFitError("Surrogate prediction is not finite.")
    return mean, std
