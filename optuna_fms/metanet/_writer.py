"""The parameter graph under construction: neurons, nodes, edges and state-dict access.

:class:`GraphWriter` is what a layer handler (:mod:`optuna_fms.metanet.layers`) draws with;
the builder (``_builder.py``) owns one per :func:`~optuna_fms.metanet.build_graph` call.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import math
from typing import Any

import torch

from optuna_fms.metanet._errors import UnsupportedArchitectureError
from optuna_fms.metanet._subsample import _hash_subsample


NODE_TYPES = ("input", "hidden", "output", "bias", "gamma", "beta")
STRUCTURAL_EDGE_TYPES = ("bias", "gamma", "beta", "residual")
"""Edge types any layer may draw, declared by no layer: a bias (:meth:`GraphWriter.bias`, or a
parameter added in ``forward``), a scale and a shift (a normalisation, or a parameter
multiplied in ``forward``) and a residual addition."""

NODE_FEATURES = ("layer_frac", "layer", "io_index", *(f"type_{t}" for t in NODE_TYPES))

_NODE_INDEX = {name: i for i, name in enumerate(NODE_TYPES)}
_KPOS = ("kpos_0", "kpos_1", "kpos_2")
_STAT_BUFFERS = frozenset({"running_mean", "running_var", "num_batches_tracked"})


class Neurons:
    """The neuron nodes carried by one tensor of the data flow.

    Attributes
    ----------
    ids:
        Long ``[size]``: node ids, or ``None`` for a network input whose width is not known
        yet (:meth:`GraphWriter.materialise` creates its nodes once a layer reads it).
    order:
        Creation order; a residual addition draws its edges into the newest operand.
    name:
        The layer or structure node that produced them (for error messages).
    """

    __slots__ = ("ids", "order", "name")

    def __init__(self, ids: torch.Tensor | None, order: int, name: str) -> None:
        self.ids = ids
        self.order = order
        self.name = name

    @property
    def size(self) -> int:
        assert self.ids is not None
        return int(self.ids.numel())


@dataclass(frozen=True)
class ModuleCall:
    """One call of a module in the data flow, as a layer handler sees it.

    Attributes
    ----------
    path:
        Qualified name of the module (used in error messages and as the layer's name).
    src:
        The neurons feeding the module (its first data-flow input).
    params:
        Local tensor name (``"weight"``, ``"running_mean"``, ...) -> state-dict key.
    shapes:
        Local tensor name -> shape recorded in the structure (empty without a structure).
    attrs:
        Hyper-parameters recorded in the structure (``groups``, ``eps``, ...).
    node:
        The structure node of the call (empty without a structure).
    env:
        Structure node name -> what the builder made of it so far.
    inferred:
        Whether the call was inferred from the state dict alone (no structure, no ``attrs``).
    """

    path: str
    src: Neurons
    params: Mapping[str, str]
    shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    node: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, Any] = field(default_factory=dict)
    inferred: bool = False

    def groups_of(self, names: Sequence[str]) -> list[Neurons | None]:
        """The neurons passed as the named arguments (``None`` where not neurons)."""
        refs = _node_args(self.node, names)
        groups = [self.env.get(r) if r is not None else None for r in refs]
        return [g if isinstance(g, Neurons) else None for g in groups]


class GraphWriter:
    """A parameter graph being drawn: the nodes, edges and counters a layer handler extends.

    Parameters
    ----------
    state_dict:
        The network's state dict; every tensor read through :meth:`tensor` is marked used.
    max_edges:
        Bound on the edges drawn from one weight tensor (see :meth:`select`); ``None``: none.
    edge_types:
        The edge types, in the column order of the one-hot edge feature.

    Examples
    --------
    A layer handler draws a learned per-neuron scale as a gamma node with one edge per neuron:

    >>> import torch
    >>> from optuna_fms.metanet import EDGE_TYPES
    >>> from optuna_fms.metanet.layers import GraphWriter
    >>> graph = GraphWriter({}, None, EDGE_TYPES)
    >>> x = graph.group(None, "input")
    >>> h = graph.dense("fc", torch.ones(2, 3), None, x)
    >>> layer = graph.next_layer()
    >>> node = graph.add_nodes(1, layer, "gamma")
    >>> graph.add_edges(node.expand(h.size), h.ids, torch.tensor([0.5, 2.0]), layer, "gamma")
    >>> graph.num_nodes, graph.num_edges_full  # 3 inputs, 2 neurons, 1 gamma node; 6 + 2 edges
    (6, 8)
    """

    def __init__(
        self,
        state_dict: Mapping[str, torch.Tensor],
        max_edges: int | None,
        edge_types: Sequence[str],
    ) -> None:
        if max_edges is not None and max_edges < 1:
            raise ValueError("max_edges_per_layer must be positive or None.")
        self.sd = state_dict
        self.max_edges = max_edges
        self.edge_types = tuple(edge_types)
        self._etype = {name: i for i, name in enumerate(self.edge_types)}
        self.used: set[str] = set()
        self.buffers: set[str] = set()
        self.num_nodes = 0
        self._node_layer: list[torch.Tensor] = []
        self._node_type: list[torch.Tensor] = []
        self._edges: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, Any]] = []
        self.num_edges_full = 0
        self.layer = 0
        self.order = 0
        self.inputs: list[Neurons] = []
        self.outputs: list[Neurons] = []

    # -- nodes and edges ---------------------------------------------------------------------
    def next_layer(self) -> int:
        """Start a new layer and return its index (layers are numbered from 1)."""
        self.layer += 1
        return self.layer

    def add_nodes(self, count: int, layer: int, node_type: str) -> torch.Tensor:
        """Add ``count`` nodes of ``node_type`` (one of ``NODE_TYPES``) and return their ids."""
        ids = torch.arange(self.num_nodes, self.num_nodes + count)
        self.num_nodes += count
        self._node_layer.append(torch.full((count,), layer, dtype=torch.long))
        self._node_type.append(torch.full((count,), _NODE_INDEX[node_type], dtype=torch.long))
        return ids

    def group(self, ids: torch.Tensor | None, name: str) -> Neurons:
        """Neurons made of existing nodes ``ids`` (``None``: an input not materialised yet)."""
        self.order += 1
        return Neurons(ids, self.order, name)

    def neurons(self, count: int, layer: int, name: str) -> Neurons:
        """``count`` new hidden neurons of ``layer``, output of the layer ``name``."""
        return self.group(self.add_nodes(count, layer, "hidden"), name)

    def materialise(self, group: Neurons, size: int) -> Neurons:
        """Give a network input its ``size`` input nodes, once its width is known."""
        if group.ids is None:
            group.ids = self.add_nodes(size, 0, "input")
            self.inputs.append(group)
        return group

    def add_edges(
        self,
        src: torch.Tensor,
        dst: torch.Tensor,
        value: torch.Tensor,
        layer: int,
        edge_type: str,
        pos: torch.Tensor | None = None,
        full: int | None = None,
    ) -> None:
        """Add edges ``src[i] -> dst[i]`` carrying ``value[i]`` (and kernel position ``pos``).

        ``full`` is the number of edges before subsampling (default: as many as drawn).
        """
        if edge_type not in self._etype:
            raise ValueError(
                f"edge type {edge_type!r} is not declared by any registered layer "
                f"(known: {list(self.edge_types)})"
            )
        self._edges.append((src, dst, value.float(), layer, self._etype[edge_type], pos))
        self.num_edges_full += int(src.numel()) if full is None else full

    def bias(self, bias: torch.Tensor | None, out: Neurons, layer: int) -> None:
        """Draw a layer's bias: one bias node of ``layer``, one edge per output neuron."""
        if bias is None:
            return
        if bias.numel() != out.size:
            raise UnsupportedArchitectureError(
                f"bias of {bias.numel()} entries for a layer with {out.size} outputs"
            )
        assert out.ids is not None
        node = self.add_nodes(1, layer, "bias")
        self.add_edges(node.expand(out.size), out.ids, bias.reshape(-1), layer, "bias")

    def select(self, flat: torch.Tensor) -> torch.Tensor:
        """Sorted indices of the entries of a flattened weight to draw.

        All of them, or fewer than ``max_edges`` chosen by a hash of their values (see
        :func:`~optuna_fms.metanet.build_graph`).
        """
        sel = _hash_subsample(flat, self.max_edges)
        return torch.arange(flat.numel()) if sel is None else sel

    # -- state dict access -------------------------------------------------------------------
    def read(self, key: str | None, shape: Sequence[int] | None = None) -> torch.Tensor | None:
        """The state-dict tensor ``key`` (``None`` for ``None``), checked and marked used."""
        if key is None:
            return None
        if key not in self.sd:
            raise UnsupportedArchitectureError(f"parameter '{key}' is missing from the state dict")
        tensor = self.sd[key].detach()
        if shape is not None and list(tensor.shape) != list(shape):
            raise ValueError(
                f"'{key}' has shape {list(tensor.shape)} but the structure says {list(shape)}"
            )
        self.used.add(key)
        return tensor

    def tensor(self, call: ModuleCall, local: str) -> torch.Tensor | None:
        """The tensor a module holds under ``local`` (``None`` if it has none), marked used."""
        return self.read(call.params.get(local), call.shapes.get(local))

    def weight(self, call: ModuleCall) -> torch.Tensor:
        """The module's ``weight``."""
        weight = self.tensor(call, "weight")
        assert weight is not None
        return weight

    # -- the dense layer -----------------------------------------------------------------
    def dense(
        self,
        name: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        src: Neurons,
        edge_type: str = "linear",
        layer: int | None = None,
    ) -> Neurons:
        """Draw a dense layer: ``weight[j, i]`` is an edge from input ``i`` to new neuron ``j``.

        A weight with ``s`` times as many columns as ``src`` has neurons (a linear layer after
        a flatten) has ``s`` parallel edges per pair, carrying the flattened position. Starts a
        new layer unless ``layer`` is given; returns the output neurons.
        """
        if weight.dim() != 2:
            raise UnsupportedArchitectureError(f"'{name}': expected a 2-D weight")
        n_out, n_in_total = weight.shape
        src = self.materialise(src, n_in_total)
        n_in = src.size
        if n_in_total % n_in != 0:
            raise UnsupportedArchitectureError(
                f"'{name}' has {n_in_total} inputs, which does not fit the {n_in} neurons "
                f"feeding it ('{src.name}')"
            )
        spatial = n_in_total // n_in
        if layer is None:
            layer = self.next_layer()
        out = self.neurons(n_out, layer, name)
        flat = weight.reshape(-1)
        idx = self.select(flat)
        values = flat[idx]
        row = idx // n_in_total
        col = idx % n_in_total
        assert src.ids is not None and out.ids is not None
        pos = None
        if spatial > 1:
            side = math.isqrt(spatial)
            p = col % spatial
            if side * side == spatial:
                pos = kernel_positions(torch.stack([p // side, p % side], 1), (side, side))
            else:
                pos = kernel_positions(p[:, None], (spatial,))
        self.add_edges(
            src.ids[col // spatial], out.ids[row], values, layer, edge_type, pos, full=flat.numel()
        )
        self.bias(bias, out, layer)
        return out

    def layer_of(self, group: Neurons) -> int:
        """The layer index of the (first) node of ``group``."""
        assert group.ids is not None
        first = int(group.ids[0])
        seen = 0
        for chunk in self._node_layer:
            if first < seen + chunk.numel():
                return int(chunk[first - seen])
            seen += chunk.numel()
        raise AssertionError

    # -- output ------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Check that every parameter was used; the graph's tensors, as ``ParamGraph`` fields."""
        unused = [
            k
            for k, t in self.sd.items()
            if k not in self.used
            and k not in self.buffers
            and isinstance(t, torch.Tensor)
            and t.is_floating_point()
            and t.numel() > 0
            and k.rpartition(".")[2] not in _STAT_BUFFERS
        ]
        if unused:
            raise UnsupportedArchitectureError(
                f"parameter '{unused[0]}' is not used by any supported layer"
                + (f" (and {len(unused) - 1} more)" if len(unused) > 1 else "")
            )
        if self.num_nodes == 0:
            raise UnsupportedArchitectureError("the state dict has no supported layer")
        num_params = sum(
            t.numel()
            for t in self.sd.values()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        )
        node_layer = torch.cat(self._node_layer).float()
        node_type = torch.cat(self._node_type)
        io = torch.zeros(self.num_nodes)
        for groups, ntype in ((self.inputs, "input"), (self.outputs, "output")):
            for g in groups:
                assert g.ids is not None
                io[g.ids] = torch.arange(1, g.size + 1, dtype=torch.float) / g.size
                node_type[g.ids] = _NODE_INDEX[ntype]
        num_layers = max(self.layer, 1)
        x = torch.cat(
            [
                (node_layer / num_layers)[:, None],
                node_layer[:, None],
                io[:, None],
                torch.nn.functional.one_hot(node_type, len(NODE_TYPES)).float(),
            ],
            1,
        )
        edge_index, edge_attr = self._edge_tensors(num_layers)
        return {
            "x": x,
            "edge_index": edge_index,
            "edge_attr": edge_attr,
            "num_layers": self.layer,
            "num_params": int(num_params),
            "num_edges_full": self.num_edges_full,
        }

    def _edge_tensors(self, num_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``edge_index`` and ``edge_attr`` of the edges drawn so far."""
        edges = self._edges
        if edges:
            src = torch.cat([e[0] for e in edges])
            dst = torch.cat([e[1] for e in edges])
            value = torch.cat([e[2] for e in edges])
            sizes = [int(e[0].numel()) for e in edges]
            layer = torch.repeat_interleave(
                torch.tensor([e[3] for e in edges], dtype=torch.float), torch.tensor(sizes)
            )
            etype = torch.repeat_interleave(
                torch.tensor([e[4] for e in edges]), torch.tensor(sizes)
            )
            pos = torch.cat(
                [e[5] if e[5] is not None else torch.zeros(s, 3) for e, s in zip(edges, sizes)]
            )
        else:
            src = dst = etype = torch.zeros(0, dtype=torch.long)
            value = layer = torch.zeros(0)
            pos = torch.zeros(0, 3)
        edge_attr = torch.cat(
            [
                value[:, None],
                (layer / num_layers)[:, None],
                layer[:, None],
                torch.nn.functional.one_hot(etype, len(self.edge_types)).float(),
                pos,
            ],
            1,
        )
        return torch.stack([src, dst]), edge_attr


def edge_features(edge_types: Sequence[str]) -> tuple[str, ...]:
    """Names of the edge feature columns for the given edge types, as :meth:`GraphWriter.finish`
    lays them out: the value, the layer fraction and index, the one-hot type, the position."""
    return ("value", "layer_frac", "layer", *(f"type_{t}" for t in edge_types), *_KPOS)


def kernel_positions(coords: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Kernel coordinates ``[E, d]`` -> ``[E, 3]`` in ``[-1, 1]``, centred, zero-padded.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet.layers import kernel_positions
    >>> kernel_positions(torch.tensor([[0], [1], [2]]), (3,))
    tensor([[-1.,  0.,  0.],
            [ 0.,  0.,  0.],
            [ 1.,  0.,  0.]])
    """
    out = torch.zeros(coords.shape[0], 3)
    for d, k in enumerate(kernel):
        half = (k - 1) / 2
        out[:, d] = (coords[:, d].float() - half) / max(half, 1.0)
    return out


def _node_args(node: Mapping[str, Any], names: Sequence[str]) -> list[str | None]:
    """Names of the nodes passed as the given positional/keyword arguments."""
    args = list(node.get("args", []))
    kwargs = node.get("kwargs", {})
    out: list[str | None] = []
    for i, name in enumerate(names):
        arg = kwargs.get(name, args[i] if i < len(args) else None)
        out.append(arg["node"] if isinstance(arg, dict) and "node" in arg else None)
    if all(o is None for o in out) and node.get("inputs"):
        inputs = list(node["inputs"])
        out = [inputs[min(i, len(inputs) - 1)] for i in range(len(names))]
    return out
