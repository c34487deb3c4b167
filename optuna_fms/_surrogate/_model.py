"""The deep-kernel Gaussian process: a feature extractor feeding a GPyTorch ExactGP."""

from __future__ import annotations

from collections.abc import Sequence

import gpytorch
import torch
from torch import nn


MAX_CURVE_COLUMNS = 64
"""Most curve values a packed row holds: a row carries the latest ``MAX_CURVE_COLUMNS``
values of the curve observed before its budget. The rows, and the cost of a deep-kernel fit
or query, do not grow with ``max_steps`` (DyHPO read the whole curve, with budgets of at
most about 50 epochs; a report at step ``10**9`` under another pruner made the rows that
wide)."""


class RowLayout:
    """Column layout of the packed input rows ``[x | budget | curve | mask | ckpt]``.

    GPyTorch's ExactGP takes one tensor per row, so every input of the feature extractor is
    packed side by side; the layout says where each part lives.

    Parameters
    ----------
    x_dim:
        Encoded hyperparameter columns.
    curve_len:
        The longest curve a row may be asked about (``max_steps - 1`` for a model that reads
        curves, ``0`` for one that does not). Rows hold the latest
        ``min(curve_len, MAX_CURVE_COLUMNS)`` values of it (:attr:`curve_len`).
    x_groups, x_names:
        The parameter each encoded column belongs to, and the parameters' names.
    max_steps:
        The full budget (default ``curve_len + 1``).
    """

    def __init__(
        self,
        x_dim: int,
        curve_len: int,
        x_groups: Sequence[int] | None = None,
        x_names: Sequence[str] | None = None,
        max_steps: int | None = None,
    ) -> None:
        self.x_dim = x_dim
        # The full budget; the curve columns hold at most max_steps - 1 values (fewer, or
        # none, for a model that reads no curve), and never more than MAX_CURVE_COLUMNS:
        # the rows' width does not depend on the budget.
        self.max_steps = max_steps if max_steps is not None else curve_len + 1
        self.curve_len = min(curve_len, MAX_CURVE_COLUMNS)
        # Which parameter each encoded column belongs to (the one-hot columns of a
        # categorical share one), and the parameters' names; one per column by default.
        self.x_groups = list(x_groups) if x_groups is not None else list(range(x_dim))
        self.x_names = list(x_names) if x_names is not None else [f"x{i}" for i in range(x_dim)]
        self.budget = x_dim
        self.curve = slice(x_dim + 1, x_dim + 1 + self.curve_len)
        self.mask = slice(self.curve.stop, self.curve.stop + self.curve_len)
        self.ckpt = self.mask.stop
        self.width = self.ckpt + 1


class FeatureExtractor(nn.Module):
    """DyHPO's feature extractor, with one place for a weight embedding to join.

    The hyperparameters (encoded), the budget fraction and a Conv1d summary of the learning
    curve so far are concatenated, together with an optional embedding of the trial's latest
    checkpoint, and mapped by an MLP to the space the GP kernel works in.

    Parameters
    ----------
    layout:
        Where each input lives in a packed row.
    out_dim:
        Size of the learned representation.
    weight_encoder:
        Optional module mapping checkpoint indices to an embedding of size ``weight_dim``
        (may also be attached after construction, e.g. to keep it in float32).
    weight_dim:
        Size of the weight embedding (0 when there is none).
    """

    def __init__(
        self,
        layout: RowLayout,
        *,
        out_dim: int = 16,
        weight_encoder: nn.Module | None = None,
        weight_dim: int = 0,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.curve_conv = nn.Sequential(
            nn.Conv1d(2, 8, kernel_size=3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool1d(1)
        )
        self.weight_encoder = weight_encoder
        self.weight_dim = weight_dim
        in_dim = layout.x_dim + 1 + 8 + self.weight_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, out_dim)
        )
        # The hyperparameter inputs start with zero weights: a one-hot column of a category no
        # trial has used then contributes nothing (an unseen category looks average) instead of
        # a random offset from its untrained initial weights. Training moves the others.
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        first.weight.data[:, : layout.x_dim] = 0.0

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        lay = self.layout
        lead = rows.shape[:-1]
        flat = rows.reshape(-1, lay.width)
        curve = torch.stack([flat[:, lay.curve], flat[:, lay.mask]], dim=1)
        if lay.curve_len > 0:
            curve_feat = self.curve_conv(curve).squeeze(-1)
        else:
            curve_feat = flat.new_zeros(flat.shape[0], 8)
        parts = [flat[:, : lay.x_dim], flat[:, lay.budget : lay.budget + 1], curve_feat]
        if self.weight_encoder is not None:
            parts.append(self.weight_encoder(flat[:, lay.ckpt]).to(flat.dtype))
        return self.mlp(torch.cat(parts, dim=-1)).reshape(*lead, -1)


class DeepKernelGP(gpytorch.models.ExactGP):
    """Exact GP with a Matern-5/2 kernel on learned features (deep kernel learning).

    Parameters
    ----------
    train_x, train_y:
        Packed rows and standardised targets.
    likelihood:
        A Gaussian likelihood.
    extractor:
        The feature extractor trained jointly with the kernel.
    """

    def __init__(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        likelihood: gpytorch.likelihoods.GaussianLikelihood,
        extractor: FeatureExtractor,
    ) -> None:
        super().__init__(train_x, train_y, likelihood)
        self.extractor = extractor
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=2.5))

    def forward(self, rows: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        z = self.extractor(rows)
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))
