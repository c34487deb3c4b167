"""The table of supported module types: module class name -> layer handler."""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

import torch

from optuna_fms.metanet._writer import STRUCTURAL_EDGE_TYPES
from optuna_fms.metanet._writer import GraphWriter
from optuna_fms.metanet._writer import edge_features
from optuna_fms.metanet.layers._base import Layer


class LayerRegistry:
    """Layer handlers by module class name, and the edge types they draw, in column order.

    Parameters
    ----------
    *entries:
        Layer handlers, and where the structural edge types go: a tuple of edge type names
        (``STRUCTURAL_EDGE_TYPES``) among them places those columns; the edge types are the
        types of the entries in order, each once (structural ones missing are appended).
        Without a structure, :meth:`infer` tries the handlers in this order.

    Raises
    ------
    ValueError
        If two handlers claim the same module class.

    Examples
    --------
    >>> from optuna_fms.metanet.layers import LAYERS
    >>> LAYERS.get("Conv2d"), LAYERS.get("GRU")
    (Conv(), None)
    >>> LAYERS.edge_types[:4]
    ('linear', 'conv', 'embedding', 'bias')
    """

    def __init__(self, *entries: Layer | tuple[str, ...]) -> None:
        self._entries = entries
        self._by_module: dict[str, Layer] = {}
        types: list[str] = []
        for entry in (*entries, STRUCTURAL_EDGE_TYPES):
            if isinstance(entry, Layer):
                for name in entry.modules:
                    if name in self._by_module:
                        raise ValueError(
                            f"module type {name!r} is claimed by both {self._by_module[name]!r} "
                            f"and {entry!r}"
                        )
                    self._by_module[name] = entry
                entry = entry.edge_types
            types.extend(t for t in entry if t not in types)
        self.layers = tuple(e for e in entries if isinstance(e, Layer))
        self.edge_types = tuple(types)
        self.edge_features = edge_features(self.edge_types)

    def get(self, module_type: str) -> Layer | None:
        """The handler of modules of class ``module_type`` (``None`` if none is registered)."""
        return self._by_module.get(module_type)

    def infer(self, tensors: Mapping[str, torch.Tensor]) -> Layer | None:
        """The first handler that recognises a module's ``tensors`` (see :meth:`Layer.infer`)."""
        return next((layer for layer in self.layers if layer.infer(tensors)), None)

    def claimant(self, names: Collection[str]) -> Layer | None:
        """The last-registered handler that claims a module's local tensor ``names``
        (:meth:`Layer.claims`), so that one added by :meth:`with_layers` overrides."""
        return next((layer for layer in reversed(self.layers) if layer.claims(names)), None)

    def split_key(self, key: str) -> tuple[str, str]:
        """``(module path, local name)`` of a state-dict key (:meth:`Layer.split_key`)."""
        for layer in reversed(self.layers):
            split = layer.split_key(key)
            if split is not None:
                return split
        prefix, _, local = key.rpartition(".")
        return prefix, local

    def build_alone(self, graph: GraphWriter, structure: Mapping[str, Any] | None) -> bool:
        """Whether a handler drew the whole state dict by itself (:meth:`Layer.build_alone`)."""
        return any(layer.build_alone(graph, structure) for layer in reversed(self.layers))

    def with_layers(self, *layers: Layer) -> LayerRegistry:
        """A new registry with ``layers`` added at the end (their edge types last)."""
        return LayerRegistry(*self._entries, *layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __contains__(self, module_type: object) -> bool:
        return module_type in self._by_module

    def __repr__(self) -> str:
        return f"LayerRegistry({', '.join(map(repr, self._entries))})"
