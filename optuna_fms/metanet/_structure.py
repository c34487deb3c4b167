"""JSON-serialisable description of a module's data flow, stored next to checkpoints.

The description is what :func:`optuna_fms.metanet.build_graph` needs beyond the bare state
dict: which parametric layers exist, under which state-dict keys their tensors live, their
shapes and hyper-parameters (kernel size, number of heads, ...), and which node feeds which
(so that residual connections and attention blocks can be recovered).
"""

from __future__ import annotations

from collections.abc import Callable
import inspect
import operator
import threading
from typing import Any

import torch


STRUCTURE_FORMAT = 1

# Public (non-underscore) attributes of these simple types are copied into ``attrs``.
_PRIMITIVES = (bool, int, float, str, type(None))

# Attributes that carry no structural information.
_SKIPPED_ATTRS = frozenset({"training", "dump_patches", "call_super_init"})

# Private attributes worth recording anyway.
_KEPT_PRIVATE_ATTRS = frozenset({"_qkv_same_embed_dim"})


def describe_module(module: torch.nn.Module) -> dict[str, Any]:
    """Describe the structure of ``module`` as a JSON-serialisable dictionary.

    The data flow is recovered with :mod:`torch.fx` symbolic tracing (modules from ``torch.nn``
    are kept as leaves; ``nn.TransformerEncoder`` / ``nn.TransformerEncoderLayer`` are expanded
    into their attention, feed-forward, residual and normalisation steps). If tracing fails
    (data-dependent control flow), the description falls back to the registration order of the
    leaf modules, chained one after the other, and says so under ``"trace": "order"``.

    Parameters
    ----------
    module:
        The network whose ``state_dict()`` is checkpointed.

    Returns
    -------
    dict
        ``{"format": 1, "module": <class name>, "trace": "fx" | "order", "nodes": [...],
        "buffers": [...]}``, where ``buffers`` lists the state-dict keys that are buffers, not
        parameters (a buffer no layer reads, such as a fixed positional encoding, is ignored by
        the graph, while an unread parameter is an error).
        ``nodes`` is in topological order; each node is a dictionary with

        - ``name``: unique name; ``inputs``: names of the nodes it reads (data flow);
        - ``op``: ``"input"``, ``"module"``, ``"function"``, ``"method"`` or ``"output"``;
        - ``target``: module class name (``"Conv2d"``, ``"MultiheadAttention"``, ...),
          function name (``"add"``, ``"flatten"``, ``"matmul"``, ...) or method name;
        - for modules: ``path`` (qualified name in the model), ``params`` (local name ->
          state-dict key, buffers included), ``shapes`` (local name -> shape) and ``attrs``
          (kernel size, stride, groups, number of heads, eps, ...);
        - for functions, methods and traced module calls: ``args`` and ``kwargs`` (literals,
          with ``{"node": name}`` standing for a node's output).

    Examples
    --------
    >>> import json
    >>> import torch
    >>> from optuna_fms.metanet import describe_module
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> desc = describe_module(net)
    >>> [n["target"] for n in desc["nodes"] if n["op"] == "module"]
    ['Linear', 'ReLU', 'Linear']
    >>> desc["nodes"][1]["params"]
    {'weight': '0.weight', 'bias': '0.bias'}
    >>> _ = json.dumps(desc)
    """
    try:
        if isinstance(module, (torch.nn.TransformerEncoder, torch.nn.TransformerEncoderLayer)):
            nodes = [{"name": "input", "op": "input", "target": "src", "inputs": []}]
            last = _expand_transformer(module, "", "input", nodes)
            nodes.append({"name": "output", "op": "output", "target": "output", "inputs": [last]})
        else:
            nodes = _describe_fx(module)
        trace = "fx"
    except Exception:  # noqa: BLE001 - any tracing failure falls back to module order
        nodes = _describe_order(module)
        trace = "order"
    param_names = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    buffers = [k for k in module.state_dict(keep_vars=True) if k not in param_names]
    return {
        "format": STRUCTURE_FORMAT,
        "module": type(module).__name__,
        "trace": trace,
        "nodes": nodes,
        "buffers": buffers,
    }


# torch.fx traces by patching ``torch.nn.Module.__call__`` and ``__getattr__`` on the class, for
# the whole process, and keeps the active patcher in a module global. Two traces at once would
# restore each other's patches (leaving one installed for good), so traces are serialised.
_TRACE_LOCK = threading.Lock()


