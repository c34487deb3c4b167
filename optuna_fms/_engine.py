"""The engine between Optuna and the surrogate, shared by FMSSampler and FMSPruner.

It owns everything that reads or writes a study: trials into learning curves (following the
continuation lineage), the paused trials open for continuation (claims), checkpoints loaded
into the weight bank, the fit schedule and the per-study caches. The decisions themselves
are made by :mod:`optuna_fms._surrogate.acquisition` on arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
import copy
from dataclasses import dataclass
from dataclasses import field
import logging
import os
import threading
import time
from typing import Any
from typing import Literal
from typing import get_args
import uuid

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.distributions import distribution_to_json
from optuna.search_space import IntersectionSearchSpace
from optuna.storages import BaseStorage
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import torch

from optuna_fms import _attrs
from optuna_fms._budget import resolve_max_steps
from optuna_fms._checkpoint import read_checkpoint
from optuna_fms._freeze_thaw import FreezeThaw
from optuna_fms._freeze_thaw import Lineage
from optuna_fms._surrogate import Curve
from optuna_fms._surrogate import FittedModel
from optuna_fms._surrogate import GPSurrogate
from optuna_fms._surrogate import RowLayout
from optuna_fms._surrogate import SpaceEncoder
from optuna_fms._surrogate import Surrogate
from optuna_fms._surrogate import SurrogateFitError
from optuna_fms._surrogate import SurrogateKind
from optuna_fms._surrogate import SurrogateModel
from optuna_fms._surrogate import WeightBank
from optuna_fms._surrogate import acquisition
from optuna_fms._surrogate import build_training_set
from optuna_fms._surrogate._bounds import truncate
from optuna_fms._surrogate._weights import EMBED_DIM
from optuna_fms._surrogate._weights import CheckpointEncoder
from optuna_fms._surrogate._weights import WeightsKind
from optuna_fms._surrogate._weights import fingerprint
from optuna_fms._surrogate.allocation import AllocationRule
from optuna_fms._surrogate.allocation import Options
from optuna_fms._surrogate.allocation import View
from optuna_fms._surrogate.allocation import make_rule
from optuna_fms._warm_start import WarmStart


_logger = logging.getLogger("optuna_fms")
_MAX_START_KEYS = 1024
"""Start-weight objects whose bank index is remembered (oldest forgotten first)."""
_LAZY_GROWTH = 0.5
"""Every refresh trains again once the observations grew by this fraction since the last
training (the sampler's own ``retrain_growth`` applies to its own trials' observations)."""
_AWAIT_TRAINING_S = 20.0
"""How long a worker without any model waits for another worker's announced training."""
_AWAIT_POLL_S = 0.05
_TRAINING_LEASE_S = 60.0
"""How long another worker's announced GP training keeps the others from training (a worker
that died while training holds the others off no longer than this)."""


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
    """Observations of this process's own trials (see :meth:`Engine.own_trial`) when the
    model was last trained (or another worker's training adopted)."""

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
    without a checkpoint (see :meth:`Engine.propose`)."""


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
class _StudyState:
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


def count_observations(trials: Sequence[FrozenTrial]) -> int:
    """Reported values plus completed trials without reports: the surrogate's data size."""
    n = 0
    for t in trials:
        if t.intermediate_values:
            n += len(t.intermediate_values)
        elif t.state == TrialState.COMPLETE:
            n += 1
    return n


def _training_elsewhere(
    system_attrs: Mapping[str, Any], space: dict[str, str], max_steps: int, me: str
) -> bool:
    """Whether another worker than ``me`` announced a GP training for ``space`` and
    ``max_steps``
    (:data:`_attrs.GP_TRAINING_STARTED`) less than :data:`_TRAINING_LEASE_S` ago that is not
    published yet: no published training covers as many observations. A malformed published
    record tells nothing: then no."""
    started = _attrs.read_gp_training_started(system_attrs)
    if started is None or started.by == me:
        return False
    if started.space != space or started.max_steps != max_steps:
        return False
    if _attrs.GP_TRAINING in system_attrs:
        published = _attrs.read_gp_training(system_attrs)
        if published is None or published.n_trained >= started.n:
            return False
    return 0.0 <= time.time() - started.at < _TRAINING_LEASE_S


def _adopt(
    surrogate: SurrogateModel,
    layout: RowLayout,
    rows: np.ndarray,
    y: np.ndarray,
    shared: _attrs.GPTraining | None,
    n_trained: int | None,
    n_observations: int,
) -> tuple[bool, bool]:
    """Condition ``surrogate`` (a GP) on ``rows`` with the hyperparameters of another
    worker's training ``shared`` if that is newer than its own (trained on ``n_trained``
    observations). Returns whether it did, and whether ``shared`` is unusable (malformed, or
    trained on more than the study's ``n_observations``)."""
    if shared is None or not isinstance(surrogate, GPSurrogate):
        return False, False
    if shared.n_trained > n_observations:
        return False, True
    if n_trained is not None and shared.n_trained <= n_trained:
        return False, False
    try:
        surrogate.load_hyperparameters(layout, rows, y, shared.gp)
    except SurrogateFitError as err:
        _logger.warning("Not adopting the GP training stored in the study: %s", err)
        return False, True
    return True, False


def engine_of(study: Study) -> Engine | None:
    """The engine of the study's sampler (an :class:`~optuna_fms.FMSSampler`), if any."""
    engine = getattr(study.sampler, "engine", None)
    return engine if isinstance(engine, Engine) else None


def fitted(study: Study, engine: Engine | None = None) -> tuple[Engine, Fit]:
    """The engine to read ``study`` with (``engine``, else the sampler's, else one with default
    settings) and its fit, brought up to date as the sampler would before its next trial.

    Raises
    ------
    SurrogateFitError
        If there is no fit: fewer than two learning curves, or the fit failed.
    """
    engine = engine or engine_of(study) or Engine()
    fit = engine.refresh(study, eager=True)
    if fit is None:
        raise SurrogateFitError(
            "The surrogate has no fit on this study yet: it needs learning curves (reported "
            "intermediate values) of at least two trials, and a fit that succeeds."
        )
    return engine, fit


