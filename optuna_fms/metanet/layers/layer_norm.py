"""Layer normalisation (``torch.nn.LayerNorm``)."""

from __future__ import annotations

from optuna_fms.metanet.layers.norm import Normalization


class LayerNorm(Normalization):
    """Layer normalisation: its elementwise affine parameters as gamma and beta edges.

    See :class:`~optuna_fms.metanet.layers.Normalization`.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph, describe_module
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
    >>> g = build_graph(net.state_dict(), describe_module(net))
    >>> g.num_nodes, g.num_edges  # 2 + 3 neurons, 1 bias, gamma, beta; 6 + 3 + 3 + 3
    (8, 15)
    """

    modules = ("LayerNorm",)
