"""Layer handlers: how each supported module type enters the parameter graph, one per file.

Each module of this package holds one :class:`Layer` (the normalisations share
:class:`Normalization`); :data:`LAYERS` is the table that :func:`~optuna_fms.metanet.build_graph`
dispatches through, by module class name. To support a new module type, write a file with a
:class:`Layer` subclass (drawing with a :class:`GraphWriter`) and its test, and add an
instance at the end of :data:`LAYERS`; or pass ``layers=LAYERS.with_layers(...)`` to
:func:`~optuna_fms.metanet.build_graph` without touching the package. A handler that draws
only the existing edge types (a normalisation or attention variant) leaves the features, and
so the shipped metanetwork, unchanged; a new edge type widens the edge features.
"""

from __future__ import annotations

from optuna_fms.metanet._writer import STRUCTURAL_EDGE_TYPES
from optuna_fms.metanet._writer import GraphWriter
from optuna_fms.metanet._writer import ModuleCall
from optuna_fms.metanet._writer import Neurons
from optuna_fms.metanet._writer import kernel_positions
from optuna_fms.metanet.layers._base import Layer
from optuna_fms.metanet.layers._registry import LayerRegistry
from optuna_fms.metanet.layers.attention import MultiheadAttention
from optuna_fms.metanet.layers.batch_norm import BatchNorm
from optuna_fms.metanet.layers.conv import Conv
from optuna_fms.metanet.layers.embedding import Embedding
from optuna_fms.metanet.layers.group_norm import GroupNorm
from optuna_fms.metanet.layers.instance_norm import InstanceNorm
from optuna_fms.metanet.layers.layer_norm import LayerNorm
from optuna_fms.metanet.layers.linear import Linear
from optuna_fms.metanet.layers.lora import LoRA
from optuna_fms.metanet.layers.norm import Normalization
from optuna_fms.metanet.layers.rms_norm import RMSNorm


LAYERS = LayerRegistry(
    Linear(),
    Conv(),
    Embedding(),
    STRUCTURAL_EDGE_TYPES,
    BatchNorm(),
    InstanceNorm(),
    LayerNorm(),
    GroupNorm(),
    RMSNorm(),
    MultiheadAttention(),
    LoRA(),
)
"""Every supported module type. The order is the column order of the edge types (the
metanetwork reads the one-hot columns by position: add new layers at the end) and the order in
which, without a structure, handlers are tried."""

__all__ = [
    "BatchNorm",
    "Conv",
    "Embedding",
    "GraphWriter",
    "GroupNorm",
    "InstanceNorm",
    "LAYERS",
    "Layer",
    "LayerNorm",
    "LayerRegistry",
    "Linear",
    "LoRA",
    "ModuleCall",
    "MultiheadAttention",
    "Neurons",
    "Normalization",
    "RMSNorm",
    "STRUCTURAL_EDGE_TYPES",
    "kernel_positions",
]
