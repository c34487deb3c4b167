"""Graph metanetwork: an edge-updating message-passing network over parameter graphs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optuna_fms.metanet._graph import EDGE_FEATURES
from optuna_fms.metanet._graph import NODE_FEATURES
from optuna_fms.metanet._graph import ParamGraph
from optuna_fms.metanet._writer import edge_features


FIRST_EDGE_FEATURES = edge_features(
    (
        *("linear", "conv", "embedding", "bias", "gamma", "beta", "residual"),
        *("attn_q", "attn_k", "attn_v", "attn_out"),
    )
)
"""The edge features before the LoRA edge types (``lora_a``, ``lora_b``) were added: what the
shipped metanetwork was trained on, and what a saved one that records no list reads."""

_NODE_LAYER_COL = NODE_FEATURES.index("layer")
_EDGE_LAYER_COL = EDGE_FEATURES.index("layer")
_EDGE_VALUE_COL = EDGE_FEATURES.index("value")


class GraphMetanetwork(torch.nn.Module):
    """Embed parameter graphs into vectors, invariantly to permutations of hidden neurons.

    A graph network (Lim et al., ICLR 2024): node and edge features are encoded to ``hidden``
    dimensions, then ``num_layers`` message-passing blocks update every edge from its two end
    nodes and itself, and every node from itself and the means of its incoming and outgoing
    edges (residual updates with LayerNorm). The readout is
    the mean over each graph's edges, concatenated with the mean over its nodes
    (``node_readout=True``), followed by a linear map to ``out_dim``. Every step is equivariant to
    a relabelling of nodes, so the output is invariant to any permutation of hidden neurons that
    maps the graph onto itself.

    Edge values go in twice, raw and as ``asinh(value)``, and the integer layer index as
    ``log1p(layer)``, so that large weights or deep networks do not saturate the encoders.

    Parameters
    ----------
    out_dim:
        Size of the embedding.
    hidden:
        Width of node and edge states.
    num_layers:
        Number of message-passing blocks.
    node_readout:
        Whether to concatenate the node mean to the edge mean before the output layer.

    Notes
    -----
    ``forward`` batches the graphs with PyTorch Geometric, converting each :class:`ParamGraph`
    once (cached on the graph by :meth:`ParamGraph.to_pyg`), and keeps the last batch it built,
    so refitting on the same list of graphs rebuilds nothing. ``torch_geometric`` is imported
    when the first batch is built; the blocks themselves are plain ``torch.nn`` modules.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import GraphMetanetwork, build_graph
    >>> nets = [torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2)) for _ in "ab"]
    >>> graphs = [build_graph(n.state_dict()) for n in nets]
    >>> gmn = GraphMetanetwork(out_dim=16)
    >>> gmn(graphs).shape
    torch.Size([2, 16])
    """

    def __init__(
        self,
        out_dim: int = 16,
        *,
        hidden: int = 32,
        num_layers: int = 4,
        node_readout: bool = True,
    ) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.hidden = hidden
        self.node_readout = node_readout
        self.node_encoder = _mlp(len(NODE_FEATURES), hidden)
        # Drawn for FIRST_EDGE_FEATURES, with zero columns for the edge types added since: the
        # same initial weights, and the same embedding of graphs without those edges, as before.
        self.edge_encoder = _mlp(len(FIRST_EDGE_FEATURES) + 1, hidden)
        first = self.edge_encoder[0]
        assert isinstance(first, torch.nn.Linear)
        first.weight = torch.nn.Parameter(edge_columns(first.weight.detach(), FIRST_EDGE_FEATURES))
        first.in_features = len(EDGE_FEATURES) + 1
        self.blocks = torch.nn.ModuleList(_Block(hidden) for _ in range(num_layers))
        self.head = torch.nn.Linear(hidden * (2 if node_readout else 1), out_dim)
        self._batch_key: tuple[int, ...] | None = None
        self._batch_graphs: list[ParamGraph] = []
        self._batch: Any = None

    def _collate(self, graphs: Sequence[ParamGraph], device: torch.device) -> Any:
        key = tuple(id(g) for g in graphs)
        if self._batch is None or key != self._batch_key or self._batch.x.device != device:
            from torch_geometric.data import Batch

            batch = Batch.from_data_list([g.to_pyg() for g in graphs]).to(device)
            self._batch_key = key
            self._batch_graphs = list(graphs)  # keeps the ids in the key alive
            self._batch = batch
        return self._batch

    def forward(self, graphs: Sequence[ParamGraph]) -> torch.Tensor:
        """Embed ``graphs`` into a ``[len(graphs), out_dim]`` tensor (differentiable)."""
        device = self.head.weight.device
        if len(graphs) == 0:
            return torch.zeros(0, self.out_dim, device=device)
        batch = self._collate(graphs, device)
        num_graphs = len(graphs)
        x = batch.x.clone()
        x[:, _NODE_LAYER_COL] = torch.log1p(x[:, _NODE_LAYER_COL])
        e = batch.edge_attr.clone()
        e[:, _EDGE_LAYER_COL] = torch.log1p(e[:, _EDGE_LAYER_COL])
        e = torch.cat([e, torch.asinh(e[:, _EDGE_VALUE_COL : _EDGE_VALUE_COL + 1])], 1)
        h = self.node_encoder(x)
        m = self.edge_encoder(e)
        for block in self.blocks:
            h, m = block(h, batch.edge_index, m)
        edge_graph = batch.batch[batch.edge_index[0]]
        pooled = [_scatter_mean(m, edge_graph, num_graphs)]
        if self.node_readout:
            pooled.append(_scatter_mean(h, batch.batch, num_graphs))
        return self.head(torch.cat(pooled, 1))


def edge_columns(weight: torch.Tensor, features: Sequence[str]) -> torch.Tensor:
    """The edge encoder's first weight, read for ``features`` (and the ``asinh`` of the value,
    last), laid out for :data:`EDGE_FEATURES`: columns matched by name, zero where ``features``
    lacks one (an edge type added since the weight was made).

    Raises
    ------
    ValueError
        If ``weight`` does not have one column per feature, or a feature is not known here.
    """
    unknown = [f for f in features if f not in EDGE_FEATURES]
    if weight.dim() != 2 or weight.shape[1] != len(features) + 1 or unknown:
        raise ValueError(
            f"an edge encoder of shape {list(weight.shape)} for the edge features "
            f"{list(features)} cannot read {list(EDGE_FEATURES)}"
        )
    if tuple(features) == EDGE_FEATURES:
        return weight
    out = weight.new_zeros(weight.shape[0], len(EDGE_FEATURES) + 1)
    out[:, [EDGE_FEATURES.index(f) for f in features] + [len(EDGE_FEATURES)]] = weight
    return out


def _mlp(in_dim: int, hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden)
    )


def _scatter_mean(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of the rows of ``src`` sharing an ``index``, ``[size, dim]`` (zero where none).

    The same operations as ``torch_geometric.utils.scatter(..., reduce="mean")``.
    """
    count = src.new_zeros(size).scatter_add_(0, index, src.new_ones(src.shape[0]))
    total = src.new_zeros(size, src.shape[1]).scatter_add_(0, index[:, None].expand_as(src), src)
    return total / count.clamp(min=1)[:, None]


