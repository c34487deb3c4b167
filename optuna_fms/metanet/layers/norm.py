"""The normalisations' common handler: a scale and a shift per neuron."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from optuna_fms.metanet._errors import UnsupportedArchitectureError
from optuna_fms.metanet._writer import GraphWriter
from optuna_fms.metanet._writer import ModuleCall
from optuna_fms.metanet._writer import Neurons
from optuna_fms.metanet.layers._base import Layer
from optuna_fms.metanet.layers._base import _has_stats
from optuna_fms.metanet.layers._base import _weight_dim


class Normalization(Layer):
    """A normalisation: a gamma node (scale) and a beta node (shift), one edge per neuron each.

    The layer reads ``weight`` (scale), ``bias`` (shift), ``running_mean`` and ``running_var``,
    whichever the module has; running statistics are folded in: the scale becomes
    ``gamma / sqrt(var + eps)`` and the shift ``beta - mean * gamma / sqrt(var + eps)``
    (``eps`` from the structure, else ``1e-5``). It draws no neurons: its output is its input.
    A normalisation variant is a subclass naming its module classes (and overriding
    :meth:`build` if its parameters mean something else). Without a structure, any module with
    a 1-D ``weight``, or running statistics or a ``bias`` only, is read as a normalisation.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph, describe_module
    >>> from optuna_fms.metanet.layers import LAYERS, Normalization
    >>> class ScaleNorm(torch.nn.Module):
    ...     def __init__(self, n):
    ...         super().__init__()
    ...         self.weight = torch.nn.Parameter(torch.ones(n))
    ...
    ...     def forward(self, x):
    ...         return self.weight * x / x.norm(dim=-1, keepdim=True)
    >>> class ScaleNormLayer(Normalization):
    ...     modules = ("ScaleNorm",)
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), ScaleNorm(4))
    >>> layers = LAYERS.with_layers(ScaleNormLayer())
    >>> build_graph(net.state_dict(), describe_module(net), layers=layers).num_edges
    20
    """

    def build(self, graph: GraphWriter, call: ModuleCall) -> Neurons:
        eps = call.attrs.get("eps", 1e-5)
        return _scale_shift(
            graph,
            call.path,
            call.src,
            graph.tensor(call, "weight"),
            graph.tensor(call, "bias"),
            graph.tensor(call, "running_mean"),
            graph.tensor(call, "running_var"),
            float(eps) if eps is not None else 1e-5,
        )

    def infer(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        if "weight" in tensors:
            return _weight_dim(tensors) == 1
        return _has_stats(tensors) or "bias" in tensors


def _scale_shift(
    graph: GraphWriter,
    name: str,
    group: Neurons,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor | None,
    var: torch.Tensor | None,
    eps: float,
) -> Neurons:
    tensors = [t for t in (weight, bias, mean, var) if t is not None]
    if not tensors:
        return group
    n = tensors[0].numel()
    group = graph.materialise(group, n)
    if any(t.numel() != group.size for t in tensors):
        raise UnsupportedArchitectureError(
            f"norm layer '{name}' has {n} entries for the {group.size} neurons feeding it "
            f"('{group.name}')"
        )
    scale = weight.float().reshape(-1) if weight is not None else None
    shift = bias.float().reshape(-1) if bias is not None else None
    if mean is not None and var is not None:
        inv = torch.rsqrt(var.float().reshape(-1) + eps)
        scale = inv if scale is None else scale * inv
        shift0 = shift if shift is not None else torch.zeros_like(inv)
        shift = shift0 - mean.float().reshape(-1) * scale
    layer = graph.next_layer()
    assert group.ids is not None
    for values, kind in ((scale, "gamma"), (shift, "beta")):
        if values is not None:
            node = graph.add_nodes(1, layer, kind)
            graph.add_edges(node.expand(group.size), group.ids, values, layer, kind)
    return group
