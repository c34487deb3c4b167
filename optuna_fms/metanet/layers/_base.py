"""The interface every layer handler implements."""

from __future__ import annotations

import abc
from collections.abc import Collection
from collections.abc import Mapping
from typing import Any
from typing import ClassVar

import torch

from optuna_fms.metanet._writer import GraphWriter
from optuna_fms.metanet._writer import ModuleCall
from optuna_fms.metanet._writer import Neurons


class Layer(abc.ABC):
    """How the modules of some types become nodes and edges of the parameter graph.

    A handler names the module classes it reads (``modules``, as ``type(m).__name__``),
    declares the edge types it introduces (``edge_types``), draws its nodes and edges with
    a :class:`~optuna_fms.metanet.layers.GraphWriter` in :meth:`build`, and may recognise its
    modules from their tensors alone in :meth:`infer`. Handlers keep no state: one instance
    serves every call. Register one in a :class:`~optuna_fms.metanet.layers.LayerRegistry`.

    Attributes
    ----------
    modules:
        Class names of the modules this handler builds.
    edge_types:
        Edge types this handler introduces, in column order. Leave out the structural ones
        (``bias``, ``gamma``, ``beta``, ``residual``) that any layer may draw. A new type widens
        the edge features, so a saved metanetwork no longer reads the graphs: retrain it.

    Examples
    --------
    A handler for ``torch.nn.PReLU`` that draws its slopes as a learned scale of the neurons:

    >>> import torch
    >>> from optuna_fms.metanet import build_graph, describe_module
    >>> from optuna_fms.metanet.layers import LAYERS, Layer
    >>> class PReLU(Layer):
    ...     modules = ("PReLU",)
    ...
    ...     def build(self, graph, call):
    ...         slope = graph.weight(call)
    ...         layer = graph.next_layer()
    ...         node = graph.add_nodes(1, layer, "gamma")
    ...         graph.add_edges(node.expand(slope.numel()), call.src.ids, slope, layer, "gamma")
    ...         return call.src
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.PReLU(4), torch.nn.Linear(4, 2))
    >>> g = build_graph(net.state_dict(), describe_module(net), layers=LAYERS.with_layers(PReLU()))
    >>> g.num_edges  # 12 + 4 (first linear), 4 slopes, 8 + 2 (second linear)
    30
    """

    modules: ClassVar[tuple[str, ...]] = ()
    edge_types: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def build(self, graph: GraphWriter, call: ModuleCall) -> Neurons:
        """Draw the nodes and edges of one call of a module; return the neurons it outputs."""

    def infer(self, tensors: Mapping[str, torch.Tensor]) -> bool:
        """Without a structure, whether a module holding ``tensors`` is of this kind.

        ``tensors`` maps local names (``"weight"``, ``"running_var"``, ...) to the state-dict
        tensors of one module. The default recognises nothing: such modules need a structure.
        """
        return False

    def claims(self, names: Collection[str]) -> bool:
        """Whether this handler builds a module holding tensors of these local ``names``,
        whatever its class name (a wrapper such as peft's LoRA ``Linear``, named like the
        layer it wraps). Checked before the class name and before :meth:`Layer.infer`, the handlers
        registered last first. The default claims nothing."""
        return False

    def split_key(self, key: str) -> tuple[str, str] | None:
        """Without a structure, ``(module path, local name)`` of a state-dict key of a module
        this handler claims, where the module's tensors lie deeper than one level (``None``:
        split at the last dot)."""
        return None

    def build_alone(self, graph: GraphWriter, structure: Mapping[str, Any] | None) -> bool:
        """Draw a state dict that holds only this handler's tensors (an adapter saved without
        its base network) and return ``True``; ``False`` to leave it to the builder."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _has_stats(tensors: Mapping[str, torch.Tensor]) -> bool:
    return "running_mean" in tensors or "running_var" in tensors


def _weight_dim(tensors: Mapping[str, torch.Tensor]) -> int | None:
    weight = tensors.get("weight")
    return None if weight is None else weight.dim()
