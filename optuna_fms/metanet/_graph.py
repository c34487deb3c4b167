"""Parameter graphs (Lim et al., ICLR 2024) built from a state dict, as plain tensors.

:func:`build_graph` walks the network (``_builder.py``) and hands every module to its layer
handler in :mod:`optuna_fms.metanet.layers`, which draws its nodes and edges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import torch

from optuna_fms.metanet._builder import _Builder
from optuna_fms.metanet._writer import NODE_FEATURES
from optuna_fms.metanet._writer import NODE_TYPES
from optuna_fms.metanet.layers import LAYERS
from optuna_fms.metanet.layers import LayerRegistry


__all__ = [
    "DEFAULT_MAX_EDGES_PER_LAYER",
    "EDGE_FEATURES",
    "EDGE_TYPES",
    "NODE_FEATURES",
    "NODE_TYPES",
    "ParamGraph",
    "build_graph",
]

EDGE_TYPES = LAYERS.edge_types
"""Edge types of the default layers, in the column order of the one-hot edge feature."""
EDGE_FEATURES = LAYERS.edge_features

DEFAULT_MAX_EDGES_PER_LAYER = 1024


@dataclass(eq=False)
class ParamGraph:
    """A network's parameters as a graph of plain tensors, independent of any graph library.

    Nodes are input neurons, neurons/channels of every layer, one bias node per layer and a
    gamma and a beta node per normalisation layer; every parameter is an edge. Build it with
    :func:`build_graph`; feed a sequence of them to
    :class:`~optuna_fms.metanet.GraphMetanetwork`.

    Attributes
    ----------
    x:
        Node features, float ``[num_nodes, len(NODE_FEATURES)]``: ``layer_frac`` (layer index
        over the number of layers), ``layer`` (layer index, 0 for input neurons),
        ``io_index`` (``(i + 1) / n`` for the ``i``-th of ``n`` input or output neurons, 0 for
        hidden, bias and norm nodes, which stay permutable) and a one-hot node type
        (``NODE_TYPES``).
    edge_index:
        Long ``[2, num_edges]``: source and destination node of every edge.
    edge_attr:
        Edge features, float ``[num_edges, len(EDGE_FEATURES)]``: ``value`` (the parameter),
        ``layer_frac``, ``layer``, a one-hot edge type (``EDGE_TYPES``) and the kernel position
        (up to 3 coordinates in ``[-1, 1]``; zero for non-convolutional edges; for a linear
        layer after a flatten, the flattened spatial position).
    num_layers:
        Number of parametric layers (the largest layer index).
    num_params:
        Number of floating-point entries in the state dict.
    num_edges_full:
        Number of edges the graph would have without subsampling.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> g = build_graph(net.state_dict())
    >>> g.num_nodes, g.num_edges  # 3 + 4 + 2 neurons + 2 bias nodes; 12 + 8 weights + 6 biases
    (11, 26)
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    edge_attr: torch.Tensor
    num_layers: int
    num_params: int
    num_edges_full: int
    _pyg: Any = field(default=None, init=False, repr=False)

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def subsampled(self) -> bool:
        """Whether large layers were subsampled (see :func:`build_graph`)."""
        return self.num_edges < self.num_edges_full

    def to_pyg(self) -> Any:
        """Return the graph as a ``torch_geometric.data.Data``, converted once and cached."""
        if self._pyg is None:
            from torch_geometric.data import Data

            self._pyg = Data(x=self.x, edge_index=self.edge_index, edge_attr=self.edge_attr)
        return self._pyg


def build_graph(
    state_dict: Mapping[str, torch.Tensor],
    structure: dict[str, Any] | None = None,
    *,
    max_edges_per_layer: int | None = DEFAULT_MAX_EDGES_PER_LAYER,
    layers: LayerRegistry | None = None,
) -> ParamGraph:
    """Build the parameter graph of a network from its state dict.

    One node per input neuron and per neuron/channel of every layer, one bias node per layer,
    one gamma and one beta node per normalisation layer (BatchNorm, LayerNorm, GroupNorm,
    InstanceNorm, RMSNorm), and one edge per parameter: ``W[j, i]`` of a linear layer is an edge
    from neuron ``i`` of its input to neuron ``j`` of its output, a ``k x k`` convolution kernel
    is ``k*k`` parallel edges carrying their kernel position, a bias ``b[j]`` is an edge from the
    bias node, a norm's scale and shift are edges from its gamma and beta nodes (BatchNorm's
    running statistics are folded in: ``gamma / sqrt(var + eps)`` and
    ``beta - mean * gamma / sqrt(var + eps)``). A residual addition adds edges of weight 1 from
    the skipped neurons to the neurons they are added to. ``nn.MultiheadAttention`` is three
    linear layers (query, key, value) from its inputs and an output projection from the value
    neurons; separate q/k/v ``nn.Linear`` projections are plain linear layers. Pooling and
    flattening between a convolution with ``C`` channels and a linear layer with ``C * s``
    inputs become ``s`` parallel edges per channel, carrying the flattened position. A parameter
    read directly in ``forward`` and added to the features (class token, learned positional
    embedding) is a bias-like node with one edge per entry (``P`` parallel edges per neuron for
    ``P`` positions, carrying the position); one multiplied with them (a learned scale) is a
    gamma node.

    Parameters
    ----------
    state_dict:
        The network's ``state_dict()`` (any floating dtype).
    structure:
        The description from :func:`optuna_fms.metanet.describe_module`, or ``None``. Without it
        the layers are taken as a plain chain in state-dict order (Linear / Conv / norm layers
        recognised from parameter names and shapes), which is right for MLP and CNN stacks.
    max_edges_per_layer:
        Bound on the number of edges drawn from one weight tensor (``None``: no bound). A tensor
        with more entries is subsampled deterministically by value: every entry gets a key from
        a hash of its bit pattern and the entries whose key is strictly below the
        ``max_edges_per_layer``-th smallest key are kept. The kept set depends only on the
        multiset of values, so it is exactly invariant to permutations of hidden neurons, and
        it is a pseudo-random sample of the values, not biased towards large weights. The hash
        and the selection run in chunks of 4M entries, so time is linear in the number of
        parameters and the extra memory is bounded (about 100 MB). Entries tied at the
        threshold are all dropped, so a tensor of one repeated value may lose all its edges.
        Bias and norm edges are never subsampled.
    layers:
        The module types to build and how (:class:`~optuna_fms.metanet.layers.LayerRegistry`);
        ``None``: :data:`~optuna_fms.metanet.layers.LAYERS`. Layers that add edge types widen
        ``edge_attr`` to ``len(layers.edge_features)`` columns.

    Returns
    -------
    ParamGraph

    Raises
    ------
    UnsupportedArchitectureError
        If a module or parameter cannot be expressed (the message names it).

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph, describe_module
    >>> net = torch.nn.Sequential(
    ...     torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16, 2)
    ... )
    >>> g = build_graph(net.state_dict(), describe_module(net))
    >>> g.num_nodes  # 1 input channel, 4 channels, 2 outputs, 2 bias nodes
    9
    >>> g.num_edges  # 4*9 kernel edges, 4 biases, 2*16 weights (4 positions per channel), 2 biases
    74
    """
    builder = _Builder(state_dict, max_edges_per_layer, LAYERS if layers is None else layers)
    if builder.layers.build_alone(builder.graph, structure):
        pass  # an adapter saved without its base network (layers/lora.py)
    elif structure is None:
        builder.run_inferred()
    else:
        builder.run_structure(structure)
    return ParamGraph(**builder.graph.finish())
