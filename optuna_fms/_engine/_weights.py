"""Checkpoints and starting weights read into the weight bank: the surrogate's weight input.

A row of the surrogate refers to weights by their index in the
:class:`~optuna_fms._surrogate.WeightBank`; :class:`WeightInputs` finds that index for a
curve at a budget (the trial's newest checkpoint before it, else its starting weights).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import logging
import os
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial
import torch

from optuna_fms._checkpoint import read_checkpoint
from optuna_fms._surrogate import Curve
from optuna_fms._surrogate import WeightBank
from optuna_fms._surrogate._weights import WeightsKind
from optuna_fms._surrogate._weights import fingerprint


_logger = logging.getLogger("optuna_fms")
_MAX_START_KEYS = 1024
"""Start-weight objects whose bank index is remembered (oldest forgotten first)."""


def _load_metanetwork(spec: str | os.PathLike[str] | None) -> Any:
    """The :class:`~optuna_fms.metanet.PretrainedMetanetwork` that ``spec`` names, or ``None``."""
    if spec is None:
        return None
    from optuna_fms.metanet import PretrainedMetanetwork

    return PretrainedMetanetwork.load(None if spec == "pretrained" else spec)


class WeightInputs:
    """The weight bank of an engine and the bank indices its rows and candidates read.

    Parameters
    ----------
    weights:
        ``"gmn"``, ``"stats"`` or ``None`` (no weight input: :attr:`bank` is ``None``).
    metanetwork:
        With ``weights="gmn"``: ``"pretrained"``, a metanetwork file or ``None`` (untrained).
    start_weights:
        ``params -> state dict or module``: the weights a configuration starts from.
    artifact_store:
        ``() -> store`` giving the artifact store checkpoints are read from.

    Examples
    --------
    >>> inputs = WeightInputs("stats", start_weights=lambda p: {"w": torch.ones(2, 2)})
    >>> inputs.start_indices([{"x": 0.1}, {"x": 0.2}]).tolist()  # the same weights
    [0.0, 0.0]
    >>> WeightInputs(None).start_indices([{"x": 0.1}]) is None
    True
    """

    def __init__(
        self,
        weights: WeightsKind | None,
        *,
        metanetwork: str | os.PathLike[str] | None = "pretrained",
        start_weights: Callable[[dict[str, Any]], Any] | None = None,
        artifact_store: Callable[[], Any] | None = None,
    ) -> None:
        self.kind = weights
        self._start_weights = start_weights
        self._artifact_store = artifact_store
        self.metanetwork = _load_metanetwork(metanetwork) if weights == "gmn" else None
        self.bank = self._new_bank()
        self._warned_checkpoint = False
        self._unreadable: set[str] = set()
        self._start_keys: dict[int, tuple[Any, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["bank"] = None
        state["_start_keys"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.bank = self._new_bank()

    def _new_bank(self) -> WeightBank | None:
        if self.kind is None:
            return None
        return WeightBank(self.kind, self.metanetwork)

    def index(self, curve: Curve, budget: int, trial: FrozenTrial) -> float:
        """Bank index of the weights a row at ``budget`` reads: the newest checkpoint of
        ``trial`` (whose curve it is) from before that budget, else its starting weights,
        else none (-1)."""
        assert self.bank is not None
        found = curve.checkpoint_before(budget)
        if found is not None and found[1] not in self._unreadable:
            step, artifact_id = found
            try:
                return float(self.bank.index(artifact_id, lambda: self._load(trial, step)))
            except Exception as err:  # A corrupt or vanished checkpoint must not stop a study.
                self._unreadable.add(artifact_id)
                if not self._warned_checkpoint:
                    self._warned_checkpoint = True
                    _logger.warning(
                        "FMS could not read checkpoint %s of trial %d (%s); the surrogate "
                        "uses the starting weights instead.",
                        artifact_id,
                        trial.number,
                        err,
                    )
        return self.start_index(curve.params)

    def _load(self, trial: FrozenTrial, step: int) -> tuple[Any, Any]:
        store = self._artifact_store() if self._artifact_store is not None else None
        checkpoint = read_checkpoint(trial, step, artifact_store=store)
        return checkpoint.tensors, checkpoint.structure

    def start_index(self, params: dict[str, Any]) -> float:
        """Bank index of the starting weights of ``params`` (-1: none)."""
        if self._start_weights is None or self.bank is None:
            return -1.0
        start = self._start_weights(params)
        if start is None:
            return -1.0
        known = self._start_keys.get(id(start))
        if known is not None and known[0] is start:
            # The same object as before (``start_weights`` caches what it loads): skip
            # fingerprinting its tensors again, once per candidate of every proposal.
            return float(known[1])
        structure = None
        original = start
        if isinstance(start, tuple):  # (state dict, structure from describe_module)
            start, structure = start
        elif isinstance(start, torch.nn.Module):
            from optuna_fms.metanet import describe_module

            structure = describe_module(start)
            start = start.state_dict()
        index = self.bank.index("start:" + fingerprint(start), lambda: (start, structure))
        if len(self._start_keys) >= _MAX_START_KEYS:  # objects built anew at every call
            del self._start_keys[next(iter(self._start_keys))]
        self._start_keys[id(original)] = (original, index)
        return float(index)

    def start_indices(self, params_list: Sequence[dict[str, Any]]) -> np.ndarray | None:
        """:meth:`start_index` of each configuration; ``None`` without a weight input."""
        if self.bank is None:
            return None
        return np.array([self.start_index(p) for p in params_list])