_RANDOM_DRAWS = 64
"""Random draws among which a random configuration not tried yet is looked for."""
_MAX_ENUMERATED = 20_000
"""A finite search space up to this size is enumerated once random candidates are all run."""


def _closed(space: Mapping[str, BaseDistribution], trials: Iterable[FrozenTrial]) -> bool:
    """Whether ``space`` holds every parameter the trials have (a parameter with a single
    value aside): a conditional parameter, or one whose range changes between trials, lies
    outside the space the GP models, and a configuration of the space is then not a whole
    configuration; enumerating the space could not tell that the search is exhausted."""
    return all(
        name in space or dist.single() for t in trials for name, dist in t.distributions.items()
    )


def longest_curves(fit: Fit) -> list[Curve]:
    """The longest observed curve of each configuration (the one its forecast extends)."""
    longest: dict[bytes, Curve] = {}
    for c in fit.curves:
        key = c.x.tobytes()
        if key not in longest or len(c.steps) >= len(longest[key].steps):
            longest[key] = c
    return list(longest.values())


def _config_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A configuration as a hashable key (its sorted parameter items)."""
    return tuple(sorted(params.items()))


def _unfinished(
    trials: Iterable[FrozenTrial],
    max_steps: int,
    finishing: int | None = None,
    finishing_state: TrialState | None = None,
) -> set[tuple[tuple[str, Any], ...]]:
    """Configurations (sorted parameter items) that no trial has trained to the full budget
    and none can continue: pruned short of ``max_steps``, none complete, none with a saved
    checkpoint, none running (but ``finishing``, which ends in ``finishing_state``: Optuna
    tells the sampler before it records the state). They can go further only from
    scratch."""
    furthest: dict[tuple[tuple[str, Any], ...], int] = {}
    blocked = set()
    for t in trials:
        if t.state == TrialState.FAIL:
            continue
        key = _config_key(t.params)
        furthest[key] = max(furthest.get(key, -1), -1 if t.last_step is None else t.last_step)
        state = finishing_state if t._trial_id == finishing else t.state
        running = state in (TrialState.RUNNING, TrialState.WAITING)
        if (
            (running and t._trial_id != finishing)
            or state == TrialState.COMPLETE  # ran to its end (a report or not)
            or _attrs.read_checkpoints(t.user_attrs)
        ):
            blocked.add(key)
    return {k for k, last in furthest.items() if last + 1 < max_steps and k not in blocked}


def _restartable(fit: Fit) -> list[Curve]:
    """The longest curve of each configuration :func:`_unfinished` names."""
    keys = _unfinished(fit.trials.values(), fit.max_steps)
    return [c for c in longest_curves(fit) if _config_key(fit.trials[c.key].params) in keys]


_WARM_MIN_GAP = 0.05
"""Smallest distance (max over encoded inputs) of a warm-start proposal to a tried one."""


def _load_metanetwork(spec: str | os.PathLike[str] | None) -> Any:
    """The :class:`~optuna_fms.metanet.PretrainedMetanetwork` that ``spec`` names, or ``None``."""
    if spec is None:
        return None
    from optuna_fms.metanet import PretrainedMetanetwork

    return PretrainedMetanetwork.load(None if spec == "pretrained" else spec)


class Engine:
    """Fits the surrogate on a study and makes DyHPO's decisions with it.

    One instance is shared by an :class:`~optuna_fms.FMSSampler` (its ``engine``) and the
    :class:`~optuna_fms.FMSPruner` of the same study, so a process fits one surrogate. It
    keeps only caches; what other workers need is in storage.

    Parameters
    ----------
    seed:
        Seeds candidate generation, row subsampling and the surrogate's initial weights.
    max_steps:
        The full budget in steps; ``None`` resolves it per study (see
        :func:`~optuna_fms._budget.resolve_max_steps`).
    max_train_rows:
        Cap on the GP's training rows (cost is cubic in it). When more observations exist,
        every trial's latest observation is kept and the rest subsampled.
    n_candidates:
        Quasi-random candidates scored for a fresh configuration; as many again are local
        moves around the best configurations.
    retrain_growth:
        Train the surrogate again once the observations grew by this fraction since the
        last training, and only condition the trained GP on new data in between. 0 trains
        at every new observation of this process's own trials, as DyHPO does (see
        :meth:`refresh`).
    surrogate:
        The model: ``"gp"`` (ARD Matern-5/2 GP with priors on hyperparameters, log budget
        and a fixed weight embedding) or ``"deep-kernel"`` (DyHPO's deep-kernel GP, which
        also reads the learning curve and learns the weight embedding).
    surrogate_kwargs:
        Passed to the model's class (:class:`~optuna_fms._surrogate.GPSurrogate` or
        :class:`~optuna_fms._surrogate.Surrogate`).
    weights:
        ``"gmn"``, ``"stats"`` or ``None``: how checkpoints enter the surrogate.
    start_weights:
        ``params -> state dict or module``: the weights a configuration starts from, used for
        rows and candidates that have no checkpoint of their own.
    metanetwork:
        With ``weights="gmn"``: ``"pretrained"`` (the metanetwork shipped with the package), the
        path of a file written by ``optuna-fms pretrain-metanet``, or ``None`` (untrained).
    fine_tune_metanetwork:
        Let the deep kernel train the pretrained metanetwork with the GP (frozen otherwise).
    warm_start:
        Earlier studies whose curves inform this one (:class:`~optuna_fms._warm_start.WarmStart`;
        the ``"gp"`` surrogate only).
    artifact_store:
        ``() -> store`` giving the artifact store checkpoints are read from.
    allocation:
        The allocation rule (a name of :data:`optuna_fms._surrogate.allocation.RULES` or a
        rule object): how the next step of compute is chosen, and when a running trial
        pauses.
    rerun:
        Whether a configuration some trial has run may be started again from scratch (a
        noisy objective). By default a fresh trial is a new configuration; a configuration
        already run is only ever continued.
    metric_range:
        ``(low, high)``: the values the objective can take; forecasts (and their bands) are
        the forecast distribution restricted to it. ``"auto"``: ``(0, 1)`` while every
        observed value is in it; ``None``: no range.

    Examples
    --------
    >>> import optuna
    >>> study = optuna.create_study(direction="maximize")
    >>> for i in range(4):
    ...     t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    ...     for step in range(3):
    ...         t.report(t.params["x"] * (step + 1), step)
    ...     _ = study.tell(t, t.params["x"] * 3)
    >>> engine = Engine(seed=0, max_steps=3)
    >>> fit = engine.refresh(study, eager=True)
    >>> len(fit.curves), sorted(engine.propose(study, fit).fresh)
    (4, ['x'])
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        max_steps: int | None = None,
        max_train_rows: int = 256,
        n_candidates: int = 512,
        retrain_growth: float = 0.0,
        surrogate: SurrogateKind = "gp",
        surrogate_kwargs: dict[str, Any] | None = None,
        weights: WeightsKind | None = None,
        start_weights: Callable[[dict[str, Any]], Any] | None = None,
        metanetwork: str | os.PathLike[str] | None = "pretrained",
        fine_tune_metanetwork: bool = False,
        warm_start: Sequence[Study] | None = None,
        artifact_store: Callable[[], Any] | None = None,
        allocation: str | AllocationRule = "one-step-promoting",
        rerun: bool = False,
        metric_range: tuple[float, float] | Literal["auto"] | None = "auto",
    ) -> None:
        if isinstance(metric_range, tuple):
            low, high = (float(v) for v in metric_range)
            if not low < high:
                raise ValueError(
                    f"metric_range must be (low, high) with low < high, got {metric_range}."
                )
            metric_range = (low, high)
        self._metric_range = metric_range
        self._max_steps = max_steps
        self.rule = make_rule(allocation)
        """The allocation rule the sampler and the pruner decide with."""
        self._rerun = rerun
        self._weights = weights
        self._start_weights = start_weights
        self._artifact_store = artifact_store
        self._metanetwork = _load_metanetwork(metanetwork) if weights == "gmn" else None
        self._fine_tune = fine_tune_metanetwork
        self.bank = self._new_bank()
        self._warned_checkpoint = False
        self._unreadable: set[str] = set()
        self._start_keys: dict[int, tuple[Any, int]] = {}
        self._seed = seed
        self._rng = np.random.RandomState(seed)
        self._max_train_rows = max_train_rows
        self._retrain_growth = retrain_growth
        self._n_candidates = n_candidates
        if surrogate not in get_args(SurrogateKind):
            raise ValueError(
                f"surrogate must be one of {get_args(SurrogateKind)}, got {surrogate!r}."
            )
        self._surrogate_kind = surrogate
        self._surrogate_kwargs = dict(surrogate_kwargs or {})
        self._warm: WarmStart | None = None
        if warm_start:
            if surrogate != "gp":
                raise ValueError(
                    "warm_start needs the 'gp' surrogate (the deep kernel reads no related "
                    "tasks); use FMSSampler(surrogate='gp', warm_start=...)."
                )
            self._warm = WarmStart(warm_start, seed=seed)
        self._states: dict[tuple[int, int], _StudyState] = {}
        self._lock = threading.RLock()
        self._warned_failure = False
        self._token = uuid.uuid4().hex
        """Tells this engine's announcements of GP trainings from other workers'."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_states"] = {}
        state["bank"] = None
        state["_start_keys"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._token = uuid.uuid4().hex
        self.bank = self._new_bank()

    def _new_bank(self) -> WeightBank | None:
        if self._weights is None:
            return None
        return WeightBank(self._weights, self._metanetwork)

    def reseed(self) -> None:
        self._rng.seed()

    def inputs_summary(self) -> str:
        """What the surrogate reads, in words (for the dashboard's note)."""
        parts = ["hyperparameters, budget"]
        if self._surrogate_kind == "deep-kernel":
            parts.append("learning curve")
        if self._weights == "stats":
            parts.append("weights (statistics)")
        elif self._weights == "gmn":
            net = self._metanetwork
            if net is None:
                parts.append("weights (untrained graph metanetwork)")
            else:
                hubs = ", ".join(net.info.get("hubs", [])) or "unrecorded data"
                parts.append(f"weights (graph metanetwork pretrained on {hubs})")
        if self._warm is not None:
            names = ", ".join(f"`{s.study_name}`" for s in self._warm.studies)
            n = len(self._warm.studies)
            parts.append(f"warm start from {n} earlier stud{'y' if n == 1 else 'ies'}: {names}")
        return "; ".join(parts)

    def new_surrogate(self) -> SurrogateModel:
        """An unfitted surrogate with this engine's settings (and checkpoint encoder)."""
        bank = self.bank
        if self._surrogate_kind == "gp":
            embed = bank.embedding if bank is not None else None
            related = self._warm.feature if self._warm is not None else None
            return GPSurrogate(
                seed=self._seed, embed=embed, related=related, **self._surrogate_kwargs
            )
        factory = None
        if bank is not None:

            def factory() -> tuple[torch.nn.Module, int]:
                return CheckpointEncoder(bank, fine_tune=self._fine_tune), EMBED_DIM

        return Surrogate(seed=self._seed, weight_encoder_factory=factory, **self._surrogate_kwargs)

    # ------------------------------------------------------------------ the study
    @staticmethod
    def sign(study: Study) -> float:
        """``+1`` for a maximised study, ``-1`` for a minimised one: the surrogate maximises."""
        return 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0

    def max_steps(self, study: Study, trials: Sequence[FrozenTrial] | None = None) -> int:
        """The full budget in steps (see :func:`~optuna_fms._budget.resolve_max_steps`)."""
        return resolve_max_steps(study, self._max_steps, trials)

    def _state(self, study: Study) -> _StudyState:
        with self._lock:
            key = (id(study._storage), study._study_id)
            state = self._states.get(key)
            if state is None:
                state = _StudyState(
                    storage=study._storage,
                    search_space=IntersectionSearchSpace(include_pruned=True),
                )
                self._states[key] = state
            return state

    def current_fit(self, study: Study) -> Fit | None:
        """The last fit made on ``study`` (for inspection), without refreshing it."""
        return self._state(study).fit

    def surrogate(self, study: Study) -> SurrogateModel | None:
        """The surrogate of ``study`` (for inspection); ``None`` before the first fit."""
        return self._state(study).surrogate

    def search_space(self, study: Study) -> dict[str, BaseDistribution]:
        """The parameters every trial has (with more than one value): what the GP models."""
        space = self._state(study).search_space.calculate(study)
        return {n: d for n, d in space.items() if not d.single()}

    def freeze_thaw(self, study: Study) -> FreezeThaw:
        """The study's freeze-thaw (pauses, claims, continuations), kept with its caches."""
        state = self._state(study)
        if state.freeze_thaw is None:
            state.freeze_thaw = FreezeThaw(study._storage, study._study_id)
        return state.freeze_thaw

    def collect_curves(
        self, study: Study, trials: Sequence[FrozenTrial], encoder: SpaceEncoder, max_steps: int
    ) -> list[Curve]:
        """Learning curves of the trials that fit ``encoder``'s search space.

        A paused trial whose continuation has already restored its checkpoint is left out,
        since the continuing trial's curve starts with the parent's values (unless the
        continuation failed: failed trials are left out, and their parent is continued
        again).
        """
        sign = self.sign(study)
        superseded = Lineage(trials).superseded()
        state = self._state(study)
        signature = (encoder.search_space, max_steps, sign)
        if state.curves_for != signature:
            state.curves, state.curves_for = {}, signature
        cache = state.curves
        curves = []
        fresh = []
        for t in trials:
            if t._trial_id in superseded or t.state in (TrialState.FAIL, TrialState.WAITING):
                continue
            finished = t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            if finished:
                cached = cache.get(t._trial_id)
                # Checkpoint records of a finished trial may still change (retention).
                if cached is not None and cached[0] == t.user_attrs.get(_attrs.CHECKPOINTS):
                    curves.append(cached[1])
                    continue
            if not encoder.contains(t.params):
                continue
            if t.intermediate_values:
                # Filtered as Python ints: Optuna accepts steps that int64 does not hold.
                within = sorted(s for s in t.intermediate_values if s < max_steps)
                steps = np.array(within, dtype=np.int64)
                values = np.array([t.intermediate_values[s] for s in within], dtype=float)
            elif t.state == TrialState.COMPLETE and t.value is not None:
                steps = np.array([max_steps - 1])
                values = np.array([t.value], dtype=float)
            else:
                continue
            keep = steps < max_steps
            if not keep.any():
                continue
            curve = Curve(
                key=t._trial_id,
                params=dict(t.params),
                steps=steps[keep],
                values=sign * values[keep],
                checkpoints=_attrs.read_checkpoints(t.user_attrs),
            )
            curves.append(curve)
            fresh.append(curve)
            if finished:
                cache[t._trial_id] = (copy.deepcopy(t.user_attrs.get(_attrs.CHECKPOINTS)), curve)
        if fresh:
            for c, x in zip(fresh, encoder.encode([c.params for c in fresh])):
                c.x = x
        return curves

    # ------------------------------------------------------------------ fitting
    def refresh(self, study: Study, *, eager: bool) -> Fit | None:
        """Return a fit that is current enough; ``None`` while the surrogate cannot be fitted.

        The GP's hyperparameters (and the deep kernel's feature extractor) are *trained* when
        this process's own trials (:meth:`own_trial`) brought new observations and the data
        grew by ``retrain_growth`` since the last training, and by any caller once the data
        grew by half (and at the first fit or when the search space or budget changed); in
        between, the trained model is *conditioned* on all current data, an exact GP update
        that costs one Cholesky factorisation. Other callers than the sampler
        (``eager=False``: the pruner) train only by the second rule, so that
        ``should_prune`` stays cheap. The deep kernel reads trials' newest values through
        their curves, so for it the pruner even keeps the last fit until then; the ``"gp"``
        model reads observations only as training rows, so it is conditioned on them.

        Workers share their GP trainings through the study (:data:`_attrs.GP_TRAINING`):
        after training, a process stores the hyperparameters and the number of observations
        they were fitted on; a process whose last training is older (or that has none yet)
        conditions a GP with those hyperparameters on its data instead of training, and
        trains from them when it must. Other workers' observations alone never make a
        process train below the half-growth rule: with one worker as with eight, the study
        trains about once per own new observation. A missing, foreign (other search space or
        budget) or malformed record is ignored.
        """
        with self._lock:
            state = self._state(study)
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            max_steps = self.max_steps(study, trials)
            n_obs = count_observations(trials)
            space = self.search_space(study)
            own = count_observations([t for t in trials if t._trial_id in state.own])
            fit = state.fit
            same = (
                fit is not None
                and fit.encoder.search_space == dict(sorted(space.items()))
                and fit.max_steps == max_steps
            )
            if same and fit is not None:
                stale_ok = not eager and self._surrogate_kind == "deep-kernel"
                # The pruner may have conditioned on every observation already; the sampler
                # still trains for its own trials' new ones.
                own_due = self._own_training_due(eager, own, fit, n_obs, fit.n_trained)
                current = n_obs == fit.n_observations and not own_due
                if current or (stale_ok and n_obs < 1.5 * fit.n_observations):
                    # The same observations, but attributes may be newer (a pause recorded
                    # after the report the fit read): decisions read the trials as they are.
                    fit.trials.update(
                        (t._trial_id, t) for t in trials if t._trial_id in fit.trials
                    )
                    return fit
            encoder = SpaceEncoder(space)
            if self._warm is not None:
                self._warm.fit(space)
            # Only the deep kernel reads the curve; for the GP the rows stay narrow whatever
            # the budget (a report at step 10**9 must not allocate rows that wide).
            curve_len = max(0, max_steps - 1) if self._surrogate_kind == "deep-kernel" else 0
            layout = RowLayout(encoder.dim, curve_len, encoder.groups, encoder.names, max_steps)
            curves = self.collect_curves(study, trials, encoder, max_steps)
            if len(curves) < 2:
                return None
            by_key = {t._trial_id: t for t in trials}
            row_weights = None
            if self.bank is not None:
                row_weights = lambda c, b: self._weights_index(c, b, by_key[c.key])  # noqa: E731

            data = build_training_set(
                curves, layout, max_steps, self._max_train_rows, self._rng, row_weights
            )
            if state.surrogate is None:
                state.surrogate = self.new_surrogate()
            surrogate = state.surrogate
            previous = fit if same else None
            n_trained = previous.n_trained if previous is not None else None
            try:
                shared_attrs = (
                    study._storage.get_study_system_attrs(study._study_id)
                    if self._surrogate_kind == "gp"
                    else {}
                )
                shared = self._shared_training(shared_attrs, encoder, max_steps)
                space_json = self._space_json(encoder)
                busy = _training_elsewhere(shared_attrs, space_json, max_steps, self._token)
                # Another worker's newer training: condition on its hyperparameters instead
                # of training (a new worker does not start cold).
                adopted, rejected = _adopt(
                    surrogate, layout, data.rows, data.y, shared, n_trained, n_obs
                )
                if not adopted and n_trained is None and busy:
                    # No model yet, and another worker is training one: wait for it rather
                    # than train the same GP from scratch (as costly in time, and in CPU).
                    shared = self._await_training(study, encoder, max_steps, shared)
                    adopted, rejected = _adopt(
                        surrogate, layout, data.rows, data.y, shared, None, n_obs
                    )
                if adopted and shared is not None:
                    n_trained = shared.n_trained
                if n_trained is None:
                    retrain = True
                else:
                    # The sampler trains for new observations of this process's own trials
                    # only; other workers' observations are conditioned on (they train for
                    # theirs, and share it), so the trainings per trial do not grow with the
                    # workers. Everyone trains once the data grew by half.
                    retrain = n_obs >= (1 + _LAZY_GROWTH) * n_trained or self._own_training_due(
                        eager, own, previous, n_obs, n_trained
                    )
                if retrain and n_trained is not None and busy:
                    # Another worker is training on newer data: keep the current model
                    # (conditioned) until it publishes, instead of the same training twice.
                    retrain = False
                if not retrain and not adopted:
                    try:
                        surrogate.condition(data.rows, data.y)
                    except SurrogateFitError:
                        retrain = True
                if retrain:
                    if self._surrogate_kind == "gp":
                        started = _attrs.GPTrainingStarted(
                            n_obs, time.time(), space_json, max_steps, self._token
                        )
                        study._storage.set_study_system_attr(
                            study._study_id, _attrs.GP_TRAINING_STARTED, started.to_json()
                        )
                    surrogate.fit(layout, data.rows, data.y)
                    n_trained = n_obs
                    self._publish_training(
                        study, encoder, max_steps, n_obs, surrogate, replace=rejected
                    )
            except SurrogateFitError as err:
                self._fit_failed(state, err)
                return None
            assert n_trained is not None
            if not retrain and not adopted and previous is not None:
                # Conditioning is not training: the own observations that make the sampler
                # train again are counted from the last training (or adopted one).
                own = previous.n_own
            state.fit = Fit(
                encoder=encoder,
                model=FittedModel(layout, max_steps, data, surrogate),
                curves=curves,
                trials={c.key: by_key[c.key] for c in curves},
                n_observations=n_obs,
                n_trained=n_trained,
                n_own=own,
            )
            return state.fit

    def _own_training_due(
        self, eager: bool, own: int, previous: Fit | None, n_obs: int, n_trained: int
    ) -> bool:
        """Whether the sampler (``eager``) trains for its own trials' observations: ``own``
        grew since the training of ``previous`` and the data by ``retrain_growth`` since
        ``n_trained`` observations."""
        return (
            eager
            and previous is not None
            and own > previous.n_own
            and n_obs >= (1 + self._retrain_growth) * n_trained
        )

    def own_trial(self, study: Study, trial_id: int) -> None:
        """Record that this process runs the trial ``trial_id`` of ``study`` (the sampler's
        ``before_trial``): its new observations make the sampler train the surrogate again
        (see :meth:`refresh`)."""
        with self._lock:
            self._state(study).own.add(trial_id)

    @staticmethod
    def _space_json(encoder: SpaceEncoder) -> dict[str, str]:
        return {n: distribution_to_json(d) for n, d in encoder.search_space.items()}

    def _shared_training(
        self, system_attrs: Mapping[str, Any], encoder: SpaceEncoder, max_steps: int
    ) -> _attrs.GPTraining | None:
        """The study's latest GP training by any worker (from the study's system attributes),
        if it is for this search space and budget (and this engine's model is the GP)."""
        if self._surrogate_kind != "gp":
            return None
        shared = _attrs.read_gp_training(system_attrs)
        if shared is None or shared.max_steps != max_steps:
            return None
        return shared if shared.space == self._space_json(encoder) else None

    def _await_training(
        self,
        study: Study,
        encoder: SpaceEncoder,
        max_steps: int,
        shared: _attrs.GPTraining | None,
    ) -> _attrs.GPTraining | None:
        """Wait (at most :data:`_AWAIT_TRAINING_S`) until the GP training another worker
        announced, or any training newer than ``shared`` (the one published now), is
        published, and return it; ``None`` if none was."""
        space = self._space_json(encoder)
        deadline = time.monotonic() + _AWAIT_TRAINING_S
        while time.monotonic() < deadline:
            time.sleep(_AWAIT_POLL_S)
            system_attrs = study._storage.get_study_system_attrs(study._study_id)
            latest = self._shared_training(system_attrs, encoder, max_steps)
            newer = latest is not None and (shared is None or latest.n_trained > shared.n_trained)
            if newer or not _training_elsewhere(system_attrs, space, max_steps, self._token):
                return latest
        return None

    def _publish_training(
        self,
        study: Study,
        encoder: SpaceEncoder,
        max_steps: int,
        n_trained: int,
        surrogate: SurrogateModel,
        *,
        replace: bool,
    ) -> None:
        """Store the hyperparameters of a training for the other workers, unless a training
        on as many observations is already stored (and not found unusable: ``replace``)."""
        if not isinstance(surrogate, GPSurrogate):
            return
        system_attrs = study._storage.get_study_system_attrs(study._study_id)
        shared = self._shared_training(system_attrs, encoder, max_steps)
        if not replace and shared is not None and shared.n_trained >= n_trained:
            return
        record = _attrs.GPTraining(
            self._space_json(encoder), max_steps, n_trained, surrogate.hyperparameters()
        )
        study._storage.set_study_system_attr(study._study_id, _attrs.GP_TRAINING, record.to_json())

    def _fit_failed(self, state: _StudyState, err: Exception) -> None:
        """Forget the fit (the next refresh fits again) and warn once per engine."""
        state.fit = None
        if not self._warned_failure:
            self._warned_failure = True
            _logger.warning(
                "FMS surrogate failed (%s); sampling at random and not pruning until a later "
                "fit succeeds.",
                err,
            )

    # ------------------------------------------------------------------ weights
    def _weights_index(self, curve: Curve, budget: int, trial: FrozenTrial) -> float:
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
        return self._start_index(curve.params)

    def _load(self, trial: FrozenTrial, step: int) -> tuple[Any, Any]:
        store = self._artifact_store() if self._artifact_store is not None else None
        checkpoint = read_checkpoint(trial, step, artifact_store=store)
        return checkpoint.tensors, checkpoint.structure

    def _start_index(self, params: dict[str, Any]) -> float:
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

    def _start_indices(self, params_list: Sequence[dict[str, Any]]) -> np.ndarray | None:
        if self.bank is None:
            return None
        return np.array([self._start_index(p) for p in params_list])

    # ---------------------------------------------------------------- deciding
    def warm_proposal(self, study: Study) -> dict[str, Any] | None:
        """Before the study's own GP can be fitted: the fresh configuration the earlier
        studies (``warm_start``) forecast best at the full budget, away from those tried;
        ``None`` without them. Before the study's first trial defines its search space, the
        proposal is in the space the earlier studies share (parameters the objective then
        suggests with other distributions are sampled at random)."""
        if self._warm is None:
            return None
        with self._lock:
            space = self.search_space(study) or self._warm.search_space()
            if not space or not self._warm.fit(space):
                return None
            encoder = SpaceEncoder(space)
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            tried = [t.params for t in trials if encoder.contains(t.params)]
            x = acquisition.fresh_candidates(
                encoder, np.zeros((0, encoder.dim)), self._n_candidates, self._rng
            )
            forecast = self._warm.final_forecast(encoder, x)
            x = encoder.encode(encoder.decode(x))  # rounded to the grid of steps
            if tried:
                # Not a configuration already tried, nor one next to it (encoded inputs are
                # in [0, 1]): the startup should see several configurations.
                gap = np.abs(x[:, None, :] - encoder.encode(tried)[None]).max(-1).min(1)
                forecast = np.where(gap >= _WARM_MIN_GAP, forecast, -np.inf)
            best = int(np.argmax(forecast))
            if not np.isfinite(forecast[best]):
                return None
            return encoder.decode(x[best : best + 1])[0]

    def _fresh(self, fit: Fit) -> Options:
        """Fresh candidates: quasi-random configurations and local moves around the best.

        A fresh trial is a new configuration: one some trial has run is continued (a paused
        trial) or done, never started again from scratch (unless ``rerun``). Where the random
        candidates are all run already, a finite search space is enumerated for the
        configurations still unseen; none left means the search is exhausted (no options).
        """
        order = np.argsort([-np.nanmax(c.values) for c in fit.curves])
        best_x = np.stack([fit.curves[i].x for i in order]) if fit.curves else np.zeros((0, 0))
        x = acquisition.fresh_candidates(fit.encoder, best_x, self._n_candidates, self._rng)
        if not self._rerun:
            seen = {c.x.tobytes() for c in fit.curves}
            new = np.array([row.tobytes() not in seen for row in x], dtype=bool)
            if new.any():
                x = x[new]
            elif _closed(fit.encoder.search_space, fit.trials.values()):
                grid = fit.encoder.grid(_MAX_ENUMERATED)
                if grid is not None:
                    x = fit.encoder.encode(grid) if grid else np.zeros((0, fit.encoder.dim))
                    x = x[[row.tobytes() not in seen for row in x]]
        ckpts = self._start_indices(fit.encoder.decode(x)) if len(x) else None
        if ckpts is None and self.bank is not None:
            ckpts = np.zeros(0)
        return Options.fresh(x, ckpts)

    def _paused(self, study: Study, fit: Fit) -> list[tuple[FrozenTrial, Curve]]:
        """Open claims and the curves of the paused trials they stand for, short of the full
        budget."""
        by_key = {c.key: c for c in fit.curves}
        out = []
        for claim, trial in self.freeze_thaw(study).open_pauses(fit.trials):
            curve = by_key[trial._trial_id]
            if curve.last_step + 1 < fit.max_steps:
                out.append((claim, curve))
        return out

    def _paused_options(self, fit: Fit, paused: list[tuple[FrozenTrial, Curve]]) -> Options:
        """The paused trials as options: their curves, steps done and newest weights."""
        curves = [c for _, c in paused]
        return self._curve_options(fit, curves)

    def _curve_options(self, fit: Fit, curves: Sequence[Curve]) -> Options:
        x = np.stack([c.x for c in curves]) if curves else np.zeros((0, fit.encoder.dim))
        done = np.array([c.last_step + 1 for c in curves], dtype=int)
        histories = [c.values[c.steps < fit.max_steps - 1] for c in curves]
        ckpts = None
        if self.bank is not None:
            ckpts = np.array(
                [self._weights_index(c, c.last_step + 2, fit.trials[c.key]) for c in curves]
            )
        return Options(x, done, histories, ckpts)

    def _view(self, fit: Fit) -> View:
        """What the allocation rule reads besides the options (the observed configurations,
        each by its longest curve, built only if the rule asks)."""
        return View(fit.model, self._rng, lambda: self._curve_options(fit, longest_curves(fit)))

    def propose(self, study: Study, fit: Fit) -> Decision | None:
        """The allocation rule's choice: a fresh configuration or a paused trial to continue
        (``None`` if the surrogate's prediction fails: the sampler then samples at random).
        ``Decision.fresh`` is ``None`` when no configuration is left to start (a finite
        space, every configuration run) and nothing paused either: the search is exhausted.
        """
        with self._lock:
            try:
                fresh = self._fresh(fit)
                paused = self._paused(study, fit)
                # Every configuration run: those pruned without a checkpoint short of the
                # full budget can only go on by training again from scratch. They are offered
                # as paused trials are, by their curves (a restart is a continuation that
                # recomputes its first steps), and only then: a new configuration costs less.
                restarts = [] if self._rerun or len(fresh.x) else _restartable(fit)
                curves = [c for _, c in paused] + restarts
                pick = self.rule.choose(self._view(fit), fresh, self._curve_options(fit, curves))
            except SurrogateFitError as err:
                self._fit_failed(self._state(study), err)
                return None
            params = None
            if pick.fresh is not None:
                params = fit.encoder.decode(fresh.x[pick.fresh : pick.fresh + 1])[0]
            decision = Decision(fresh=params, ei=pick.value)
            if pick.paused is not None and pick.paused < len(paused):
                claim, curve = paused[pick.paused]
                decision = Decision(params, pick.value, claim, fit.trials[curve.key])
            elif pick.paused is not None:
                trial = fit.trials[restarts[pick.paused - len(paused)].key]
                decision = Decision(dict(trial.params), pick.value, restart=trial)
            return decision

    def propose_fresh_only(self, study: Study, fit: Fit) -> dict[str, Any] | None:
        """The fresh configuration the allocation rule would start (``None`` if there is
        none left or the surrogate's prediction fails)."""
        with self._lock:
            try:
                fresh = self._fresh(fit)
                pick = self.rule.choose(self._view(fit), fresh, self._paused_options(fit, []))
            except SurrogateFitError as err:
                self._fit_failed(self._state(study), err)
                return None
            if pick.fresh is None:
                return None
            return fit.encoder.decode(fresh.x[pick.fresh : pick.fresh + 1])[0]

    def random_params(
        self, space: Mapping[str, BaseDistribution], tried: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        """A random configuration of ``space`` (from the engine's seeded generator), one not
        in ``tried`` while a few draws find one (unless ``rerun``): in a space of a dozen
        configurations random startup trials would otherwise repeat each other."""
        enc = SpaceEncoder(space)
        if not enc.dim:
            return {}
        x = enc.sample(_RANDOM_DRAWS, self._rng)
        if tried and not self._rerun:
            seen = {row.tobytes() for row in enc.encode([p for p in tried if enc.contains(p)])}
            new = [row for row in x if row.tobytes() not in seen]
            if new:
                return enc.decode(np.stack(new[:1]))[0]
        return enc.decode(x[:1])[0]

    def exhausted(
        self, study: Study, finishing: int | None = None, state: TrialState | None = None
    ) -> bool:
        """Whether nothing is left to run: a finite search space whose every configuration
        some trial has run (unless ``rerun``), no paused trial open for continuation, none
        to restart and no trial running but ``finishing`` (a trial id, ending in ``state``)."""
        if self._rerun:
            return False
        space = self.search_space(study)
        encoder = SpaceEncoder(space)
        size = encoder.size() if space else None
        if size is None:
            return False
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        if any(
            t.state in (TrialState.RUNNING, TrialState.WAITING) and t._trial_id != finishing
            for t in trials
        ):
            return False
        if not _closed(space, trials):
            return False
        seen = {_config_key(t.params) for t in trials if encoder.contains(t.params)}
        if len(seen) < size:
            return False
        if _unfinished(trials, self.max_steps(study, trials), finishing, state):
            return False
        return self.freeze_thaw(study).nothing_to_continue()

    def _alternative(self, study: Study, fit: Fit, view: View) -> float:
        """The rule's value of the best other use of one step. A cacheable rule's value is
        kept while the model has not been trained again (conditioning on new observations
        does not count): scoring a thousand candidates at every report would make
        ``should_prune`` as costly as ``ask``."""
        state = self._state(study)
        if (
            self.rule.cacheable
            and state.alternative is not None
            and state.alternative[0] == fit.n_trained
        ):
            return state.alternative[1]
        paused = self._paused_options(fit, self._paused(study, fit))
        best = self.rule.alternative(view, self._fresh(fit), paused)
        state.alternative = (fit.n_trained, best)
        return best

    def step_forecast(
        self,
        study: Study,
        fit: Fit,
        trial: FrozenTrial,
        tolerance: float = 1.0,
        *,
        stops: AllocationRule | None = None,
    ) -> StepForecast | None:
        """For a running trial: whether the allocation rule lets it keep its next step (with
        the pruner's ``tolerance``), and its forecast score at the full budget (objective
        units); ``None`` if the surrogate's prediction fails (the pruner then does not
        pause).

        ``stops``: the rule for a pause that would be final (the trial has no checkpoint to
        continue from, or continuations are off). The trial then also keeps its step while
        ``stops`` keeps it. A rule's pause weighs one more step against starting something
        new, which is right when the paused trial can be taken up again; a stop cannot be.
        """
        try:
            return self._step_forecast(study, fit, trial, tolerance, stops)
        except SurrogateFitError as err:
            self._fit_failed(self._state(study), err)
            return None

    def _step_forecast(
        self,
        study: Study,
        fit: Fit,
        trial: FrozenTrial,
        tolerance: float,
        stops: AllocationRule | None,
    ) -> StepForecast:
        with self._lock:
            view = self._view(fit)
            alternative = self._alternative(study, fit, view)
            sign = self.sign(study)
            steps = sorted(trial.intermediate_values)
            hist = sign * np.array([trial.intermediate_values[s] for s in steps], dtype=float)
            x = fit.encoder.encode([trial.params])
            ckpt = -1.0
            if self.bank is not None:
                curve = Curve(
                    key=trial._trial_id,
                    params=dict(trial.params),
                    steps=np.array(steps),
                    values=hist,
                    checkpoints=_attrs.read_checkpoints(trial.user_attrs),
                )
                ckpt = self._weights_index(curve, min(steps[-1] + 2, fit.max_steps), trial)
            ckpts = np.array([ckpt])
            running = Options(x, np.array([steps[-1] + 1]), [hist], ckpts)
            keeps = self.rule.keeps_running(view, running, alternative, tolerance)
            if stops is not None and not keeps:
                keeps = stops.keeps_running(view, running, 0.0, tolerance)
            at_end = fit.model.predict(x, np.array([fit.max_steps]), [hist], ckpts)
            mean, std = self._objective_units(study, fit, *at_end)
            return StepForecast(keeps=keeps, mean=float(mean[0]), std=float(std[0]))

    # ---------------------------------------------------------------- forecasting
    def forecast_final(
        self,
        study: Study,
        fit: Fit,
        params_list: Sequence[Mapping[str, Any]] | None = None,
        *,
        bounded: bool = True,
    ) -> FinalForecast:
        """Forecast the score at the full budget (objective units) of configurations.

        ``params_list=None`` forecasts every observed configuration. A configuration some
        trial has run is forecast from the longest such learning curve (and, with weights,
        that trial's newest checkpoint); one no trial has run from its parameters and
        starting weights alone (never weights of a run that has not happened).
        ``bounded=False`` leaves the forecasts unrestricted by the metric's range (the
        model's own normal forecast, for comparing uncertainties).
        """
        with self._lock:
            longest = {c.x.tobytes(): c for c in longest_curves(fit)}
            if params_list is None:
                curves: list[Curve | None] = list(longest.values())
                params = [dict(c.params) for c in longest.values()]
            else:
                for p in params_list:
                    if not fit.encoder.contains(p):
                        raise ValueError(
                            f"{dict(p)} is not in the search space the surrogate models "
                            f"({sorted(fit.encoder.search_space)})."
                        )
                params = [{n: p[n] for n in fit.encoder.search_space} for p in params_list]
            n = len(params)
            x = fit.encoder.encode(params) if n else np.zeros((0, fit.encoder.dim))
            if params_list is not None:
                curves = [longest.get(row.tobytes()) for row in x]
            histories: list[np.ndarray] = [np.zeros(0)] * n
            ckpts = self._start_indices(params)
            for i, curve in enumerate(curves):
                if curve is None:
                    continue
                histories[i] = curve.values[curve.steps < fit.max_steps - 1]
                if ckpts is not None:
                    ckpts[i] = self._weights_index(curve, fit.max_steps, fit.trials[curve.key])
            if n == 0:
                return FinalForecast(params, curves, np.zeros(0), np.zeros(0))
            budgets = np.full(n, float(fit.max_steps))
            mean, std = self._objective_units(
                study, fit, *fit.model.predict(x, budgets, histories, ckpts), bounded=bounded
            )
            return FinalForecast(params, curves, mean, std)

    def metric_range(self, study: Study, fit: Fit) -> tuple[float, float] | None:
        """The range the objective's values lie in: the one declared (``metric_range``),
        else ``(0, 1)`` where every value observed so far is in it (an accuracy, a rate),
        else ``None``."""
        if self._metric_range != "auto":
            return self._metric_range
        sign = self.sign(study)
        values = [sign * c.values for c in fit.curves]
        if values:
            every = np.concatenate(values)
            every = every[np.isfinite(every)]
            if len(every) and every.min() >= 0.0 and every.max() <= 1.0:
                return (0.0, 1.0)
        return None

    def _objective_units(
        self, study: Study, fit: Fit, mean: np.ndarray, std: np.ndarray, bounded: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Standardised forecasts in the objective's units, inside its range (if any)."""
        mean, std = fit.model.to_objective(mean, std)
        mean = self.sign(study) * mean
        bounds = self.metric_range(study, fit) if bounded else None
        if bounds is not None:
            mean, std = truncate(mean, std, *bounds)
        return mean, std
