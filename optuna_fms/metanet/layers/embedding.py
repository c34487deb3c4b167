"""``torch.nn.Embedding``: a lookup table read as a dense layer from token nodes."""

from __future__ import annotations

from optuna_fms.metanet._writer import GraphWriter
from optuna_fms.metanet._writer import ModuleCall
from optuna_fms.metanet._writer import Neurons
from optuna_fms.metanet.layers._base import Layer


class Embedding(Layer):
    """An embedding: one input node per token, ``weight[t, d]`` an edge from token ``t`` to ``d``.

    Draws a layer of ``embedding_dim`` hidden neurons and one ``embedding`` edge per entry.
    Never inferred without a structure (its 2-D weight reads as a linear layer's).

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph, describe_module
    >>> net = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    >>> g = build_graph(net.state_dict(), describe_module(net))
    >>> g.num_nodes, g.num_edges  # 10 tokens, 4 dimensions; 40 entries
    (14, 40)
    """

    modules = ("Embedding",)
    edge_types = ("embedding",)

    def build(self, graph: GraphWriter, call: ModuleCall) -> Neurons:
        return graph.dense(call.path, graph.weight(call).t(), None, call.src, "embedding")
