"""Checkpoint features for the surrogate: a registry of featurised weights and its encoder.

Rows of the surrogate refer to weights by an index into a :class:`WeightBank`; the
:class:`CheckpointEncoder` (a module inside the deep kernel's feature extractor, trained with
the GP) embeds them with the graph metanetwork, or with weight statistics where the graph
cannot express the network, or as a learned "no weights" vector (index ``-1``).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
import copy
import hashlib
import logging
from typing import Any
from typing import Literal
from typing import get_args

import numpy as np
import torch
from torch import nn


_logger = logging.getLogger("optuna_fms")

WeightsKind = Literal["gmn", "stats"]
"""How checkpoints enter the surrogate: a graph metanetwork or per-layer weight statistics."""
WEIGHT_KINDS: tuple[str, ...] = get_args(WeightsKind)
GMN_EVERY = 25
"""A GMN forward/backward over all checkpoints is costly, so the metanetwork takes a step every
``GMN_EVERY`` epochs of the surrogate fit (on the same marginal likelihood); the kernel and the
rest of the extractor step every epoch, reading the embeddings of the last GMN pass."""
EMBED_DIM = 16
SURROGATE_MAX_EDGES_PER_LAYER = 256
"""Edge budget per layer of the graphs the surrogate reads (see ``build_graph``)."""


def fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Cheap content key of a state dict: names, shapes and a strided sample of each tensor."""
    h = hashlib.sha1()
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            continue
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)][:256].to(torch.float64)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(sample.cpu().numpy().tobytes())
    return h.hexdigest()


class WeightBank:
    """Featurised checkpoints, each built once and referred to by index.

    ``kind="gmn"`` builds parameter graphs; a network the graph cannot express falls back to
    weight statistics, with one warning naming the unsupported module. ``kind="stats"``
    always uses statistics. ``metanetwork`` is an optional
    :class:`~optuna_fms.metanet.PretrainedMetanetwork` that embeds the graphs (``None``: an
    untrained, seeded metanetwork). The bank is shared, never copied, by the surrogate's models.
    """

    def __init__(self, kind: WeightsKind, metanetwork: Any = None) -> None:
        if kind not in WEIGHT_KINDS:
            raise ValueError(f"weights must be one of {WEIGHT_KINDS} or None, got {kind!r}.")
        self.kind = kind
        self.metanetwork = metanetwork  # a PretrainedMetanetwork, or None: untrained
        self.items: list[tuple[str, Any]] = []  # ("graph", ParamGraph) or ("stats", Tensor)
        self._index: dict[str, int] = {}
        self._warned = False
        self._embedded: list[Any] = []
        self._fixed_gmn: nn.Module | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> WeightBank:
        return self

    def embedding(self, index: np.ndarray) -> np.ndarray:
        """Fixed embeddings of bank items, ``-1`` rows all zeros: ``(n, k)`` array.

        Weight statistics as they are; parameter graphs as the pretrained metanetwork's
        predictions of how they fine-tune (:data:`~optuna_fms.metanet.TARGETS`), or without
        one through a graph metanetwork with a fixed seed, never trained. For a model that
        reads a few fixed inputs from the weights
        (:class:`~optuna_fms._surrogate._gp.GPSurrogate`).
        """
        idx = np.asarray(index, dtype=float).astype(int)
        while len(self._embedded) < len(self.items):
            self._embedded.append(self._embed_fixed(self.items[len(self._embedded)]))
        dim = max((len(e) for e in self._embedded), default=1)
        out = np.zeros((len(idx), dim))
        for row, i in enumerate(idx):
            if i >= 0:
                e = self._embedded[i]
                out[row, : len(e)] = e
        return out

    def _embed_fixed(self, item: tuple[str, Any]) -> np.ndarray:
        kind, value = item
        with torch.no_grad():
            if kind == "stats":
                return value.double().numpy()
            if self.metanetwork is not None:
                return self.metanetwork.predict([value])[0].double().numpy()
            if self._fixed_gmn is None:
                from optuna_fms.metanet import GraphMetanetwork

                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    self._fixed_gmn = GraphMetanetwork(out_dim=EMBED_DIM).eval()
            return self._fixed_gmn([value])[0].double().numpy()

    def __len__(self) -> int:
        return len(self.items)

    def index(self, key: str, load: Callable[[], tuple[Mapping[str, torch.Tensor], Any]]) -> int:
        """Index of the weights under ``key``, featurising ``load()`` on first sight.

        ``load`` returns ``(state_dict, structure_or_None)``.
        """
        if key in self._index:
            return self._index[key]
        state_dict, structure = load()
        self.items.append(self._featurise(state_dict, structure))
        self._index[key] = len(self.items) - 1
        return self._index[key]

    def _featurise(
        self, state_dict: Mapping[str, torch.Tensor], structure: Any
    ) -> tuple[str, Any]:
        from optuna_fms.metanet import UnsupportedArchitectureError
        from optuna_fms.metanet import build_graph
        from optuna_fms.metanet import weight_statistics

        floats = {k: v.float() for k, v in state_dict.items() if v.is_floating_point()}
        if self.kind == "gmn":
            try:
                graph = build_graph(
                    floats, structure, max_edges_per_layer=SURROGATE_MAX_EDGES_PER_LAYER
                )
                return "graph", graph
            except UnsupportedArchitectureError as err:
                if not self._warned:
                    self._warned = True
                    _logger.warning(
                        "The graph metanetwork cannot express this network (%s); FMS uses "
                        "weight statistics for such checkpoints instead.",
                        err,
                    )
        return "stats", weight_statistics(floats).float()


