"""LoRA adapters (peft's ``Linear`` LoRA layer): the update in a canonical form beside its base."""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Mapping
import math
import re
from typing import Any

import torch

from optuna_fms.metanet._errors import UnsupportedArchitectureError
from optuna_fms.metanet._lora import DEFAULT_LORA_RTOL
from optuna_fms.metanet._lora import canonical_lora
from optuna_fms.metanet._writer import GraphWriter
from optuna_fms.metanet._writer import ModuleCall
from optuna_fms.metanet._writer import Neurons
from optuna_fms.metanet.layers._base import Layer


_PARTS = "lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|base_layer"
_KEY = re.compile(rf"(?:(?P<path>.*)\.)?(?P<local>(?P<part>{_PARTS})(?:\..*)?)")
_LOCAL = re.compile(
    r"(?P<part>lora_A|lora_B|base_layer)(?:\.(?P<adapter>[^.]+))?\.(?P<t>weight|bias)"
)
_ADAPTER_PARTS = frozenset(_PARTS.split("|")) - {"base_layer"}
_PEFT_PREFIX = "base_model.model."


class LoRA(Layer):
    """A LoRA-adapted linear layer: the base layer's edges and the update through rank nodes.

    peft's LoRA layer holds the base layer (``<path>.base_layer.weight``) and, per adapter
    ``name``, ``lora_A.<name>.weight`` (``r x d_in``) and ``lora_B.<name>.weight``
    (``d_out x r``); its class is also named ``Linear``, so it is recognised by these tensor
    names (:meth:`Layer.claims`). The base layer is drawn as a linear layer; the update
    ``s B A`` as ``k`` rank nodes (hidden nodes of the same layer) with ``lora_a`` edges from
    the inputs and ``lora_b`` edges to the base layer's output neurons, carrying the canonical
    factors of :func:`~optuna_fms.metanet.canonical_lora` (``k`` the numerical rank). The graph
    therefore depends on the update only: it is the same for ``(G A, B G^-1)`` with any
    invertible ``G`` (a permutation of the rank included), for a rank padded with zeros, and
    for the same update split differently between ``s`` and the weights; a zero update (a
    fresh adapter) draws no rank node. Two things only approximate: repeated singular values
    (see :func:`~optuna_fms.metanet.canonical_lora`), and a layer whose factors have more
    than ``max_edges_per_layer`` entries: its ``lora_a`` edges are those of the input neurons
    the update reads most (largest column norm of ``A'``, which is exactly invariant to ``G``
    and stable under rounding, unlike the hash of the values used for other weights; inputs
    tied at the cut are all dropped), likewise its ``lora_b`` edges by row norm of ``B'``.

    A state dict holding only adapters (``peft.get_peft_model_state_dict``: keys
    ``<path>.lora_A.weight`` and ``<path>.lora_B.weight``) is drawn as one block per adapted
    layer, ``d_in`` hidden neurons -> ``k`` rank nodes -> ``d_out`` hidden neurons, each block a
    layer of its own, blocks in state-dict order and not connected (the base network is not in
    the checkpoint, so every neuron stays permutable).

    The scaling ``s`` is, in order: ``scaling`` given here; the structure's record of the
    module (:func:`~optuna_fms.metanet.describe_module` keeps peft's ``scaling`` per adapter,
    or ``lora_alpha`` and ``r``, with ``use_rslora``); else 1, which is right only for
    ``lora_alpha == r`` (without rsLoRA). An adapter-only state dict with the structure of the
    peft model it came from reads the scaling from there.

    Parameters
    ----------
    scaling:
        ``s`` for every adapter, or by module path (with or without peft's
        ``base_model.model.`` prefix; a path not in the mapping falls back to the structure).
        ``None``: from the structure, else 1. Override the default handler with
        ``build_graph(..., layers=LAYERS.with_layers(LoRA(scaling=2.0)))``.
    rtol:
        Singular values below ``rtol`` times the largest are dropped.

    Notes
    -----
    Supported: LoRA on linear layers (and transformers' ``Conv1D`` base with
    ``fan_in_fan_out``), several adapters per layer (each its own rank nodes), ``lora_B``
    biases (a bias node). Refused with :class:`~optuna_fms.metanet.UnsupportedArchitectureError`:
    DoRA (``lora_magnitude_vector``), LoRA on embeddings or convolutions.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import build_graph
    >>> gen = torch.Generator().manual_seed(0)
    >>> A, B = torch.randn(4, 6, generator=gen), torch.randn(5, 4, generator=gen)
    >>> g = build_graph({"fc.lora_A.weight": A, "fc.lora_B.weight": B})  # adapter only
    >>> g.num_nodes, g.num_edges  # 6 inputs, 4 rank nodes, 5 outputs; 4 * 6 + 5 * 4 edges
    (15, 44)
    >>> G = torch.randn(4, 4, generator=gen) + 4 * torch.eye(4)
    >>> h = build_graph({"fc.lora_A.weight": G @ A, "fc.lora_B.weight": B @ torch.inverse(G)})
    >>> bool(torch.allclose(g.edge_attr, h.edge_attr, atol=1e-5))
    True
    """

    modules = ()
    edge_types = ("lora_a", "lora_b")

    def __init__(
        self,
        scaling: float | Mapping[str, float] | None = None,
        *,
        rtol: float = DEFAULT_LORA_RTOL,
    ) -> None:
        self.scaling = scaling
        self.rtol = rtol

    def claims(self, names: Collection[str]) -> bool:
        return any(name.partition(".")[0] in _ADAPTER_PARTS for name in names)

    def split_key(self, key: str) -> tuple[str, str] | None:
        match = _KEY.fullmatch(key)
        if match is None:
            return None
        return match["path"] or "", match["local"]

    def build(self, graph: GraphWriter, call: ModuleCall) -> Neurons:
        base, adapters = _parts(call.path, call.params)
        weight = graph.read(base.get("weight"), call.shapes.get("base_layer.weight"))
        bias = graph.read(base.get("bias"), call.shapes.get("base_layer.bias"))
        out: Neurons | None = None
        layer = 0
        if weight is not None:
            if call.attrs.get("fan_in_fan_out"):
                weight = weight.T
            out = graph.dense(call.path, weight, bias, call.src)
            layer = graph.layer_of(out)
        for adapter, keys in adapters.items():
            a, b = graph.read(keys["lora_A"]), graph.read(keys["lora_B"])
            assert a is not None and b is not None
            src = graph.materialise(call.src, a.shape[-1])
            if out is None:
                layer = graph.next_layer()
                out = graph.neurons(b.shape[0], layer, call.path)
            scaling = self._scaling(call.path, adapter, call.attrs)
            self._draw(
                graph,
                call.path,
                (a, b, graph.read(keys.get("lora_B.bias"))),
                scaling,
                src,
                out,
                layer,
            )
        if out is None:
            raise UnsupportedArchitectureError(f"LoRA module '{call.path}' holds no weights")
        return out

    def build_alone(self, graph: GraphWriter, structure: Mapping[str, Any] | None) -> bool:
        keys = [
            k
            for k, t in graph.sd.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() > 0
        ]
        matches = [_KEY.fullmatch(k) for k in keys]
        if not keys or any(m is None or m["part"] not in _ADAPTER_PARTS for m in matches):
            return False
        modules: dict[str, dict[str, str]] = {}
        for key, match in zip(keys, matches):
            assert match is not None
            modules.setdefault(match["path"] or "", {})[match["local"]] = key
        recorded = _recorded_attrs(structure)
        for path, params in modules.items():
            _, adapters = _parts(path, params)
            attrs = recorded.get(path, recorded.get(_strip(path), {}))
            for adapter, ks in adapters.items():
                a, b = graph.read(ks["lora_A"]), graph.read(ks["lora_B"])
                assert a is not None and b is not None
                layer = graph.next_layer()
                src = graph.neurons(a.shape[-1], layer, path)
                out = graph.neurons(b.shape[0], layer, path)
                scaling = self._scaling(path, adapter, attrs)
                self._draw(
                    graph,
                    path,
                    (a, b, graph.read(ks.get("lora_B.bias"))),
                    scaling,
                    src,
                    out,
                    layer,
                )
        return True

    def _scaling(self, path: str, adapter: str, attrs: Mapping[str, Any]) -> float:
        if isinstance(self.scaling, Mapping):
            for p in (path, _strip(path)):
                if p in self.scaling:
                    return float(self.scaling[p])
        elif self.scaling is not None:
            return float(self.scaling)
        recorded = _per_adapter(attrs.get("scaling"), adapter)
        if recorded is not None:
            return recorded
        alpha, rank = (
            _per_adapter(attrs.get("lora_alpha"), adapter),
            _per_adapter(attrs.get("r"), adapter),
        )
        if alpha is not None and rank:
            rslora = _per_adapter(attrs.get("use_rslora"), adapter)
            return alpha / (math.sqrt(rank) if rslora else rank)
        return 1.0

    def _draw(
        self,
        graph: GraphWriter,
        path: str,
        tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
        scaling: float,
        src: Neurons,
        out: Neurons,
        layer: int,
    ) -> None:
        """Draw one adapter's update from ``src`` to ``out`` (and its ``lora_B`` bias)."""
        a, b, b_bias = tensors
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != src.size or b.shape[0] != out.size:
            raise UnsupportedArchitectureError(
                f"LoRA module '{path}': factors {list(a.shape)} and {list(b.shape)} do not fit "
                f"{src.size} inputs and {out.size} outputs (only LoRA on linear layers is "
                "supported)"
            )
        if b_bias is not None:
            graph.bias(b_bias * scaling, out, layer)
        a_c, b_c = canonical_lora(a, b, scaling, rtol=self.rtol)
        k = a_c.shape[0]
        if k == 0:
            return
        assert src.ids is not None and out.ids is not None
        rank = graph.add_nodes(k, layer, "hidden")
        cols = _strongest(a_c.norm(dim=0), k, graph.max_edges)
        rows = _strongest(b_c.norm(dim=1), k, graph.max_edges)
        graph.add_edges(
            src.ids[cols].repeat(k),
            rank.repeat_interleave(cols.numel()),
            a_c[:, cols].reshape(-1),
            layer,
            "lora_a",
            full=a_c.numel(),
        )
        graph.add_edges(
            rank.repeat(rows.numel()),
            out.ids[rows].repeat_interleave(k),
            b_c[rows].reshape(-1),
            layer,
            "lora_b",
            full=b_c.numel(),
        )


