"""``torch.nn.MultiheadAttention``: query, key and value projections and an output projection."""

from __future__ import annotations

import torch

from optuna_fms.metanet._errors import UnsupportedArchitectureError
from optuna_fms.metanet._writer import GraphWriter
from optuna_fms.metanet._writer import ModuleCall
from optuna_fms.metanet._writer import Neurons
from optuna_fms.metanet.layers._base import Layer


class MultiheadAttention(Layer):
    """Multi-head attention: three dense layers side by side and an output projection.

    The query, key and value projections (from ``in_proj_weight``, or ``q_proj_weight`` /
    ``k_proj_weight`` / ``v_proj_weight`` when the key and value widths differ) are dense
    layers of one layer index from the query, key and value inputs, drawn as ``attn_q``,
    ``attn_k`` and ``attn_v`` edges; the output projection reads the value neurons
    (``attn_out`` edges). Separate q/k/v ``torch.nn.Linear`` modules are plain linear layers.
    Never inferred without a structure.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph, describe_module
    >>> class SelfAttention(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.attn = torch.nn.MultiheadAttention(4, 2, batch_first=True)
    ...
    ...     def forward(self, x):
    ...         return self.attn(x, x, x)[0]
    >>> net = SelfAttention()
    >>> g = build_graph(net.state_dict(), describe_module(net))
    >>> g.num_nodes  # 4 inputs, 3 * 4 projected and 4 output neurons, 4 bias nodes
    24
    >>> g.num_edges  # 3 * (16 + 4) projections, 16 + 4 output projection
    80
    """

    modules = ("MultiheadAttention",)
    edge_types = ("attn_q", "attn_k", "attn_v", "attn_out")

    def build(self, graph: GraphWriter, call: ModuleCall) -> Neurons:
        query, key, value = call.groups_of(("query", "key", "value"))
        q = query if query is not None else call.src
        k = key if key is not None else q
        v = value if value is not None else k
        name = call.path
        in_w, in_b = graph.tensor(call, "in_proj_weight"), graph.tensor(call, "in_proj_bias")
        ws: list[torch.Tensor | None]
        if in_w is not None:
            ws = list(in_w.chunk(3, 0))
        else:
            ws = [graph.tensor(call, f"{p}_proj_weight") for p in "qkv"]
            if any(w is None for w in ws):
                raise UnsupportedArchitectureError(f"attention '{name}' has no projections")
        bs: list[torch.Tensor | None] = list(in_b.chunk(3, 0)) if in_b is not None else [None] * 3
        layer = graph.next_layer()
        outs = []
        for w, b, src, etype in zip(ws, bs, (q, k, v), ("attn_q", "attn_k", "attn_v")):
            assert w is not None
            outs.append(graph.dense(f"{name}.{etype}", w, b, src, etype, layer=layer))
        out_w = graph.tensor(call, "out_proj.weight")
        out_b = graph.tensor(call, "out_proj.bias")
        if out_w is None:
            raise UnsupportedArchitectureError(f"attention '{name}' has no output projection")
        return graph.dense(f"{name}.out_proj", out_w, out_b, outs[2], "attn_out")
