"""Graph metanetwork: an edge-updating message-passing network over parameter graphs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optuna_fms.metanet._graph import EDGE_FEATURES
from optuna_fms.metanet._graph import NODE_FEATURES
from optuna_fms.metanet._graph import ParamGraph


_NODE_LAYER_COL = NODE_FEATURES.index("layer")
_EDGE_LAYER_COL = EDGE_FEATURES.index("layer")
_EDGE_VALUE_COL = EDGE_FEATURES.index("value")


class GraphMetanetwork(torch.nn.Module):
    """Embed parameter graphs into vectors, invariantly to permutations of hidden neurons.

    A graph network on PyTorch Geometric (Lim et al., ICLR 2024): node and edge features are
    encoded to ``hidden`` dimensions, then ``num_layers`` ``torch_geometric.nn.MetaLayer`` blocks
    update every edge from its two end nodes and itself, and every node from itself and the
    means of its incoming and outgoing edges (residual updates with LayerNorm). The readout is
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
    ``forward`` converts each :class:`ParamGraph` once (cached on the graph by
    :meth:`ParamGraph.to_pyg`) and keeps the last batch it built, so refitting on the same list
    of graphs rebuilds nothing. ``torch_geometric`` is imported when the first instance is made.

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
        from torch_geometric.nn import MetaLayer

        self.out_dim = out_dim
        self.hidden = hidden
        self.node_readout = node_readout
        self.node_encoder = _mlp(len(NODE_FEATURES), hidden)
        self.edge_encoder = _mlp(len(EDGE_FEATURES) + 1, hidden)
        self.blocks = torch.nn.ModuleList(
            _block_class(MetaLayer)(_EdgeModel(hidden), _NodeModel(hidden))
            for _ in range(num_layers)
        )
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
        from torch_geometric.utils import scatter

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
            h, m, _ = block(h, batch.edge_index, m, None, batch.batch)
        edge_graph = batch.batch[batch.edge_index[0]]
        pooled = [scatter(m, edge_graph, dim=0, dim_size=num_graphs, reduce="mean")]
        if self.node_readout:
            pooled.append(scatter(h, batch.batch, dim=0, dim_size=num_graphs, reduce="mean"))
        return self.head(torch.cat(pooled, 1))


_BLOCK_CLASS: Any = None


def _block_class(meta_layer: type) -> Any:
    """``MetaLayer`` whose edge update projects node states before gathering them per edge."""
    global _BLOCK_CLASS
    if _BLOCK_CLASS is None:

        class _Block(meta_layer):  # type: ignore[valid-type, misc]
            def forward(
                self,
                x: torch.Tensor,
                edge_index: torch.Tensor,
                edge_attr: torch.Tensor | None = None,
                u: torch.Tensor | None = None,
                batch: torch.Tensor | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
                assert edge_attr is not None
                edge_attr = self.edge_model.update(x, edge_index, edge_attr)
                x = self.node_model(x, edge_index, edge_attr, u, batch)
                return x, edge_attr, u

        _BLOCK_CLASS = _Block
    return _BLOCK_CLASS


def _mlp(in_dim: int, hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden)
    )


class _EdgeModel(torch.nn.Module):
    """``e' = LayerNorm(e + MLP([x_src, x_dst, e]))``.

    The first layer of the MLP is split into three blocks, so that the node terms can be
    computed once per node and gathered (see :meth:`update`), which is the same function with
    a third of the per-edge multiply-adds.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lin_src = torch.nn.Linear(hidden, hidden, bias=False)
        self.lin_dst = torch.nn.Linear(hidden, hidden, bias=False)
        self.lin_edge = torch.nn.Linear(hidden, hidden)
        self.act = torch.nn.SiLU()
        self.lin_out = torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden)

    def _finish(self, edge_attr: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.norm(edge_attr + self.lin_out(self.act(z + self.lin_edge(edge_attr))))

    def forward(
        self,
        src: torch.Tensor,
        dst: torch.Tensor,
        edge_attr: torch.Tensor,
        u: torch.Tensor | None,
        batch: torch.Tensor | None,
    ) -> torch.Tensor:
        return self._finish(edge_attr, self.lin_src(src) + self.lin_dst(dst))

    def update(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor
    ) -> torch.Tensor:
        z = self.lin_src(x)[edge_index[0]] + self.lin_dst(x)[edge_index[1]]
        return self._finish(edge_attr, z)


class _NodeModel(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = _mlp(3 * hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden)

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_attr: torch.Tensor,
        u: torch.Tensor | None,
        batch: torch.Tensor | None,
    ) -> torch.Tensor:
        from torch_geometric.utils import scatter

        n = x.shape[0]
        incoming = scatter(edge_attr, edge_index[1], dim=0, dim_size=n, reduce="mean")
        outgoing = scatter(edge_attr, edge_index[0], dim=0, dim_size=n, reduce="mean")
        return self.norm(x + self.mlp(torch.cat([x, incoming, outgoing], 1)))
