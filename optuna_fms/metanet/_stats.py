"""Fixed-size weight statistics and a small MLP on them: the fallback featuriser."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import math

import torch

from optuna_fms.metanet._subsample import _hash_subsample


NUM_DEPTH_SLOTS = 4
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
_PER_GROUP = 4 + len(QUANTILES)
STATS_DIM = _PER_GROUP * (NUM_DEPTH_SLOTS + 1) + 2
_QUANTILE_SAMPLE = 1 << 16
_CHUNK = 1 << 22


def weight_statistics(state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Summarise a state dict by a vector of ``STATS_DIM`` numbers, whatever the architecture.

    The floating-point tensors are split into groups: the weight tensors (2-D and more) in
    state-dict order into ``NUM_DEPTH_SLOTS`` slots of consecutive depth (tensor ``i`` of ``n``
    goes to slot ``floor(i * NUM_DEPTH_SLOTS / n)``), and all 1-D tensors (biases, norm
    parameters, running statistics) into one more group. Each group contributes
    ``log1p(count)``, the mean, standard deviation and mean absolute value (exact, accumulated in
    float64 in chunks) and the quantiles ``QUANTILES`` (from a sample of at most 65,536 values
    drawn by value hash, as in :func:`build_graph`, so the vector is invariant to permutations
    of hidden neurons); empty groups are zeros. Two global entries follow:
    ``log1p(number of parameters)`` and ``log1p(number of weight tensors)``.

    Parameters
    ----------
    state_dict:
        A network's ``state_dict()``; non-floating entries are ignored.

    Returns
    -------
    torch.Tensor
        Float32 vector of shape ``[STATS_DIM]``.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import STATS_DIM, weight_statistics
    >>> small = torch.nn.Linear(3, 2).state_dict()
    >>> big = torch.nn.Sequential(*[torch.nn.Conv2d(4, 4, 3) for _ in range(6)]).state_dict()
    >>> weight_statistics(small).shape == weight_statistics(big).shape == (STATS_DIM,)
    True
    """
    tensors = [
        t.detach()
        for t in state_dict.values()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 0
    ]
    matrices = [t for t in tensors if t.dim() >= 2]
    vectors = [t for t in tensors if t.dim() < 2]
    groups: list[list[torch.Tensor]] = [[] for _ in range(NUM_DEPTH_SLOTS)]
    for i, t in enumerate(matrices):
        groups[i * NUM_DEPTH_SLOTS // len(matrices)].append(t)
    groups.append(vectors)
    parts = [_group_statistics(g) for g in groups]
    total = sum(t.numel() for t in tensors)
    parts.append(torch.tensor([math.log1p(total), math.log1p(len(matrices))]))
    return torch.cat(parts).float()


def _group_statistics(group: list[torch.Tensor]) -> torch.Tensor:
    count = sum(t.numel() for t in group)
    if count == 0:
        return torch.zeros(_PER_GROUP)
    s1 = s2 = sabs = 0.0
    samples = []
    for t in group:
        flat = t.reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            c = flat[start : start + _CHUNK].double()
            s1 += float(c.sum())
            s2 += float((c * c).sum())
            sabs += float(c.abs().sum())
        k = max(1, round(_QUANTILE_SAMPLE * flat.numel() / count))
        idx = _hash_subsample(flat, k)
        sample = flat if idx is None else flat[idx]
        if sample.numel() == 0:  # every entry tied at the threshold: one repeated value
            sample = flat[:1]
        samples.append(sample.float())
    mean = s1 / count
    std = math.sqrt(max(s2 / count - mean * mean, 0.0))
    q = torch.quantile(torch.cat(samples), torch.tensor(QUANTILES))
    return torch.cat([torch.tensor([math.log1p(count), mean, std, sabs / count]), q.double()])


class StatsFeaturizer(torch.nn.Module):
    """A small MLP on :func:`weight_statistics`, with the forward contract of the GMN.

    The fallback featuriser for networks that :func:`build_graph` cannot express. The
    statistics go through ``asinh`` first (they mix counts in the tens with weights near zero).

    Parameters
    ----------
    out_dim:
        Size of the embedding.
    hidden:
        Width of the two hidden layers.
    in_dim:
        Size of the statistics vector (``STATS_DIM``).

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import StatsFeaturizer, weight_statistics
    >>> stats = [weight_statistics(torch.nn.Linear(3, 2).state_dict()) for _ in range(4)]
    >>> StatsFeaturizer(out_dim=16)(stats).shape
    torch.Size([4, 16])
    """

    def __init__(self, out_dim: int = 16, *, hidden: int = 32, in_dim: int = STATS_DIM) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(in_dim, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, out_dim),
        )

    def forward(self, stats: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Embed statistics vectors (a sequence of them or a ``[n, in_dim]`` tensor)."""
        device = next(self.parameters()).device
        if isinstance(stats, torch.Tensor):
            batch = stats
        elif len(stats) == 0:
            return torch.zeros(0, self.out_dim, device=device)
        else:
            batch = torch.stack(list(stats))
        return self.mlp(torch.asinh(batch.to(device=device, dtype=torch.float32)))