class _Block(torch.nn.Module):
    """One message-passing step: update every edge, then every node from the new edges."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.edge_model = _EdgeModel(hidden)
        self.node_model = _NodeModel(hidden)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the updated node states ``[N, hidden]`` and edge states ``[E, hidden]``."""
        edge_attr = self.edge_model(x, edge_index, edge_attr)
        return self.node_model(x, edge_index, edge_attr), edge_attr


class _EdgeModel(torch.nn.Module):
    """``e' = LayerNorm(e + MLP([x_src, x_dst, e]))``.

    The first layer of the MLP is split into three blocks, so that the node terms are computed
    once per node and then gathered per edge: the same function with a third of the per-edge
    multiply-adds.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lin_src = torch.nn.Linear(hidden, hidden, bias=False)
        self.lin_dst = torch.nn.Linear(hidden, hidden, bias=False)
        self.lin_edge = torch.nn.Linear(hidden, hidden)
        self.act = torch.nn.SiLU()
        self.lin_out = torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor
    ) -> torch.Tensor:
        z = self.lin_src(x)[edge_index[0]] + self.lin_dst(x)[edge_index[1]]
        return self.norm(edge_attr + self.lin_out(self.act(z + self.lin_edge(edge_attr))))


class _NodeModel(torch.nn.Module):
    """``x' = LayerNorm(x + MLP([x, mean of incoming edges, mean of outgoing edges]))``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = _mlp(3 * hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor
    ) -> torch.Tensor:
        n = x.shape[0]
        incoming = _scatter_mean(edge_attr, edge_index[1], n)
        outgoing = _scatter_mean(edge_attr, edge_index[0], n)
        return self.norm(x + self.mlp(torch.cat([x, incoming, outgoing], 1)))
