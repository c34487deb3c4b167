"""The engine between Optuna and the surrogate, shared by FMSSampler and FMSPruner.

It owns everything that reads or writes a study; :class:`Engine` is a facade over its parts
(see the package docstring), and keeps the per-study caches they share.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
import os
import threading
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms._budget import resolve_max_steps
from optuna_fms._engine._decisions import Decisions
from optuna_fms._engine._forecasting import Forecaster
from optuna_fms._engine._forecasting import MetricRange
from optuna_fms._engine._records import Decision
from optuna_fms._engine._records import Fit
from optuna_fms._engine._records import StepForecast
from optuna_fms._engine._records import StudyState
from optuna_fms._engine._schedule import FitSchedule
from optuna_fms._engine._weights import WeightInputs
from optuna_fms._freeze_thaw import FreezeThaw
from optuna_fms._surrogate import ModelContext
from optuna_fms._surrogate import SurrogateFitError
from optuna_fms._surrogate import SurrogateKind
from optuna_fms._surrogate import SurrogateModel
from optuna_fms._surrogate import surrogate_class
from optuna_fms._surrogate._weights import WeightsKind
from optuna_fms._surrogate.allocation import AllocationRule
from optuna_fms._surrogate.allocation import make_rule
from optuna_fms._warm_start import WarmStart


class Engine:
    """Fits the surrogate on a study and makes DyHPO's decisions with it.

    A facade over the engine's parts, one job each: reading trials into curves
    (:mod:`._curves`) and weights (:class:`._weights.WeightInputs`), the fit schedule
    (:class:`._schedule.FitSchedule`, with the shared-training protocol of
    :class:`._shared_training.SharedTraining`), the decisions
    (:class:`._decisions.Decisions`, where the allocation rule plugs in) and the forecasts
    (:class:`._forecasting.Forecaster`).

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
        Cap on the training rows (cost is cubic in it): every trial's latest observation is
        kept, the rest subsampled.
    n_candidates:
        Quasi-random candidates scored for a fresh configuration; as many again are local
        moves around the best configurations.
    retrain_growth:
        Train again once the observations grew by this fraction since the last training,
        only condition on new data in between (0: train at every new observation of this
        process's own trials, as DyHPO does).
    surrogate:
        The model: a name of :data:`optuna_fms._surrogate.SURROGATES` (``"gp"``,
        ``"deep-kernel"``) or a model class.
    surrogate_kwargs:
        Passed to the model's class.
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
        Earlier studies whose curves inform this one (the ``"gp"`` surrogate only).
    artifact_store:
        ``() -> store`` giving the artifact store checkpoints are read from.
    allocation:
        The allocation rule: a name of :data:`optuna_fms._surrogate.allocation.RULES` or a
        rule object.
    rerun:
        Whether a configuration some trial has run may be started again from scratch.
    metric_range:
        ``(low, high)``, ``"auto"`` or ``None``: the range forecasts are restricted to (as
        :class:`~optuna_fms.FMSSampler`'s).

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
    >>> len(fit.curves), sorted(engine.next_trial(study).fresh)
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
        surrogate: SurrogateKind | type[SurrogateModel] = "gp",
        surrogate_kwargs: dict[str, Any] | None = None,
        weights: WeightsKind | None = None,
        start_weights: Callable[[dict[str, Any]], Any] | None = None,
        metanetwork: str | os.PathLike[str] | None = "pretrained",
        fine_tune_metanetwork: bool = False,
        warm_start: Sequence[Study] | None = None,
        artifact_store: Callable[[], Any] | None = None,
        allocation: str | AllocationRule = "one-step-promoting",
        rerun: bool = False,
        metric_range: MetricRange = "auto",
    ) -> None:
        self.forecaster = Forecaster(self, metric_range)
        """Forecasts at the full budget (:class:`._forecasting.Forecaster`)."""
        self._max_steps = max_steps
        self.rule = make_rule(allocation)
        """The allocation rule the sampler and the pruner decide with."""
        self.weight_inputs = WeightInputs(
            weights,
            metanetwork=metanetwork,
            start_weights=start_weights,
            artifact_store=artifact_store,
        )
        """The weight bank and the indices rows read (:class:`._weights.WeightInputs`)."""
        self._fine_tune = fine_tune_metanetwork
        self._seed = seed
        rng = np.random.RandomState(seed)
        self._rng = rng
        self.model = surrogate_class(surrogate)
        """The surrogate's class: what it reads, and how :meth:`new_surrogate` builds it."""
        self._surrogate_kwargs = dict(surrogate_kwargs or {})
        self._warm: WarmStart | None = None
        if warm_start:
            if not self.model.reads_related:
                raise ValueError(
                    f"warm_start needs the 'gp' surrogate (the {self.model.name} model reads "
                    "no related tasks); use FMSSampler(surrogate='gp', warm_start=...)."
                )
            self._warm = WarmStart(warm_start, seed=seed)
        self.schedule = FitSchedule(
            self, rng, max_train_rows=max_train_rows, retrain_growth=retrain_growth
        )
        """When the surrogate is trained (:class:`._schedule.FitSchedule`)."""
        self.decisions = Decisions(self, rng, n_candidates=n_candidates, rerun=rerun)
        """What to start, continue or keep running (:class:`._decisions.Decisions`)."""
        self._states: dict[tuple[int, int], StudyState] = {}
        self.lock = threading.RLock()
        """Held by every call that reads or changes the caches, the model or the bank (the
        sampler's and the pruner's threads share them)."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["lock"]
        state["_states"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    @property
    def bank(self) -> Any:
        """The weight bank (:class:`~optuna_fms._surrogate.WeightBank`), or ``None`` without
        a weight input."""
        return self.weight_inputs.bank

    @property
    def warm(self) -> WarmStart | None:
        """The earlier studies of ``warm_start``, or ``None``."""
        return self._warm

    def reseed(self) -> None:
        self._rng.seed()

    def inputs_summary(self) -> str:
        """What the surrogate reads, in words (for the dashboard's note)."""
        parts = ["hyperparameters, budget"]
        if self.model.reads_curves:
            parts.append("learning curve")
        kind = self.weight_inputs.kind
        if kind == "stats":
            parts.append("weights (statistics)")
        elif kind == "gmn":
            net = self.weight_inputs.metanetwork
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
        related = self._warm.feature if self._warm is not None else None
        context = ModelContext(self._seed, self.bank, related, self._fine_tune)
        return self.model.build(context, **self._surrogate_kwargs)

    # ------------------------------------------------------------------ the study
    @staticmethod
    def sign(study: Study) -> float:
        """``+1`` for a maximised study, ``-1`` for a minimised one: the surrogate maximises."""
        return 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0

    def max_steps(self, study: Study, trials: Sequence[FrozenTrial] | None = None) -> int:
        """The full budget in steps (see :func:`~optuna_fms._budget.resolve_max_steps`)."""
        return resolve_max_steps(study, self._max_steps, trials)

    def state(self, study: Study) -> StudyState:
        """The caches of ``study`` that the engine's parts share."""
        with self.lock:
            key = (id(study._storage), study._study_id)
            state = self._states.get(key)
            if state is None:
                state = StudyState(
                    storage=study._storage,
                    search_space=IntersectionSearchSpace(include_pruned=True),
                )
                self._states[key] = state
            return state

    def current_fit(self, study: Study) -> Fit | None:
        """The last fit made on ``study`` (for inspection), without refreshing it."""
        return self.state(study).fit

    def surrogate(self, study: Study) -> SurrogateModel | None:
        """The surrogate of ``study`` (for inspection); ``None`` before the first fit."""
        return self.state(study).surrogate

    def search_space(self, study: Study) -> dict[str, BaseDistribution]:
        """The parameters every trial has (with more than one value): what the GP models."""
        space = self.state(study).search_space.calculate(study)
        return {n: d for n, d in space.items() if not d.single()}

    def freeze_thaw(self, study: Study) -> FreezeThaw:
        """The study's freeze-thaw (pauses, claims, continuations), kept with its caches."""
        state = self.state(study)
        if state.freeze_thaw is None:
            state.freeze_thaw = FreezeThaw(study._storage, study._study_id)
        return state.freeze_thaw

    def own_trial(self, study: Study, trial_id: int) -> None:
        """Record that this process runs the trial ``trial_id`` of ``study`` (the sampler's
        ``before_trial``): its new observations make the sampler train the surrogate again
        (see :meth:`refresh`)."""
        with self.lock:
            self.state(study).own.add(trial_id)

    # ------------------------------------------------------------------ fitting
    def refresh(self, study: Study, *, eager: bool) -> Fit | None:
        """A fit of ``study`` that is current enough; ``None`` while the surrogate cannot be
        fitted (see :meth:`FitSchedule.refresh <._schedule.FitSchedule.refresh>`)."""
        with self.lock:
            return self.schedule.refresh(study, eager=eager)

    def fit_failed(self, study: Study, err: Exception) -> None:
        """Forget the fit of ``study`` (the next refresh fits again) and warn once."""
        self.schedule.failed(self.state(study), err)

    # ---------------------------------------------------------------- deciding
    def next_trial(self, study: Study) -> Decision | None:
        """What the next trial runs: the sampler's decision, on a fit brought up to date
        (``None`` while there is no fit, or if the surrogate's prediction fails)."""
        with self.lock:
            fit = self.schedule.refresh(study, eager=True)
            return None if fit is None else self.decisions.propose(study, fit)

    def fresh_params(
        self, study: Study, search_space: Mapping[str, BaseDistribution]
    ) -> dict[str, Any] | None:
        """The fresh configuration of ``search_space`` the rule would start, on a fit brought
        up to date (``None`` without a fit of that space or a configuration left)."""
        with self.lock:
            fit = self.schedule.refresh(study, eager=True)
            if fit is None or fit.encoder.search_space != dict(sorted(search_space.items())):
                return None
            return self.decisions.propose_fresh_only(study, fit)

    def keeps_running(
        self,
        study: Study,
        trial: FrozenTrial,
        step: int,
        tolerance: float = 1.0,
        *,
        stops: AllocationRule | None = None,
    ) -> StepForecast | None:
        """Whether the running ``trial``, which reported ``step``, keeps its next step, and
        its forecast: the pruner's decision on a fit brought up to date (cheaply:
        ``eager=False``). ``stops`` applies when the trial could not be continued after a
        pause (see :meth:`step_forecast`). ``None`` without a fit of its configuration."""
        with self.lock:
            fit = self.schedule.refresh(study, eager=False)
            if fit is None or not fit.encoder.contains(trial.params):
                return None
            final = None if self.freeze_thaw(study).continuable(trial, step) else stops
            return self.decisions.step_forecast(study, fit, trial, tolerance, stops=final)

    def warm_proposal(self, study: Study) -> dict[str, Any] | None:
        """See :meth:`Decisions.warm_proposal <._decisions.Decisions.warm_proposal>`."""
        with self.lock:
            return self.decisions.warm_proposal(study)

    def random_params(
        self, space: Mapping[str, BaseDistribution], tried: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, Any]:
        """See :meth:`Decisions.random_params <._decisions.Decisions.random_params>`."""
        return self.decisions.random_params(space, tried)

    def exhausted(
        self, study: Study, finishing: int | None = None, state: TrialState | None = None
    ) -> bool:
        """See :meth:`Decisions.exhausted <._decisions.Decisions.exhausted>`."""
        return self.decisions.exhausted(study, finishing, state)


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
