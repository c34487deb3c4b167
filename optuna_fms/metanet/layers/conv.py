"""``torch.nn.Conv1d`` / ``Conv2d`` / ``Conv3d``: a convolution."""

from __future__ import annotations

from collections.abc import Mapping
import math

import torch

from optuna_fms.metanet._errors import UnsupportedArchitectureError
from optuna_fms.metanet._writer import GraphWriter
from optuna_fms.metanet._writer import ModuleCall
from optuna_fms.metanet._writer import Neurons
from optuna_fms.metanet._writer import kernel_positions
from optuna_fms.metanet.layers._base import Layer
from optuna_fms.metanet.layers._base import _has_stats
from optuna_fms.metanet.layers._base import _weight_dim


class Conv(Layer):
    """A convolution: one neuron per output channel, a kernel as parallel edges.

    ``W[o, c, *k]`` is a ``conv`` edge from input channel ``c`` (of ``o``'s group) to output
    channel ``o`` carrying the kernel position ``k`` (up to 3 coordinates in ``[-1, 1]``), so a
    ``k x k`` kernel is ``k*k`` parallel edges; the bias is a bias node with one ``bias`` edge
    per channel. Without a structure, any module with a 3-D to 5-D ``weight`` and no running
    statistics, its number of groups inferred from the channels feeding it.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph
    >>> g = build_graph(torch.nn.Conv2d(2, 4, 3).state_dict())
    >>> g.num_nodes, g.num_edges  # 2 + 4 channels, 1 bias node; 2*4*9 kernel edges, 4 biases
    (7, 76)
    """

    modules = ("Conv1d", "Conv2d", "Conv3d")
    edge_types = ("conv",)

    def build(self, graph: GraphWriter, call: ModuleCall) -> Neurons:
        groups = None if call.inferred else call.attrs.get("groups", 1)
        return _conv(
            graph,
            call.path,
            graph.weight(call),
            graph.tensor(call, "bias"),
            call.src,
            None if groups is None else int(groups),
        )

    def infer(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        return _weight_dim(tensors) in (3, 4, 5) and not _has_stats(tensors)


def _conv(
    graph: GraphWriter,
    name: str,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    src: Neurons,
    groups: int | None,
) -> Neurons:
    """Draw a convolution (``groups=None``: inferred from the width of ``src``)."""
    if weight.dim() not in (3, 4, 5):
        raise UnsupportedArchitectureError(f"'{name}': expected a 3-D to 5-D conv weight")
    n_out, in_per_group = weight.shape[:2]
    kernel = tuple(int(k) for k in weight.shape[2:])
    if src.ids is None:
        src = graph.materialise(src, in_per_group * (groups or 1))
    n_in = src.size
    if groups is None:
        groups = n_in // in_per_group if n_in % in_per_group == 0 else -1
    if groups < 1 or in_per_group * groups != n_in or n_out % groups != 0:
        raise UnsupportedArchitectureError(
            f"'{name}' expects {in_per_group} input channels per group, which does not fit "
            f"the {n_in} channels feeding it ('{src.name}')"
        )
    layer = graph.next_layer()
    out = graph.neurons(n_out, layer, name)
    flat = weight.reshape(-1)
    idx = graph.select(flat)
    ksize = math.prod(kernel)
    o = idx // (in_per_group * ksize)
    rem = idx % (in_per_group * ksize)
    c = rem // ksize + (o // (n_out // groups)) * in_per_group
    kp = rem % ksize
    coords = []
    for k in reversed(kernel):
        coords.append(kp % k)
        kp = kp // k
    pos = kernel_positions(torch.stack(coords[::-1], 1), kernel)
    assert src.ids is not None and out.ids is not None
    graph.add_edges(src.ids[c], out.ids[o], flat[idx], layer, "conv", pos, full=flat.numel())
    graph.bias(bias, out, layer)
    return out