class _Tracer(torch.fx.Tracer):
    """fx tracer that keeps ``nn`` containers transparent and affects its own thread only.

    While :meth:`trace` runs, every module call and module attribute lookup in the process goes
    through the tracer. Calls from other threads (a surrogate fit, another trial's training
    under ``study.optimize(n_jobs=...)``) are handed straight to the original implementations,
    and no function of theirs is auto-wrapped, so they compute exactly what they would without
    a trace.
    """

    def __init__(self) -> None:
        self._owner: int | None = None
        super().__init__()

    def _foreign(self) -> bool:
        return self._owner is not None and threading.get_ident() != self._owner

    @property  # type: ignore[override]
    def _autowrap_function_ids(self) -> set[int]:
        return set() if self._foreign() else self._own_autowrap_function_ids

    @_autowrap_function_ids.setter
    def _autowrap_function_ids(self, ids: set[int]) -> None:
        self._own_autowrap_function_ids = ids

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> torch.fx.Graph:
        with _TRACE_LOCK:
            self._owner = threading.get_ident()
            try:
                return super().trace(root, concrete_args)
            finally:
                self._owner = None

    def call_module(
        self,
        m: torch.nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if self._foreign():
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._foreign():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)):
            return False
        return super().is_leaf_module(m, module_qualified_name)


def _describe_fx(module: torch.nn.Module) -> list[dict[str, Any]]:
    concrete: dict[str, Any] = {}
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        for i, (name, p) in enumerate(signature.parameters.items()):
            if i > 0 and p.default is not inspect.Parameter.empty:
                concrete[name] = p.default
    graph = _Tracer().trace(module, concrete_args=concrete or None)
    submodules = dict(module.named_modules())
    alias: dict[str, str] = {}
    out: list[dict[str, Any]] = []

    def ref(name: str) -> str:
        return alias.get(name, name)

    for node in graph.nodes:
        inputs = [ref(n.name) for n in node.all_input_nodes]
        if node.op == "placeholder":
            if node.users:
                out.append(
                    {"name": node.name, "op": "input", "target": str(node.target), "inputs": []}
                )
        elif node.op == "output":
            out.append({"name": node.name, "op": "output", "target": "output", "inputs": inputs})
        elif node.op == "call_module":
            path = str(node.target)
            sub = submodules[path]
            if isinstance(sub, (torch.nn.TransformerEncoder, torch.nn.TransformerEncoderLayer)):
                src = inputs[0] if inputs else None
                if src is None:
                    raise ValueError("transformer block without input")
                alias[node.name] = _expand_transformer(sub, path, src, out)
            else:
                entry = _module_node(node.name, path, sub, inputs)
                entry["args"] = [_jsonable(a, ref) for a in node.args]
                entry["kwargs"] = {k: _jsonable(v, ref) for k, v in node.kwargs.items()}
                out.append(entry)
        elif node.op == "get_attr":
            path = str(node.target)
            out.append(
                {
                    "name": node.name,
                    "op": "param",
                    "target": path,
                    "inputs": [],
                    "params": {"value": path},
                }
            )
        else:
            target = node.target
            if node.op == "call_function":
                tname = _function_name(target)
                op = "function"
            else:
                tname = str(target)
                op = "method"
            out.append(
                {
                    "name": node.name,
                    "op": op,
                    "target": tname,
                    "inputs": inputs,
                    "args": [_jsonable(a, ref) for a in node.args],
                    "kwargs": {k: _jsonable(v, ref) for k, v in node.kwargs.items()},
                }
            )
    return out


def _describe_order(module: torch.nn.Module) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "input", "op": "input", "target": "x", "inputs": []}]
    prev = "input"
    tracer = _Tracer()
    seen_under: list[str] = []
    for path, sub in module.named_modules():
        if path == "" or any(path.startswith(p + ".") for p in seen_under):
            continue
        is_leaf = tracer.is_leaf_module(sub, path) or not any(True for _ in sub.children())
        if not is_leaf:
            continue
        seen_under.append(path)
        if isinstance(sub, (torch.nn.TransformerEncoder, torch.nn.TransformerEncoderLayer)):
            prev = _expand_transformer(sub, path, prev, out)
            continue
        name = path.replace(".", "_")
        out.append(_module_node(name, path, sub, [prev]))
        prev = name
    out.append({"name": "output", "op": "output", "target": "output", "inputs": [prev]})
    return out


