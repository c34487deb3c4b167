"""The graph builder: walks a network and dispatches every module to its layer handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from optuna_fms.metanet._errors import UnsupportedArchitectureError
from optuna_fms.metanet._writer import _STAT_BUFFERS
from optuna_fms.metanet._writer import GraphWriter
from optuna_fms.metanet._writer import ModuleCall
from optuna_fms.metanet._writer import Neurons
from optuna_fms.metanet._writer import _node_args
from optuna_fms.metanet._writer import kernel_positions
from optuna_fms.metanet.layers import LayerRegistry


_ADD_OPS = frozenset({"add", "iadd", "add_", "__add__", "__iadd__", "__radd__", "sub", "isub"})
_MATMUL_OPS = frozenset({"matmul", "bmm", "mm", "__matmul__", "einsum_last"})
_CAT_OPS = frozenset({"cat", "concat", "concatenate", "hstack"})
_MUL_OPS = frozenset({"mul", "imul", "mul_", "__mul__", "__rmul__", "truediv", "div", "div_"})


class _Param:
    """A parameter read directly in ``forward`` (positional embedding, class token, scale)."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


class _Builder:
    """Walk a structure (or a state dict as a chain) and draw it into a :class:`GraphWriter`.

    Modules go to their handler in ``layers``; what a function or method call does to the data
    flow is drawn here: an addition (residual edges), a concatenation, and a parameter read in
    ``forward`` and added to the features (a bias node) or multiplied with them (a gamma node).
    """

    def __init__(
        self,
        state_dict: Mapping[str, torch.Tensor],
        max_edges: int | None,
        layers: LayerRegistry,
    ) -> None:
        self.layers = layers
        self.graph = GraphWriter(state_dict, max_edges, layers.edge_types)
        self.sd = state_dict

    def run_structure(self, structure: Mapping[str, Any]) -> None:
        if not isinstance(structure, Mapping) or "nodes" not in structure:
            raise ValueError("structure must be the dictionary returned by describe_module.")
        self.graph.buffers = set(structure.get("buffers", ()))
        env: dict[str, Any] = {}
        for node in structure["nodes"]:
            name = node["name"]
            op = node["op"]
            inputs = [env.get(i) for i in node.get("inputs", [])]
            if op == "input":
                env[name] = self.graph.group(None, name)
            elif op == "output":
                self.graph.outputs.extend(
                    g for g in inputs if isinstance(g, Neurons) and g.ids is not None
                )
            elif op == "module":
                env[name] = self._module(node, inputs, env)
            elif op in ("function", "method"):
                env[name] = self._op(node, inputs, env)
            elif op == "param":
                key = node.get("params", {}).get("value", node.get("target"))
                # Buffers read in forward (fixed positional encodings, masks) are constants.
                read = key in self.sd and key not in self.graph.buffers
                env[name] = _Param(key) if read else None
            else:
                env[name] = None

    def _module(
        self, node: Mapping[str, Any], inputs: list[Any], env: Mapping[str, Any]
    ) -> Neurons | None:
        target = node["target"]
        path = node.get("path", node["name"])
        params: Mapping[str, str] = node.get("params", {})
        src = next((g for g in inputs if isinstance(g, Neurons)), None)
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
        layer = self.layers.claimant(params) or self.layers.get(target)
        if layer is not None:
            call = ModuleCall(
                path, src, params, node.get("shapes", {}), node.get("attrs", {}), node, env
            )
            return layer.build(self.graph, call)
        if float_params:
            raise UnsupportedArchitectureError(
                f"module '{path}' of type {target} (parameters {sorted(float_params)}) cannot be "
                "expressed as a parameter graph"
            )
        return src

    def _op(
        self, node: Mapping[str, Any], inputs: list[Any], env: Mapping[str, Any]
    ) -> Neurons | _Param | None:
        groups = [g for g in inputs if isinstance(g, Neurons)]
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
                self._parameter(node["name"], p.key, out, "bias", "bias")
            elif target in _MUL_OPS:
                self._parameter(node["name"], p.key, out, "gamma", "gamma")
            else:
                raise UnsupportedArchitectureError(
                    f"parameter '{p.key}' is used by '{node['name']}' ({target}), which cannot "
                    "be expressed as a parameter graph"
                )
        return out

    def _op_groups(
        self, node: Mapping[str, Any], groups: list[Neurons], env: Mapping[str, Any]
    ) -> Neurons:
        target = node["target"]
        if target in _ADD_OPS:
            return self._residual(node["name"], groups)
        if target in _MATMUL_OPS:
            return groups[-1]
        if target == "scaled_dot_product_attention":
            ref = _node_args(node, ("query", "key", "value"))[2]
            value = env.get(ref) if ref is not None else None
            return value if isinstance(value, Neurons) else groups[-1]
        if target in _CAT_OPS:
            unique = _unique(groups)
            if len(unique) == 1:
                return unique[0]
            if any(g.ids is None for g in unique):
                raise UnsupportedArchitectureError(
                    f"'{node['name']}' concatenates the network input with hidden features"
                )
            ids = torch.cat([g.ids for g in unique if g.ids is not None])
            return self.graph.group(ids, node["name"])
        return groups[0]

    def run_inferred(self) -> None:
        modules: dict[str, dict[str, str]] = {}
        for key, tensor in self.sd.items():
            if not isinstance(tensor, torch.Tensor):
                continue
            prefix, local = self.layers.split_key(key)
            modules.setdefault(prefix, {})[local] = key
        current = self.graph.group(None, "input")
        for prefix, locals_ in modules.items():
            tensors = {k: self.sd[v] for k, v in locals_.items()}
            extra = [
                k
                for k, t in tensors.items()
                if t.is_floating_point() and k not in {"weight", "bias", *_STAT_BUFFERS}
            ]
            layer = self.layers.claimant(locals_)
            if extra and layer is None:
                raise UnsupportedArchitectureError(
                    f"cannot infer the role of '{locals_[extra[0]]}' without the structure; "
                    "pass structure=describe_module(model)"
                )
            layer = layer or self.layers.infer(tensors)
            if layer is None:
                first = next(iter(locals_.values()))
                raise UnsupportedArchitectureError(
                    f"cannot infer the role of '{first}' with shape "
                    f"{list(self.sd[first].shape)} without the structure; "
                    "pass structure=describe_module(model)"
                )
            call = ModuleCall(prefix or "<root>", current, locals_, inferred=True)
            current = layer.build(self.graph, call)
        if current.ids is not None:
            self.graph.outputs.append(current)

    def _parameter(
        self, name: str, key: str, group: Neurons, node_type: str, edge_type: str
    ) -> None:
        """Edges for a parameter added to (or multiplied with) the neurons of ``group``."""
        tensor = self.graph.read(key)
        assert tensor is not None
        shape = list(tensor.shape)
        if group.ids is None:
            self.graph.materialise(group, shape[-1] if shape else 1)
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
        idx = self.graph.select(flat)
        layer = self.graph.next_layer()
        node = self.graph.add_nodes(1, layer, node_type)
        pos = kernel_positions((idx // n)[:, None], (positions,)) if positions > 1 else None
        assert group.ids is not None
        self.graph.add_edges(
            node.expand(idx.numel()),
            group.ids[idx % n],
            flat[idx],
            layer,
            edge_type,
            pos,
            full=flat.numel(),
        )

    def _residual(self, name: str, groups: list[Neurons]) -> Neurons:
        """Add ``groups`` together: weight-1 edges from the others into the newest one."""
        unique = _unique(groups)
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
            g = self.graph.materialise(g, dst.size)
            assert g.ids is not None
            if g.size == 1:
                continue
            if g.size != dst.size:
                raise UnsupportedArchitectureError(
                    f"residual connection '{name}' adds {g.size} neurons ('{g.name}') to "
                    f"{dst.size} neurons ('{dst.name}')"
                )
            layer = self.graph.layer_of(dst)
            self.graph.add_edges(g.ids, dst.ids, torch.ones(dst.size), layer, "residual")
        return dst


def _unique(groups: list[Neurons]) -> list[Neurons]:
    """``groups`` without repeats (by identity), in order."""
    unique: list[Neurons] = []
    for g in groups:
        if all(g is not u for u in unique):
            unique.append(g)
    return unique
