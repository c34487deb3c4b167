"""Parameter graphs (Lim et al., ICLR 2024) built from a state dict, as plain tensors."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
import math
from typing import Any

import torch

from optuna_fms.metanet._errors import UnsupportedArchitectureError


NODE_TYPES = ("input", "hidden", "output", "bias", "gamma", "beta")
EDGE_TYPES = (
    "linear",
    "conv",
    "embedding",
    "bias",
    "gamma",
    "beta",
    "residual",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_out",
)
NODE_FEATURES = ("layer_frac", "layer", "io_index", *(f"type_{t}" for t in NODE_TYPES))
EDGE_FEATURES = (
    "value",
    "layer_frac",
    "layer",
    *(f"type_{t}" for t in EDGE_TYPES),
    "kpos_0",
    "kpos_1",
    "kpos_2",
)

DEFAULT_MAX_EDGES_PER_LAYER = 1024

_N_INPUT, _N_HIDDEN, _N_OUTPUT, _N_BIAS, _N_GAMMA, _N_BETA = range(len(NODE_TYPES))
_E = {name: i for i, name in enumerate(EDGE_TYPES)}

_ADD_OPS = frozenset({"add", "iadd", "add_", "__add__", "__iadd__", "__radd__", "sub", "isub"})
_MATMUL_OPS = frozenset({"matmul", "bmm", "mm", "__matmul__", "einsum_last"})
_CAT_OPS = frozenset({"cat", "concat", "concatenate", "hstack"})
_MUL_OPS = frozenset({"mul", "imul", "mul_", "__mul__", "__rmul__", "truediv", "div", "div_"})
_STAT_BUFFERS = frozenset({"running_mean", "running_var", "num_batches_tracked"})

_HASH_CHUNK = 1 << 22
_HASH_MULTIPLIERS = (-1640531535, 0x2C1B3C6D, 0x297A2D39)


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
    builder = _Builder(state_dict, max_edges_per_layer)
    if structure is None:
        builder.run_inferred()
    else:
        builder.run_structure(structure)
    return builder.finish()


class _Group:
    """A set of neuron nodes carried by one tensor in the data flow."""

    __slots__ = ("ids", "order", "name")

    def __init__(self, ids: torch.Tensor | None, order: int, name: str) -> None:
        self.ids = ids  # None: network input whose width is not known yet.
        self.order = order
        self.name = name

    @property
    def size(self) -> int:
        assert self.ids is not None
        return int(self.ids.numel())


class _Param:
    """A parameter read directly in ``forward`` (positional embedding, class token, scale)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


# -- layer registry -------------------------------------------------------------------------
# Every supported module type is one entry of ``_LAYERS``: a function decorated with
# ``@_layer("ClassName", ..., infer=...)`` that adds the module's nodes and edges.
@dataclass(frozen=True)
class _ModuleCall:
    """One call of a module in the data flow, as a layer-building function sees it.

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
    """

    path: str
    src: _Group
    params: Mapping[str, str]
    shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    node: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, Any] = field(default_factory=dict)

    def groups_of(self, names: Sequence[str]) -> list[_Group | None]:
        """The neuron groups passed as the named arguments (``None`` where not a group)."""
        refs = _node_args(self.node, names)
        groups = [self.env.get(r) if r is not None else None for r in refs]
        return [g if isinstance(g, _Group) else None for g in groups]


_BuildLayer = Callable[["_Builder", _ModuleCall], _Group]
_InferLayer = Callable[[Mapping[str, torch.Tensor]], bool]


@dataclass(frozen=True)
class _LayerKind:
    """How the module types of one kind become nodes and edges of the parameter graph.

    Attributes
    ----------
    build:
        Adds the layer's nodes and edges and returns the neurons it outputs.
    infer:
        Without a structure, whether a module's tensors (local name -> tensor, as in the
        state dict) are of this kind; ``None``: never inferred.
    """

    build: _BuildLayer
    infer: _InferLayer | None = None


