"""Parameter graphs and graph metanetworks: featurising checkpoints for the FMS surrogate.

- :func:`describe_module` records a module's structure (stored with each checkpoint);
- :func:`canonical_lora` reads a LoRA adapter's update in a form invariant to the adapter's
  own symmetry (any invertible change of basis of the rank);
- :func:`build_graph` turns ``(state_dict, structure)`` into a :class:`ParamGraph`, through
  the handler of each module type in :mod:`optuna_fms.metanet.layers` (one per file);
- :class:`GraphMetanetwork` embeds a batch of parameter graphs (invariant to permutations of
  hidden neurons);
- :class:`PretrainedMetanetwork` is one trained to predict how checkpoints fine-tune (shipped
  with the package, written by ``optuna-fms pretrain-metanet``);
- :func:`weight_statistics` and :class:`StatsFeaturizer` are the fallback for networks the
  graph cannot express (:class:`UnsupportedArchitectureError`).
"""

from __future__ import annotations

from optuna_fms.metanet._errors import UnsupportedArchitectureError
from optuna_fms.metanet._gmn import GraphMetanetwork
from optuna_fms.metanet._graph import DEFAULT_MAX_EDGES_PER_LAYER
from optuna_fms.metanet._graph import EDGE_FEATURES
from optuna_fms.metanet._graph import EDGE_TYPES
from optuna_fms.metanet._graph import NODE_FEATURES
from optuna_fms.metanet._graph import NODE_TYPES
from optuna_fms.metanet._graph import ParamGraph
from optuna_fms.metanet._graph import build_graph
from optuna_fms.metanet._lora import canonical_lora
from optuna_fms.metanet._pretrained import TARGETS
from optuna_fms.metanet._pretrained import PretrainedMetanetwork
from optuna_fms.metanet._stats import NUM_DEPTH_SLOTS
from optuna_fms.metanet._stats import QUANTILES
from optuna_fms.metanet._stats import STATS_DIM
from optuna_fms.metanet._stats import StatsFeaturizer
from optuna_fms.metanet._stats import weight_statistics
from optuna_fms.metanet._structure import describe_module


__all__ = [
    "DEFAULT_MAX_EDGES_PER_LAYER",
    "EDGE_FEATURES",
    "EDGE_TYPES",
    "GraphMetanetwork",
    "NODE_FEATURES",
    "NODE_TYPES",
    "NUM_DEPTH_SLOTS",
    "QUANTILES",
    "STATS_DIM",
    "StatsFeaturizer",
    "ParamGraph",
    "PretrainedMetanetwork",
    "TARGETS",
    "UnsupportedArchitectureError",
    "build_graph",
    "canonical_lora",
    "describe_module",
    "weight_statistics",
]
