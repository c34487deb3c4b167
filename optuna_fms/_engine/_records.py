"""What the engine's parts hand each other and its callers: a fit, the decisions, the
forecasts, and the per-study caches."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Any

import numpy as np
from optuna.search_space import IntersectionSearchSpace
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from optuna_fms._freeze_thaw import FreezeThaw
from optuna_fms._surrogate import Curve
from optuna_fms._surrogate import FittedModel
from optuna_fms._surrogate import SpaceEncoder
from optuna_fms._surrogate import SurrogateModel


@dataclass
class Fit:
    """One fit of the surrogate on a study: the model, the curves it read and their trials."""

    encoder: SpaceEncoder
    model: FittedModel
    curves: list[Curve]
    trials: dict[int, FrozenTrial]
    """The trial each curve was read from, by :attr:`Curve.key` (the trial id)."""
    n_observations: int
    n_trained: int
    n_own: int = 0
    """Observations of this process's own trials (see :meth:`Engine.own_trial
    <optuna_fms._engine.Engine.own_trial>`) when the model was last trained (or another
    worker's training adopted)."""

    @property
    def max_steps(self) -> int:
        return self.model.max_steps


@dataclass(frozen=True)
class Decision:
    """The allocation rule's choice for the next trial: the best fresh configuration
    (``None`` when every configuration of a finite space has been run), and the paused trial
    to continue instead (``claim`` set)."""

    fresh: dict[str, Any] | None
    ei: float
    claim: FrozenTrial | None = None
    parent: FrozenTrial | None = None
    restart: FrozenTrial | None = None
    """Set when ``fresh`` trains again from scratch the configuration of this trial, pruned
    without a checkpoint (see :meth:`Engine.propose <optuna_fms._engine.Engine.propose>`)."""


@dataclass(frozen=True)
class StepForecast:
    """What the pruner weighs for a running trial: whether the allocation rule lets it keep
    its next step, and its forecast final score (objective units)."""

    keeps: bool
    mean: float
    std: float


@dataclass(frozen=True)
class FinalForecast:
    """Forecasts of the score at the full budget (objective units) of configurations:
    ``curves[i]`` is the observed curve forecast ``i`` extends, or ``None``."""

    params: list[dict[str, Any]]
    curves: list[Curve | None]
    mean: np.ndarray
    std: np.ndarray


@dataclass
class StudyState:
    """The engine's caches for one study (one engine may serve several studies).

    Keyed by the storage object and the study id (two in-memory storages both number their
    first study 0); holding ``storage`` keeps its ``id`` from being reused for another one.
    """

    storage: BaseStorage
    search_space: IntersectionSearchSpace
    surrogate: SurrogateModel | None = None
    fit: Fit | None = None
    alternative: tuple[int, float] | None = None
    """The best alternative's EI and the training (``Fit.n_trained``) it was computed on."""
    freeze_thaw: FreezeThaw | None = None
    curves: dict[int, tuple[Any, Curve]] = field(default_factory=dict)
    """Curves of finished trials (``trial id -> (checkpoint attribute, curve)``), valid for
    ``curves_for``; a finished trial's values and parameters never change."""
    curves_for: tuple[Any, ...] = ()
    own: set[int] = field(default_factory=set)
    """Ids of the trials this process runs (the sampler's ``before_trial``)."""