_LAYERS: dict[str, _LayerKind] = {}
"""Module class name -> how it enters the graph: the one table of supported layer types."""


def _layer(*names: str, infer: _InferLayer | None = None) -> Callable[[_BuildLayer], _BuildLayer]:
    """Register the decorated function as the graph builder of the module types ``names``."""

    def register(build: _BuildLayer) -> _BuildLayer:
        kind = _LayerKind(build, infer)
        for name in names:
            _LAYERS[name] = kind
        return build

    return register


def _has_stats(tensors: Mapping[str, torch.Tensor]) -> bool:
    return "running_mean" in tensors or "running_var" in tensors


def _weight_dim(tensors: Mapping[str, torch.Tensor]) -> int | None:
    weight = tensors.get("weight")
    return None if weight is None else weight.dim()


@_layer(
    "Linear",
    "NonDynamicallyQuantizableLinear",
    "LazyLinear",
    infer=lambda t: _weight_dim(t) == 2 and not _has_stats(t),
)
def _linear_layer(b: _Builder, call: _ModuleCall) -> _Group:
    return b.linear(call.path, b.weight(call), b.local(call, "bias"), call.src)


@_layer(
    "Conv1d",
    "Conv2d",
    "Conv3d",
    infer=lambda t: _weight_dim(t) in (3, 4, 5) and not _has_stats(t),
)
def _conv_layer(b: _Builder, call: _ModuleCall) -> _Group:
    groups = call.attrs.get("groups", 1)
    return b.conv(
        call.path,
        b.weight(call),
        b.local(call, "bias"),
        call.src,
        None if groups is None else int(groups),
    )


@_layer("Embedding")
def _embedding_layer(b: _Builder, call: _ModuleCall) -> _Group:
    return b.linear(call.path, b.weight(call).t(), None, call.src, _E["embedding"])


@_layer(
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LayerNorm",
    "GroupNorm",
    "RMSNorm",
    infer=lambda t: (_weight_dim(t) == 1) if "weight" in t else (_has_stats(t) or "bias" in t),
)
def _norm_layer(b: _Builder, call: _ModuleCall) -> _Group:
    eps = call.attrs.get("eps", 1e-5)
    return b.norm(
        call.path,
        call.src,
        b.local(call, "weight"),
        b.local(call, "bias"),
        b.local(call, "running_mean"),
        b.local(call, "running_var"),
        float(eps) if eps is not None else 1e-5,
    )


@_layer("MultiheadAttention")
def _attention_layer(b: _Builder, call: _ModuleCall) -> _Group:
    query, key, value = call.groups_of(("query", "key", "value"))
    q = query if query is not None else call.src
    k = key if key is not None else q
    v = value if value is not None else k
    return b.attention(call, q, k, v)


# Without a structure a convolution's number of groups is inferred from its input width.
_INFERRED_ATTRS: Mapping[str, Any] = {"groups": None}