def _module_node(name: str, path: str, sub: torch.nn.Module, inputs: list[str]) -> dict[str, Any]:
    params: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    for key, tensor in sub.state_dict(keep_vars=True).items():
        full = f"{path}.{key}" if path else key
        params[key] = full
        shapes[key] = list(tensor.shape)
    return {
        "name": name,
        "op": "module",
        "target": type(sub).__name__,
        "path": path,
        "inputs": inputs,
        "params": params,
        "shapes": shapes,
        "attrs": _module_attrs(sub),
    }


def _module_attrs(sub: torch.nn.Module) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for key, value in vars(sub).items():
        if key in _SKIPPED_ATTRS:
            continue
        if key.startswith("_") and key not in _KEPT_PRIVATE_ATTRS:
            continue
        if isinstance(value, _PRIMITIVES):
            if isinstance(value, float) and value != value:
                continue
            attrs[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, _PRIMITIVES) for v in value):
            attrs[key] = list(value)
        elif isinstance(value, Callable):  # type: ignore[arg-type]
            fname = getattr(value, "__name__", None)
            if isinstance(fname, str):
                attrs[key] = fname
    return attrs


def _expand_transformer(
    sub: torch.nn.Module, path: str, src: str, out: list[dict[str, Any]]
) -> str:
    """Append the steps of an ``nn.TransformerEncoder(Layer)`` and return the output name."""
    if isinstance(sub, torch.nn.TransformerEncoder):
        x = src
        for i, layer in enumerate(sub.layers):
            x = _expand_transformer(layer, _join(path, f"layers.{i}"), x, out)
        if sub.norm is not None:
            full = _join(path, "norm")
            name = full.replace(".", "_")
            out.append(_module_node(name, full, sub.norm, [x]))
            x = name
        return x
    if not isinstance(sub, torch.nn.TransformerEncoderLayer):
        raise TypeError(type(sub).__name__)
    prefix = path.replace(".", "_") + "_" if path else ""

    def mod(local: str, inp: str) -> str:
        name = prefix + local
        full = f"{path}.{local}" if path else local
        out.append(_module_node(name, full, getattr(sub, local), [inp]))
        return name

    def add(local: str, a: str, b: str) -> str:
        name = prefix + local
        out.append(
            {
                "name": name,
                "op": "function",
                "target": "add",
                "inputs": [a, b],
                "args": [{"node": a}, {"node": b}],
                "kwargs": {},
            }
        )
        return name

    def act(inp: str) -> str:
        name = prefix + "activation"
        fname = getattr(sub.activation, "__name__", type(sub.activation).__name__)
        out.append(
            {
                "name": name,
                "op": "function",
                "target": str(fname),
                "inputs": [inp],
                "args": [{"node": inp}],
                "kwargs": {},
            }
        )
        return name

    def attention(inp: str) -> str:
        name = prefix + "self_attn"
        full = f"{path}.self_attn" if path else "self_attn"
        out.append(_module_node(name, full, sub.self_attn, [inp, inp, inp]))
        return name

    def feed_forward(inp: str) -> str:
        return mod("linear2", act(mod("linear1", inp)))

    x = src
    if sub.norm_first:
        x = add("add1", x, attention(mod("norm1", x)))
        x = add("add2", x, feed_forward(mod("norm2", x)))
    else:
        x = mod("norm1", add("add1", x, attention(x)))
        x = mod("norm2", add("add2", x, feed_forward(x)))
    return x


def _join(path: str, local: str) -> str:
    return f"{path}.{local}" if path else local


def _function_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    name = getattr(target, "__name__", None)
    if isinstance(name, str):
        return name
    return type(target).__name__


def _jsonable(value: Any, ref: Callable[[str], str]) -> Any:
    if isinstance(value, torch.fx.Node):
        return {"node": ref(value.name)}
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, ref) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, ref) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, slice):
        return {
            "slice": [
                _jsonable(value.start, ref),
                _jsonable(value.stop, ref),
                _jsonable(value.step, ref),
            ]
        }
    return repr(value)