class CheckpointEncoder(nn.Module):
    """Embeds checkpoint indices (float column of the packed rows; ``-1`` = no weights).

    With a pretrained metanetwork in the bank, the graph metanetwork starts from its weights
    and stays frozen unless ``fine_tune``; without one it starts untrained and always trains.

    The nets stay in float32 whatever the surrogate's dtype; the output is cast by the caller.
    During training, ``grad_pass`` (set by the fit loop) makes the next call embed every
    checkpoint with gradients; otherwise cached embeddings are used and extended without
    gradients for checkpoints registered since.
    """

    def __init__(
        self, bank: WeightBank, out_dim: int = EMBED_DIM, fine_tune: bool = False
    ) -> None:
        super().__init__()
        from optuna_fms.metanet import StatsFeaturizer

        self.bank = bank
        self.out_dim = out_dim
        self.stats_net = StatsFeaturizer(out_dim=out_dim)
        self.gmn: nn.Module | None = None
        if bank.kind == "gmn" and bank.metanetwork is not None:
            self.gmn = copy.deepcopy(bank.metanetwork.gmn)
            if self.gmn.out_dim != out_dim:
                raise ValueError(
                    f"The pretrained metanetwork embeds into {self.gmn.out_dim} numbers, the "
                    f"deep kernel expects {out_dim}."
                )
            self.gmn.requires_grad_(fine_tune)
        elif bank.kind == "gmn":
            from optuna_fms.metanet import GraphMetanetwork

            self.gmn = GraphMetanetwork(out_dim=out_dim)
        self.missing = nn.Parameter(torch.zeros(out_dim))
        self.grad_pass = True
        self.grad_every = GMN_EVERY if self.gmn is not None else 1
        self._cache = torch.zeros(0, out_dim)
        self._have = torch.zeros(0, dtype=torch.bool)
        self._shift = torch.zeros(out_dim)
        self._scale = torch.ones(out_dim)

    def invalidate(self) -> None:
        """Forget cached embeddings (after the featuriser's parameters changed)."""
        self._cache = torch.zeros(0, self.out_dim)
        self._have = torch.zeros(0, dtype=torch.bool)

    def _embed(self, which: torch.Tensor) -> torch.Tensor:
        """Raw embeddings of the bank items ``which`` (differentiable)."""
        items = [self.bank.items[int(i)] for i in which]
        out = torch.zeros(len(items), self.out_dim)
        graphs = [i for i, (kind, _) in enumerate(items) if kind == "graph"]
        stats = [i for i, (kind, _) in enumerate(items) if kind == "stats"]
        if graphs:
            assert self.gmn is not None
            emb = self.gmn([items[i][1] for i in graphs])
            out = out.index_put((torch.tensor(graphs),), emb)
        if stats:
            emb = self.stats_net(torch.stack([items[i][1] for i in stats]))
            out = out.index_put((torch.tensor(stats),), emb)
        return out

    def _grow(self) -> None:
        """Give the cache a row for every checkpoint registered since it was last sized."""
        grow = len(self.bank) - len(self._cache)
        if grow > 0:
            self._cache = torch.cat([self._cache, torch.zeros(grow, self.out_dim)])
            self._have = torch.cat([self._have, torch.zeros(grow, dtype=torch.bool)])

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        idx = index.long()
        known = idx >= 0
        out = self.missing.expand(len(idx), -1)
        if not bool(known.any()):
            return out
        # Only the checkpoints the rows refer to are embedded: the bank keeps every checkpoint
        # ever seen, the rows of one fit refer to a bounded number of them.
        needed = torch.unique(idx[known])
        self._grow()
        if self.training and self.grad_pass:
            emb = self._embed(needed)
            # Standardise each dimension over the checkpoints of the training rows, so that
            # the weights weigh as much as the other inputs of the feature extractor; the
            # moments stay fixed between passes so that other checkpoints do not shift these.
            if len(needed) > 1:
                self._shift = emb.detach().mean(0)
                self._scale = emb.detach().std(0).clamp_min(1e-6)
            emb = (emb - self._shift) / self._scale
            self._cache[needed] = emb.detach()
            self._have[needed] = True
        else:
            todo = needed[~self._have[needed]]
            if len(todo):
                with torch.no_grad():
                    self._cache[todo] = (self._embed(todo) - self._shift) / self._scale
                self._have[todo] = True
            emb = self._cache[needed]
        out = out.clone()
        out[known] = emb[torch.searchsorted(needed, idx[known])]
        return out