def _parts(
    path: str, params: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The base layer's keys and, per adapter name, its ``lora_A`` / ``lora_B`` keys."""
    base: dict[str, str] = {}
    adapters: dict[str, dict[str, str]] = {}
    for local, key in params.items():
        match = _LOCAL.fullmatch(local)
        if match is None:
            part = local.partition(".")[0]
            what = "a tensor of no LoRA linear layer"
            if part in _ADAPTER_PARTS:
                what = "DoRA" if part == "lora_magnitude_vector" else "LoRA on embeddings"
            raise UnsupportedArchitectureError(
                f"LoRA module '{path}' holds '{key}' ({what}), which cannot be expressed as a "
                "parameter graph"
            )
        if match["part"] == "base_layer":
            base[match["t"]] = key
        else:
            name = match["part"] + (".bias" if match["t"] == "bias" else "")
            adapters.setdefault(match["adapter"] or "", {})[name] = key
    for adapter, keys in adapters.items():
        if "lora_A" not in keys or "lora_B" not in keys:
            raise UnsupportedArchitectureError(
                f"LoRA module '{path}' has no {'lora_B' if 'lora_A' in keys else 'lora_A'} "
                f"weight for adapter {adapter!r}"
            )
    return base, adapters


def _strongest(norms: torch.Tensor, rank: int, max_edges: int | None) -> torch.Tensor:
    """Indices of the neurons to draw: all, or the ``max_edges // rank`` of largest norm."""
    n = norms.numel()
    keep = max(1, (max_edges or 0) // rank)
    if max_edges is None or n * rank <= max_edges or keep >= n:
        return torch.arange(n)
    threshold = norms.sort(descending=True).values[keep]
    return (norms > threshold).nonzero().flatten()


def _per_adapter(value: Any, adapter: str) -> float | None:
    """A value peft records per adapter (a dict), for ``adapter``; a lone entry otherwise."""
    if isinstance(value, Mapping):
        if adapter in value:
            value = value[adapter]
        elif len(value) == 1:
            value = next(iter(value.values()))
        else:
            value = value.get("default")
    if isinstance(value, (bool, int, float)):
        return float(value)
    return None


def _recorded_attrs(structure: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """Module path (and the path without peft's prefix) -> recorded attributes."""
    out: dict[str, Mapping[str, Any]] = {}
    for node in (structure or {}).get("nodes", ()):
        if node.get("op") == "module":
            path = str(node.get("path", node.get("name", "")))
            out[path] = out[_strip(path)] = node.get("attrs", {})
    return out


def _strip(path: str) -> str:
    return path[len(_PEFT_PREFIX) :] if path.startswith(_PEFT_PREFIX) else path
