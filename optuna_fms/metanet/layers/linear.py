"""``torch.nn.Linear``: a dense layer."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from optuna_fms.metanet._writer import GraphWriter
from optuna_fms.metanet._writer import ModuleCall
from optuna_fms.metanet._writer import Neurons
from optuna_fms.metanet.layers._base import Layer
from optuna_fms.metanet.layers._base import _has_stats
from optuna_fms.metanet.layers._base import _weight_dim


class Linear(Layer):
    """A linear layer: one neuron per output, ``W[j, i]`` an edge from input ``i`` to ``j``.

    Draws a layer of ``out_features`` hidden neurons, one ``linear`` edge per weight and a bias
    node with one ``bias`` edge per output. After a flatten (``s`` times as many inputs as the
    neurons feeding it) each pair has ``s`` parallel edges carrying the flattened position.
    Without a structure, any module with a 2-D ``weight`` and no running statistics.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph
    >>> g = build_graph(torch.nn.Linear(3, 2).state_dict())
    >>> g.num_nodes, g.num_edges  # 3 inputs, 2 outputs, 1 bias node; 6 weights, 2 biases
    (6, 8)
    """

    modules = ("Linear", "NonDynamicallyQuantizableLinear", "LazyLinear")
    edge_types = ("linear",)

    def build(self, graph: GraphWriter, call: ModuleCall) -> Neurons:
        return graph.dense(call.path, graph.weight(call), graph.tensor(call, "bias"), call.src)

    def infer(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        return _weight_dim(tensors) == 2 and not _has_stats(tensors)
