"""RMS normalisation (``torch.nn.RMSNorm``)."""

from __future__ import annotations

from optuna_fms.metanet.layers.norm import Normalization


class RMSNorm(Normalization):
    """RMS normalisation: its scale as gamma edges (it has no shift).

    See :class:`~optuna_fms.metanet.layers.Normalization`.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph, describe_module
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.RMSNorm(3))
    >>> g = build_graph(net.state_dict(), describe_module(net))
    >>> g.num_nodes, g.num_edges  # 2 + 3 neurons, 1 bias, 1 gamma; 6 + 3 + 3
    (7, 12)
    """

    modules = ("RMSNorm",)
