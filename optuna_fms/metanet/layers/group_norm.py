"""Group normalisation (``torch.nn.GroupNorm``)."""

from __future__ import annotations

from optuna_fms.metanet.layers.norm import Normalization


class GroupNorm(Normalization):
    """Group normalisation: its per-channel affine parameters as gamma and beta edges.

    See :class:`~optuna_fms.metanet.layers.Normalization`.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph, describe_module
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    >>> g = build_graph(net.state_dict(), describe_module(net))
    >>> g.num_nodes, g.num_edges  # 1 + 4 channels, 1 bias, gamma, beta; 36 + 4 + 4 + 4
    (8, 48)
    """

    modules = ("GroupNorm",)
