"""Instance normalisation (``torch.nn.InstanceNorm1d`` / ``2d`` / ``3d``)."""

from __future__ import annotations

from optuna_fms.metanet.layers.norm import Normalization


class InstanceNorm(Normalization):
    """Instance normalisation: its affine parameters as gamma and beta edges.

    See :class:`~optuna_fms.metanet.layers.Normalization`; running statistics, when tracked
    (``track_running_stats=True``), are folded in; without ``affine`` nor statistics it draws
    nothing.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph, describe_module
    >>> conv, norm = torch.nn.Conv2d(1, 3, 3), torch.nn.InstanceNorm2d(3, affine=True)
    >>> net = torch.nn.Sequential(conv, norm)
    >>> g = build_graph(net.state_dict(), describe_module(net))
    >>> g.num_nodes, g.num_edges  # 1 + 3 channels, 1 bias, gamma, beta; 27 + 3 + 3 + 3
    (7, 36)
    """

    modules = ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
