"""Batch normalisation (``torch.nn.BatchNorm1d`` / ``2d`` / ``3d``, ``SyncBatchNorm``)."""

from __future__ import annotations

from optuna_fms.metanet.layers.norm import Normalization


class BatchNorm(Normalization):
    """Batch normalisation: running statistics folded into the gamma and beta edges.

    See :class:`~optuna_fms.metanet.layers.Normalization`; without affine parameters
    (``affine=False``) the statistics alone give the scale and the shift.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph, describe_module
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    >>> g = build_graph(net.state_dict(), describe_module(net))
    >>> g.num_nodes, g.num_edges  # 1 + 3 channels, 1 bias, gamma, beta; 27 + 3 + 3 + 3
    (7, 36)
    """

    modules = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")
