"""JSON-serialisable description of a module's data flow, stored next to checkpoints.

The description is what :func:`optuna_fms.metanet.build_graph` needs beyond the bare state
dict: which parametric layers exist, under which state-dict keys their tensors live, their
shapes and hyper-parameters (kernel size, number of heads, ...), and which node feeds which
(so that residual connections and attention blocks can be recovered).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
import functools
import inspect
import math
import operator
from types import FunctionType
from types import SimpleNamespace
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


class _Tracer(torch.fx.Tracer):
    """fx tracer that keeps ``nn`` containers transparent (``torch.nn`` layers stay leaves)."""

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)):
            return False
        lora = isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict)  # peft: layers/lora.py
        return lora or super().is_leaf_module(m, module_qualified_name)


# Hook tables of a module that ``nn.Module.__call__`` runs; emptied on the shadow of a leaf,
# whose call is recorded, not run.
_HOOK_TABLES = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)


def _trace(module: torch.nn.Module, concrete_args: dict[str, Any] | None) -> torch.fx.Graph:
    """Symbolically trace ``module`` with :mod:`torch.fx`, touching no process-wide state.

    ``torch.fx.Tracer.trace`` patches ``torch.nn.Module.__call__`` and ``__getattr__`` and the
    auto-wrapped functions (``math.*``) for the whole process and sets fx's global "tracing"
    flag, so a forward pass in another thread during a trace (a trial under
    ``study.optimize(n_jobs=...)``) runs through the tracer or sees the flag (a
    ``torch.compile``-d model then raises). Here the module tree is mirrored instead by
    shallow copies, "shadows", that share the original's tensors and are reachable from the
    traced ``forward`` only: a shadow's ``forward`` is an instance attribute that hands the
    call to the tracer (a leaf becomes one ``call_module`` node, a container is traced
    through), and reading one of its parameters or buffers gives a ``get_attr`` proxy. Each
    traced ``forward`` runs on a private copy of its module's globals in which ``math``
    functions and functions registered with ``torch.fx.wrap`` record a node when given a
    proxy, which ``Tracer.trace`` does by patching them in place. The graph is the one
    ``Tracer.trace`` records (helpers called from ``forward`` see their own globals, so
    ``math`` on a proxy there fails and the description falls back to module order).
    """
    tracer = _Tracer()
    fn = _rebind(type(module).forward, {})
    tracer.root = module
    tracer.root_module_name = module._get_name()
    tracer.graph = torch.fx.Graph(tracer_cls=_Tracer)
    tracer.tensor_attrs = {}
    for path, sub in module.named_modules(remove_duplicate=False):
        for key, value in vars(sub).items():
            if isinstance(value, (torch.Tensor, torch.ScriptObject)):
                tracer.tensor_attrs[value] = _join(path, key)
    paths = {id(sub): path for path, sub in module.named_modules()}
    shadows: dict[int, torch.nn.Module] = {}
    proxies: dict[str, Any] = {}
    namespaces: dict[int, dict[str, Any]] = {}

    def shadow(sub: torch.nn.Module) -> torch.nn.Module:
        if id(sub) in shadows:
            return shadows[id(sub)]
        copy = object.__new__(type(sub))
        shadows[id(sub)] = copy
        state = vars(copy)
        state.update(vars(sub))
        state["_parameters"] = _ProxyTable(sub._parameters, tracer, proxies)
        state["_buffers"] = _ProxyTable(sub._buffers, tracer, proxies)
        state["_modules"] = {
            k: None if child is None else shadow(child) for k, child in sub._modules.items()
        }
        if tracer.is_leaf_module(copy, paths[id(sub)]):
            state.update((table, OrderedDict()) for table in _HOOK_TABLES if table in state)
        forward = functools.partial(_rebind(type(sub).forward, namespaces), copy)
        state["forward"] = functools.partial(_call_shadow, tracer, copy, forward)
        return copy

    root = shadow(module)
    tracer.submodule_paths = {shadows[i]: path for i, path in paths.items()}
    fn, args = tracer.create_args_for_root(fn, True, concrete_args)
    out = fn(root, *args[1:])  # args[0] is the module itself
    tracer.create_node("output", "output", (tracer.create_arg(out),), {})
    return tracer.graph


def _call_shadow(
    tracer: _Tracer,
    shadow: torch.nn.Module,
    forward: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> Any:
    return tracer.call_module(shadow, forward, args, kwargs)


def _rebind(fn: Any, namespaces: dict[int, dict[str, Any]]) -> FunctionType:
    """``fn`` on a copy of its globals with the auto-wrapped functions wrapped (see _trace)."""
    if not isinstance(fn, FunctionType):
        raise TypeError(f"cannot trace {fn!r}")
    key = id(fn.__globals__)
    if key not in namespaces:
        namespace = dict(fn.__globals__)
        registered = getattr(torch.fx._symbolic_trace, "_wrapped_fns_to_patch", {})
        for name, value in fn.__globals__.items():
            if value is math:
                namespace[name] = _MATH
            elif (key, name) in registered or (
                not name.startswith("_") and callable(value) and id(value) in _MATH_IDS
            ):
                namespace[name] = _autowrapped(value)
        namespaces[key] = namespace
    rebound = FunctionType(
        fn.__code__, namespaces[key], fn.__name__, fn.__defaults__, fn.__closure__
    )
    rebound.__kwdefaults__ = fn.__kwdefaults__
    return rebound


def _autowrapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` that records a ``call_function`` node when an argument is a proxy."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        found: list[torch.fx.Proxy] = []
        torch.fx.node.map_aggregate(
            (args, kwargs), lambda a: found.append(a) if isinstance(a, torch.fx.Proxy) else None
        )
        if found:
            return found[0].tracer.create_proxy("call_function", fn, args, kwargs)
        return fn(*args, **kwargs)

    return wrapped


# ``math`` as the traced code sees it: its public functions auto-wrapped, as torch.fx does.
_MATH_IDS = frozenset(
    id(v) for k, v in vars(math).items() if not k.startswith("_") and callable(v)
)
_MATH = SimpleNamespace(
    **{
        k: _autowrapped(v) if id(v) in _MATH_IDS and not k.startswith("_") else v
        for k, v in vars(math).items()
    }
)


class _ProxyTable(dict):  # type: ignore[type-arg]
    """A shadow's parameters or buffers: reading one by name gives the tracer's proxy."""

    def __init__(self, table: dict[str, Any], tracer: _Tracer, cache: dict[str, Any]) -> None:
        super().__init__(table)
        self._tracer = tracer
        self._cache = cache

    def __getitem__(self, key: str) -> Any:
        return self._tracer.getattr(key, super().__getitem__(key), self._cache)


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
    graph = _trace(module, concrete or None)
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
        elif isinstance(value, dict) and all(isinstance(v, _PRIMITIVES) for v in value.values()):
            attrs[key] = {str(k): v for k, v in value.items()}  # peft: scaling per adapter
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