class _Builder:
    def __init__(self, state_dict: Mapping[str, torch.Tensor], max_edges: int | None) -> None:
        if max_edges is not None and max_edges < 1:
            raise ValueError("max_edges_per_layer must be positive or None.")
        self.sd = state_dict
        self.max_edges = max_edges
        self.used: set[str] = set()
        self.buffers: set[str] = set()
        self.num_nodes = 0
        self.node_layer: list[torch.Tensor] = []
        self.node_type: list[torch.Tensor] = []
        self.edges: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int, Any]] = []
        self.num_edges_full = 0
        self.layer = 0
        self.order = 0
        self.inputs: list[_Group] = []
        self.outputs: list[_Group] = []

    # -- nodes and edges ---------------------------------------------------------------------
    def _nodes(self, count: int, layer: int, ntype: int) -> torch.Tensor:
        ids = torch.arange(self.num_nodes, self.num_nodes + count)
        self.num_nodes += count
        self.node_layer.append(torch.full((count,), layer, dtype=torch.long))
        self.node_type.append(torch.full((count,), ntype, dtype=torch.long))
        return ids

    def _group(self, count: int, layer: int, name: str) -> _Group:
        self.order += 1
        return _Group(self._nodes(count, layer, _N_HIDDEN), self.order, name)

    def _materialise(self, group: _Group, size: int) -> _Group:
        if group.ids is None:
            group.ids = self._nodes(size, 0, _N_INPUT)
            self.inputs.append(group)
        return group

    def _edges(
        self,
        src: torch.Tensor,
        dst: torch.Tensor,
        value: torch.Tensor,
        layer: int,
        etype: int,
        pos: torch.Tensor | None = None,
        full: int | None = None,
    ) -> None:
        self.edges.append((src, dst, value.float(), layer, etype, pos))
        self.num_edges_full += int(src.numel()) if full is None else full

    def _bias(self, bias: torch.Tensor | None, out: _Group, layer: int) -> None:
        if bias is None:
            return
        if bias.numel() != out.size:
            raise UnsupportedArchitectureError(
                f"bias of {bias.numel()} entries for a layer with {out.size} outputs"
            )
        assert out.ids is not None
        node = self._nodes(1, layer, _N_BIAS)
        self._edges(node.expand(out.size), out.ids, bias.reshape(-1), layer, _E["bias"])

    # -- state dict access -------------------------------------------------------------------
    def _get(self, key: str | None, shape: Sequence[int] | None = None) -> torch.Tensor | None:
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

    def local(self, call: _ModuleCall, local: str) -> torch.Tensor | None:
        """The tensor a module holds under ``local`` (``None`` if it has none)."""
        return self._get(call.params.get(local), call.shapes.get(local))

    def weight(self, call: _ModuleCall) -> torch.Tensor:
        weight = self.local(call, "weight")
        assert weight is not None
        return weight

    # -- layers ------------------------------------------------------------------------------
    def linear(
        self,
        name: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        src: _Group,
        etype: int = _E["linear"],
        layer: int | None = None,
    ) -> _Group:
        if weight.dim() != 2:
            raise UnsupportedArchitectureError(f"'{name}': expected a 2-D weight")
        n_out, n_in_total = weight.shape
        src = self._materialise(src, n_in_total)
        n_in = src.size
        if n_in_total % n_in != 0:
            raise UnsupportedArchitectureError(
                f"'{name}' has {n_in_total} inputs, which does not fit the {n_in} neurons "
                f"feeding it ('{src.name}')"
            )
        spatial = n_in_total // n_in
        if layer is None:
            self.layer += 1
            layer = self.layer
        out = self._group(n_out, layer, name)
        flat = weight.reshape(-1)
        sel = self._select(flat)
        idx = torch.arange(flat.numel()) if sel is None else sel
        values = flat[idx]
        row = idx // n_in_total
        col = idx % n_in_total
        assert src.ids is not None and out.ids is not None
        pos = None
        if spatial > 1:
            side = math.isqrt(spatial)
            p = col % spatial
            if side * side == spatial:
                pos = _positions(torch.stack([p // side, p % side], 1), (side, side))
            else:
                pos = _positions(p[:, None], (spatial,))
        self._edges(
            src.ids[col // spatial], out.ids[row], values, layer, etype, pos, full=flat.numel()
        )
        self._bias(bias, out, layer)
        return out

    def conv(
        self,
        name: str,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        src: _Group,
        groups: int | None,
    ) -> _Group:
        if weight.dim() not in (3, 4, 5):
            raise UnsupportedArchitectureError(f"'{name}': expected a 3-D to 5-D conv weight")
        n_out, in_per_group = weight.shape[:2]
        kernel = tuple(int(k) for k in weight.shape[2:])
        if src.ids is None:
            src = self._materialise(src, in_per_group * (groups or 1))
        n_in = src.size
        if groups is None:
            groups = n_in // in_per_group if n_in % in_per_group == 0 else -1
        if groups < 1 or in_per_group * groups != n_in or n_out % groups != 0:
            raise UnsupportedArchitectureError(
                f"'{name}' expects {in_per_group} input channels per group, which does not fit "
                f"the {n_in} channels feeding it ('{src.name}')"
            )
        self.layer += 1
        out = self._group(n_out, self.layer, name)
        flat = weight.reshape(-1)
        sel = self._select(flat)
        idx = torch.arange(flat.numel()) if sel is None else sel
        ksize = math.prod(kernel)
        o = idx // (in_per_group * ksize)
        rem = idx % (in_per_group * ksize)
        c = rem // ksize + (o // (n_out // groups)) * in_per_group
        kp = rem % ksize
        coords = []
        for k in reversed(kernel):
            coords.append(kp % k)
            kp = kp // k
        pos = _positions(torch.stack(coords[::-1], 1), kernel)
        assert src.ids is not None and out.ids is not None
        self._edges(
            src.ids[c], out.ids[o], flat[idx], self.layer, _E["conv"], pos, full=flat.numel()
        )
        self._bias(bias, out, self.layer)
        return out

    def norm(
        self,
        name: str,
        group: _Group,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        mean: torch.Tensor | None,
        var: torch.Tensor | None,
        eps: float,
    ) -> _Group:
        tensors = [t for t in (weight, bias, mean, var) if t is not None]
        if not tensors:
            return group
        n = tensors[0].numel()
        group = self._materialise(group, n)
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
        self.layer += 1
        assert group.ids is not None
        for values, ntype, etype in ((scale, _N_GAMMA, "gamma"), (shift, _N_BETA, "beta")):
            if values is not None:
                node = self._nodes(1, self.layer, ntype)
                self._edges(node.expand(group.size), group.ids, values, self.layer, _E[etype])
        return group

    def attention(self, call: _ModuleCall, query: _Group, key: _Group, value: _Group) -> _Group:
        name = call.path

        def get(local: str) -> torch.Tensor | None:
            return self.local(call, local)

        in_w, in_b = get("in_proj_weight"), get("in_proj_bias")
        ws: list[torch.Tensor | None]
        if in_w is not None:
            ws = list(in_w.chunk(3, 0))
        else:
            ws = [get("q_proj_weight"), get("k_proj_weight"), get("v_proj_weight")]
            if any(w is None for w in ws):
                raise UnsupportedArchitectureError(f"attention '{name}' has no projections")
        bs: list[torch.Tensor | None] = list(in_b.chunk(3, 0)) if in_b is not None else [None] * 3
        self.layer += 1
        layer = self.layer
        outs = []
        for w, b, src, etype in zip(ws, bs, (query, key, value), ("attn_q", "attn_k", "attn_v")):
            assert w is not None
            outs.append(self.linear(f"{name}.{etype}", w, b, src, _E[etype], layer=layer))
        out_w, out_b = get("out_proj.weight"), get("out_proj.bias")
        if out_w is None:
            raise UnsupportedArchitectureError(f"attention '{name}' has no output projection")
        return self.linear(f"{name}.out_proj", out_w, out_b, outs[2], _E["attn_out"])

    def merge(self, name: str, groups: list[_Group]) -> _Group:
        unique: list[_Group] = []
        for g in groups:
            if all(g is not u for u in unique):
                unique.append(g)
        if len(unique) == 1:
            return unique[0]
        known = [g for g in unique if g.ids is not None]
        if not known:
            return unique[0]
        dst = max(known, key=lambda g: g.order)
        assert dst.ids is not None
        for g in unique:
            if g is dst:
                continue
            g = self._materialise(g, dst.size)
            assert g.ids is not None
            if g.size == 1:
                continue
            if g.size != dst.size:
                raise UnsupportedArchitectureError(
                    f"residual connection '{name}' adds {g.size} neurons ('{g.name}') to "
                    f"{dst.size} neurons ('{dst.name}')"
                )
            layer = int(self.node_layer_of(dst))
            self._edges(g.ids, dst.ids, torch.ones(dst.size), layer, _E["residual"])
        return dst

    def node_layer_of(self, group: _Group) -> int:
        assert group.ids is not None
        first = int(group.ids[0])
        seen = 0
        for chunk in self.node_layer:
            if first < seen + chunk.numel():
                return int(chunk[first - seen])
            seen += chunk.numel()
        raise AssertionError

    # -- drivers -----------------------------------------------------------------------------
    def run_structure(self, structure: Mapping[str, Any]) -> None:
        if not isinstance(structure, Mapping) or "nodes" not in structure:
            raise ValueError("structure must be the dictionary returned by describe_module.")
        self.buffers = set(structure.get("buffers", ()))
        env: dict[str, Any] = {}
        for node in structure["nodes"]:
            name = node["name"]
            op = node["op"]
            inputs = [env.get(i) for i in node.get("inputs", [])]
            if op == "input":
                self.order += 1
                env[name] = _Group(None, self.order, name)
            elif op == "output":
                self.outputs.extend(
                    g for g in inputs if isinstance(g, _Group) and g.ids is not None
                )
            elif op == "module":
                env[name] = self._module(node, inputs, env)
            elif op in ("function", "method"):
                env[name] = self._op(node, inputs, env)
            elif op == "param":
                key = node.get("params", {}).get("value", node.get("target"))
                # Buffers read in forward (fixed positional encodings, masks) are constants.
                env[name] = _Param(key) if key in self.sd and key not in self.buffers else None
            else:
                env[name] = None

    def _module(
        self, node: Mapping[str, Any], inputs: list[Any], env: Mapping[str, Any]
    ) -> _Group | None:
        target = node["target"]
        path = node.get("path", node["name"])
        params: Mapping[str, str] = node.get("params", {})
        src = next((g for g in inputs if isinstance(g, _Group)), None)
        float_params = [
            k
            for k in params
            if k not in _STAT_BUFFERS
            and params[k] in self.sd
            and self.sd[params[k]].is_floating_point()
        ]
        if src is None:
            if float_params:
                raise UnsupportedArchitectureError(
                    f"module '{path}' ({target}) does not read the network's data flow"
                )
            return None
        kind = _LAYERS.get(target)
        if kind is not None:
            call = _ModuleCall(
                path, src, params, node.get("shapes", {}), node.get("attrs", {}), node, env
            )
            return kind.build(self, call)
        if float_params:
            raise UnsupportedArchitectureError(
                f"module '{path}' of type {target} (parameters {sorted(float_params)}) cannot be "
                "expressed as a parameter graph"
            )
        return src

    def _op(
        self, node: Mapping[str, Any], inputs: list[Any], env: Mapping[str, Any]
    ) -> _Group | _Param | None:
        groups = [g for g in inputs if isinstance(g, _Group)]
        params = [p for p in inputs if isinstance(p, _Param)]
        target = node["target"]
        args = node.get("args", [])
        first = args[0] if args else None
        first_ref = env.get(first["node"]) if isinstance(first, dict) and "node" in first else None
        shaping = target not in _ADD_OPS and target not in _MUL_OPS and target not in _CAT_OPS
        if isinstance(first_ref, _Param) and shaping:
            return first_ref  # view/expand/reshape/... of a parameter (sizes may come from data)
        if not groups:
            return params[0] if params else None
        out = self._op_groups(node, groups, env)
        for p in params:
            if target in _ADD_OPS or target in _CAT_OPS:
                self.param_edges(node["name"], p.key, out, _N_BIAS, "bias")
            elif target in _MUL_OPS:
                self.param_edges(node["name"], p.key, out, _N_GAMMA, "gamma")
            else:
                raise UnsupportedArchitectureError(
                    f"parameter '{p.key}' is used by '{node['name']}' ({target}), which cannot "
                    "be expressed as a parameter graph"
                )
        return out

    def param_edges(self, name: str, key: str, group: _Group, ntype: int, etype: str) -> None:
        """Edges for a parameter added to (or multiplied with) the neurons of ``group``."""
        tensor = self._get(key)
        assert tensor is not None
        shape = list(tensor.shape)
        if group.ids is None:
            self._materialise(group, shape[-1] if shape else 1)
        n = group.size
        dims = [i for i, size in enumerate(shape) if size == n]
        if shape and shape[-1] == n:
            dim = len(shape) - 1
        elif len(dims) == 1:
            dim = dims[0]
        else:
            raise UnsupportedArchitectureError(
                f"parameter '{key}' of shape {shape} used by '{name}' does not match the {n} "
                f"neurons it is applied to ('{group.name}')"
            )
        flat = tensor.movedim(dim, -1).reshape(-1)
        positions = flat.numel() // n
        sel = self._select(flat)
        idx = torch.arange(flat.numel()) if sel is None else sel
        self.layer += 1
        node = self._nodes(1, self.layer, ntype)
        pos = _positions((idx // n)[:, None], (positions,)) if positions > 1 else None
        assert group.ids is not None
        self._edges(
            node.expand(idx.numel()),
            group.ids[idx % n],
            flat[idx],
            self.layer,
            _E[etype],
            pos,
            full=flat.numel(),
        )

    def _op_groups(
        self, node: Mapping[str, Any], groups: list[_Group], env: Mapping[str, Any]
    ) -> _Group:
        target = node["target"]
        if target in _ADD_OPS:
            return self.merge(node["name"], groups)
        if target in _MATMUL_OPS:
            return groups[-1]
        if target == "scaled_dot_product_attention":
            ref = _node_args(node, ("query", "key", "value"))[2]
            value = env.get(ref) if ref is not None else None
            return value if isinstance(value, _Group) else groups[-1]
        if target in _CAT_OPS:
            unique: list[_Group] = []
            for g in groups:
                if all(g is not u for u in unique):
                    unique.append(g)
            if len(unique) == 1:
                return unique[0]
            if any(g.ids is None for g in unique):
                raise UnsupportedArchitectureError(
                    f"'{node['name']}' concatenates the network input with hidden features"
                )
            self.order += 1
            return _Group(
                torch.cat([g.ids for g in unique if g.ids is not None]), self.order, node["name"]
            )
        return groups[0]

    def run_inferred(self) -> None:
        modules: dict[str, dict[str, str]] = {}
        for key, tensor in self.sd.items():
            if not isinstance(tensor, torch.Tensor):
                continue
            prefix, _, local = key.rpartition(".")
            modules.setdefault(prefix, {})[local] = key
        self.order += 1
        current = _Group(None, self.order, "input")
        for prefix, locals_ in modules.items():
            tensors = {k: self.sd[v] for k, v in locals_.items()}
            extra = [
                k
                for k, t in tensors.items()
                if t.is_floating_point() and k not in {"weight", "bias", *_STAT_BUFFERS}
            ]
            if extra:
                raise UnsupportedArchitectureError(
                    f"cannot infer the role of '{locals_[extra[0]]}' without the structure; "
                    "pass structure=describe_module(model)"
                )
            kind = next(
                (k for k in _LAYERS.values() if k.infer is not None and k.infer(tensors)), None
            )
            if kind is None:
                first = next(iter(locals_.values()))
                raise UnsupportedArchitectureError(
                    f"cannot infer the role of '{first}' with shape "
                    f"{list(self.sd[first].shape)} without the structure; "
                    "pass structure=describe_module(model)"
                )
            call = _ModuleCall(prefix or "<root>", current, locals_, attrs=_INFERRED_ATTRS)
            current = kind.build(self, call)
        if current.ids is not None:
            self.outputs.append(current)

    # -- subsampling -------------------------------------------------------------------------
    def _select(self, flat: torch.Tensor) -> torch.Tensor | None:
        return _hash_subsample(flat, self.max_edges)

    # -- output ------------------------------------------------------------------------------
    def finish(self) -> ParamGraph:
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
        node_layer = torch.cat(self.node_layer).float()
        node_type = torch.cat(self.node_type)
        io = torch.zeros(self.num_nodes)
        for groups, ntype in ((self.inputs, _N_INPUT), (self.outputs, _N_OUTPUT)):
            for g in groups:
                assert g.ids is not None
                io[g.ids] = torch.arange(1, g.size + 1, dtype=torch.float) / g.size
                node_type[g.ids] = ntype
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
        if self.edges:
            src = torch.cat([e[0] for e in self.edges])
            dst = torch.cat([e[1] for e in self.edges])
            value = torch.cat([e[2] for e in self.edges])
            sizes = [int(e[0].numel()) for e in self.edges]
            layer = torch.repeat_interleave(
                torch.tensor([e[3] for e in self.edges], dtype=torch.float), torch.tensor(sizes)
            )
            etype = torch.repeat_interleave(
                torch.tensor([e[4] for e in self.edges]), torch.tensor(sizes)
            )
            pos = torch.cat(
                [
                    e[5] if e[5] is not None else torch.zeros(s, 3)
                    for e, s in zip(self.edges, sizes)
                ]
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
                torch.nn.functional.one_hot(etype, len(EDGE_TYPES)).float(),
                pos,
            ],
            1,
        )
        return ParamGraph(
            x=x,
            edge_index=torch.stack([src, dst]),
            edge_attr=edge_attr,
            num_layers=self.layer,
            num_params=int(num_params),
            num_edges_full=self.num_edges_full,
        )


def _hash_subsample(flat: torch.Tensor, k: int | None) -> torch.Tensor | None:
    """Sorted indices of the entries whose value-hash key is below the k-th smallest key.

    ``None`` when ``flat`` has at most ``k`` entries (keep all). The selection depends only on
    the multiset of values, hence is invariant to any permutation of the entries.
    """
    n = flat.numel()
    if k is None or n <= k:
        return None
    # Keys are (nearly) uniform on the int32 range: a value-independent pre-filter keeps about
    # 4k candidates, among which the k-th smallest key is found exactly.
    span = min(2.0**32, 2.0**32 * 4.0 * k / n)
    bound = int(-(2.0**31) + span) if span < 2.0**32 else None
    for prefilter in (bound, None):
        cand_keys = []
        cand_idx = []
        for start in range(0, n, _HASH_CHUNK):
            keys = _hash_values(flat[start : start + _HASH_CHUNK])
            if prefilter is not None:
                idx = torch.nonzero(keys < prefilter).reshape(-1)
                top = keys[idx]
            else:
                top, idx = torch.topk(keys, min(k, keys.numel()), largest=False, sorted=False)
            cand_keys.append(top)
            cand_idx.append(idx + start)
        keys = torch.cat(cand_keys)
        if keys.numel() >= k:
            break
    idx = torch.cat(cand_idx)
    threshold = torch.kthvalue(keys, k).values
    keep = idx[keys < threshold]
    return torch.sort(keep).values


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


def _positions(coords: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Kernel coordinates ``[E, d]`` -> ``[E, 3]`` in ``[-1, 1]``, centred, zero-padded."""
    out = torch.zeros(coords.shape[0], 3)
    for d, k in enumerate(kernel):
        half = (k - 1) / 2
        out[:, d] = (coords[:, d].float() - half) / max(half, 1.0)
    return out


def _hash_values(values: torch.Tensor) -> torch.Tensor:
    """A 32-bit multiply-xorshift hash of the float32 bit pattern of each value (int32 keys).

    Integer multiplication wraps around modulo 2**32, as on every platform torch supports.
    """
    h = values.float().contiguous().view(torch.int32)
    for mult in _HASH_MULTIPLIERS:
        h = h * mult
        h = h ^ ((h >> 15) & 0x1FFFF)  # logical shift
    return h
