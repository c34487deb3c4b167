from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
import logging
import os
from pathlib import Path
from typing import Any
from typing import Literal

import optuna
from optuna.artifacts._protocol import ArtifactStore
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.samplers import RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms._engine import Decision
from optuna_fms._engine import Engine
from optuna_fms._surrogate import SpaceEncoder
from optuna_fms._surrogate import SurrogateKind
from optuna_fms._surrogate import SurrogateModel
from optuna_fms._surrogate import Trend
from optuna_fms._surrogate import surrogate_class
from optuna_fms._surrogate._weights import WeightsKind
from optuna_fms._surrogate.allocation import AllocationRule


_logger = logging.getLogger("optuna_fms")
_DEFAULT_ALLOCATION = "one-step-promoting"
"""The default ``allocation``."""


class FMSSampler(BaseSampler):
    """Forecasting Model Search: multi-fidelity Bayesian optimisation on learning curves.

    A Gaussian process (GPyTorch) forecasts a configuration's score at a budget from its
    hyperparameters, the budget, the learning curve observed so far and optionally its weights
    (DyHPO, Wistuba et al. 2022; FMS, Mehta et al. 2024). For each new trial the sampler scores
    fresh candidates at the first step and every paused trial at its next step with expected
    improvement against the best value observed at that same step, and takes the argmax: either a
    fresh configuration, or the *continuation* of a trial that :class:`~optuna_fms.FMSPruner`
    paused, which then restores its checkpoint with :func:`~optuna_fms.resume` (freeze-thaw).

    The first ``n_startup_trials`` trials are sampled at random. Parameters that are not in
    every trial (dynamic or conditional search spaces) are sampled by ``independent_sampler``,
    as Optuna's own samplers do. The sampler shares one fitted surrogate with the study's
    :class:`~optuna_fms.FMSPruner`; all state other workers need lives in the study's storage.

    Parameters
    ----------
    seed:
        Seed for candidate generation, the surrogate's initial weights and the random startup.
    n_startup_trials:
        Finished trials (complete or pruned) needed before the surrogate is used. With
        :class:`~optuna_fms.FMSPruner`'s default DyHPO start these trials run one step
        each, so the surrogate starts from several configurations.
    max_steps:
        The full budget in steps. Defaults to the study pruner's ``max_steps`` when it is an
        :class:`~optuna_fms.FMSPruner`, else to the largest step reported so far plus one.
        The sampler's surrogate (which the pruner shares) uses this one value.
    artifact_store:
        Where :func:`~optuna_fms.save_checkpoint` writes checkpoints and where continuations
        read them. Defaults to ``FileSystemArtifactStore("artifacts")``, created on first use.
    independent_sampler:
        Sampler for parameters outside the common search space (default: a seeded
        :class:`~optuna.samplers.RandomSampler`).
    n_candidates:
        Quasi-random candidates scored per proposal (as many local moves are added).
    max_train_rows:
        Cap on the surrogate's training rows, which bounds the cost of a fit (cubic in it).
        Above it, every trial's latest observation is kept and the others subsampled.
    surrogate:
        The model that forecasts. ``"gp"`` (default): an ARD Matern-5/2 GP with the priors
        of Optuna's GPSampler, over the hyperparameters (one lengthscale per parameter), the
        log budget and, with ``weights``, a few fixed components of the weight embedding;
        its kernel lets a configuration's quality persist across budgets, around a mean that
        rises with the budget and has a linear trend in the numeric hyperparameters
        (``gp_trend``). It reads a configuration's learning curve as observations at
        their budgets, and is fitted by L-BFGS (warm-started). Its forecasts keep a
        nugget (a noise variance of at least a tenth of the scores'), which ranks final
        scores better than interpolating mostly one-step observations; its expected
        improvements read a posterior pinned to the observations, so that a running trial's
        next step is judged by what it has shown. ``"deep-kernel"``: DyHPO's
        deep-kernel GP (an MLP feature extractor over hyperparameters, budget, a Conv1d
        summary of the learning curve and the weight embedding, trained jointly by Adam),
        kept for comparisons: with 5-50 curves it overfits (see docs/experiments.md). Or a
        model class (the internal protocol ``optuna_fms._surrogate.SurrogateModel``: it
        declares what it reads, how it is built and which of this sampler's keywords it takes).
    gp_trend:
        ``surrogate="gp"`` only: the prior mean's dependence on the hyperparameters.
        ``"linear-budget"`` (default): a linear trend in each numeric hyperparameter whose
        slope may change with the budget; ``"linear"``: the same slope at every budget;
        ``"constant"``: none (Optuna GPSampler's mean). A trend keeps the direction the data
        showed far from every observation, where a constant mean forecasts the same score for
        every configuration; it raised Kendall's tau of the forecasts at 100 epochs on both
        benchmark hubs (docs/benchmarks.md).
    n_scratch_epochs, n_warm_epochs, lr:
        ``surrogate="deep-kernel"`` only: Adam schedule of the surrogate: epochs from scratch
        (first fit and after a failure), epochs of a warm-started refit, and the learning rate.
        (DyHPO uses 1000 and 50 epochs at 1e-3; the defaults reach a similar fit in a third of the
        time.)
    retrain_growth:
        Train the surrogate (warm-started) again once the observations grew by this fraction
        since the last training, and in between condition the trained GP on the new data (one
        Cholesky factorisation). ``0`` trains whenever this process's trials brought new
        observations, as DyHPO does. ``None`` (default): the model's own default
        (``default_retrain_growth``), ``0.2`` for the ``"gp"`` surrogate
        (on both benchmark hubs it ranked as well as ``0`` at a third of the sampler's time,
        docs/experiments.md) and ``0`` for the deep kernel (on the synthetic benchmark ``0.1``
        halved its time but raised the regret from 0.017 to 0.043). With several workers, a
        worker trains for the new observations of its own trials; the others' observations
        it conditions on, and a newer training by another worker (its hyperparameters are
        stored in the study) it takes over instead of training its own, so the trainings per
        trial do not grow with the number of workers.
    weights:
        How checkpoints enter the surrogate: ``"gmn"`` (FMS: a graph metanetwork over the
        parameters, invariant to permutations of hidden neurons, trained with the GP),
        ``"stats"`` (per-layer weight statistics) or ``None`` (DyHPO: curves only). A row
        reads the trial's newest checkpoint from *before* the step it predicts.
    start_weights:
        Optional ``params -> state dict, nn.Module or (state dict, structure)``: the weights
        a configuration starts from (``structure`` as given by
        :func:`optuna_fms.metanet.describe_module`, which the graph needs beyond plain
        MLP/CNN stacks), for example the pretrained hub model named by a categorical
        parameter. Configurations that have not run yet are featurised from these, never
        from weights of a run that has not happened, so FMS can rank unseen pretrained
        models. It is called for every candidate of every proposal: keep it cheap (cache
        what it loads).
    start_params:
        Parameters whose only role is to choose the starting weights (the member of a model
        zoo). With ``weights`` and ``start_weights``, the GP reads the weights' features in
        their place, so that what it learns about one start carries to starts it has never
        tried (an opaque category is equally far from every other). On the zoo hub this
        ranked unseen configurations at Kendall's tau 0.63 against 0.61 with the member as a
        category (docs/experiments.md). ``"gp"`` surrogate only.
    metanetwork:
        With ``weights="gmn"``, the graph metanetwork that reads the weights: ``"pretrained"``
        (default: the one shipped with the package, trained by ``optuna-fms pretrain-metanet``
        to predict how checkpoints fine-tune, see docs/usage.md), the path of a file that
        command wrote, or ``None`` for an untrained one. The GP reads its two predictions
        (:data:`optuna_fms.metanet.TARGETS`) of every checkpoint; the deep kernel its
        embedding.
    fine_tune_metanetwork:
        Let the deep kernel train the pretrained metanetwork in the study, through the GP's
        marginal likelihood (frozen by default: 5-50 configurations cannot teach it much).
    warm_start:
        Earlier studies (``optuna.load_study(...)``, any storage) whose learning curves
        inform this one: a GP fitted on their curves, over the parameters they share with
        this study (the others are ignored, with a log line), forecasts every configuration,
        and this study's GP reads that forecast as one more input whose weight it learns from
        its own observations. Until this study's GP can be fitted, the startup trials take
        the configurations the earlier studies forecast best (apart from those tried).
        Nothing carries over unless named here. ``"gp"`` surrogate only.
    warn_independent_sampling:
        Log a warning (once per parameter) when a parameter is sampled independently.
    allocation:
        How the next step of compute is chosen, shared with the study's
        :class:`~optuna_fms.FMSPruner` (a name, or a rule object of
        the internal ``optuna_fms._surrogate.allocation``): ``"rungs"`` (model-based asynchronous
        successive halving: trials are compared only at 1, 3, 9, ... steps, a trial goes on
        while its forecast final score is in the top third of those that reached its rung,
        and a paused trial that later ranks there is continued before anything new starts),
        ``"one-step"`` (DyHPO: expected improvement of one more step against the best at
        that step), ``"final"`` (freeze-thaw: expected improvement of the forecast final
        score per step still needed), ``"random-horizon"`` (ifBO: probability of
        improvement at a random horizon) or ``"one-step-promoting"`` (DyHPO's choice, but a
        paused trial whose forecast now ranks in the top third of its rung is continued
        first, and a running trial at a rung goes on while it ranks there). The default is
        the rule that did best across the benchmark hubs, chosen leave one hub out
        (docs/benchmarks.md).
    rerun:
        Let a fresh trial repeat a configuration some trial has already run (a noisy
        objective). By default a configuration already run is continued (a paused trial with a
        checkpoint), not started again from scratch. The exception is a finite search space
        whose every configuration has run: one pruned short of the full budget without a
        checkpoint (an objective that saves none) is then trained again from scratch, and
        :class:`FMSPruner` lets it pass the step where it was pruned. Once every configuration
        reached the full budget or waits for nothing, the sampler says the search is exhausted
        and ``study.optimize`` stops.
    metric_range:
        ``(low, high)``, the values the objective can take (an accuracy: ``(0, 1)``):
        forecasts and their bands (:func:`~optuna_fms.forecast`, the dashboard) are the
        forecast distribution restricted to it. ``"auto"`` (default): ``(0, 1)`` while every
        observed value lies in it; ``None``: no range.

    Examples
    --------
    >>> import optuna, optuna_fms
    >>> def objective(trial):
    ...     x = trial.suggest_float("x", -3, 3)
    ...     for step in range(5):
    ...         trial.report(-(x - 1) ** 2 * (5 - step), step)
    ...         if trial.should_prune():
    ...             raise optuna.TrialPruned()
    ...     return -(x - 1) ** 2
    >>> study = optuna.create_study(
    ...     direction="maximize",
    ...     sampler=optuna_fms.FMSSampler(seed=0, n_startup_trials=3, n_scratch_epochs=50),
    ...     pruner=optuna_fms.FMSPruner(max_steps=5, n_startup_trials=3),
    ... )
    >>> study.optimize(objective, n_trials=6)
    >>> len(study.trials)
    6
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        n_startup_trials: int = 10,
        max_steps: int | None = None,
        artifact_store: ArtifactStore | None = None,
        independent_sampler: BaseSampler | None = None,
        n_candidates: int = 512,
        max_train_rows: int = 256,
        n_scratch_epochs: int = 300,
        n_warm_epochs: int = 50,
        lr: float = 1e-2,
        surrogate: SurrogateKind | type[SurrogateModel] = "gp",
        gp_trend: Trend = "linear-budget",
        retrain_growth: float | None = None,
        weights: WeightsKind | None = None,
        start_weights: Callable[[dict[str, Any]], Any] | None = None,
        start_params: Sequence[str] = (),
        metanetwork: str | os.PathLike[str] | None = "pretrained",
        fine_tune_metanetwork: bool = False,
        warm_start: Sequence[Study] | None = None,
        warn_independent_sampling: bool = True,
        allocation: str | AllocationRule = _DEFAULT_ALLOCATION,
        rerun: bool = False,
        metric_range: tuple[float, float] | Literal["auto"] | None = "auto",
    ) -> None:
        model = surrogate_class(surrogate)
        if start_params and (
            "start_params" not in model.sampler_options or weights is None or start_weights is None
        ):
            raise ValueError(
                "start_params replaces parameters by the starting weights' features: it needs "
                "surrogate='gp', weights and start_weights."
            )
        # The keywords of this signature that belong to the model (``gp_trend``, ``lr``, ...).
        options: dict[str, Any] = dict(
            gp_trend=gp_trend,
            start_params=tuple(start_params),
            lr=lr,
            n_scratch_epochs=n_scratch_epochs,
            n_warm_epochs=n_warm_epochs,
        )
        self._seed = seed
        self._n_startup_trials = n_startup_trials
        self._artifact_store = artifact_store
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)
        self._warn_independent_sampling = warn_independent_sampling
        self._warned_params: set[str] = set()
        self._warned_no_resume = False
        self._warned_exhausted = False
        self._stop_after: set[int] = set()
        self._engine = Engine(
            seed=seed,
            max_steps=max_steps,
            max_train_rows=max_train_rows,
            n_candidates=n_candidates,
            retrain_growth=(
                retrain_growth if retrain_growth is not None else model.default_retrain_growth
            ),
            surrogate=model,
            surrogate_kwargs={kw: options[name] for name, kw in model.sampler_options.items()},
            weights=weights,
            start_weights=start_weights,
            metanetwork=metanetwork,
            fine_tune_metanetwork=fine_tune_metanetwork,
            warm_start=warm_start,
            artifact_store=self._get_artifact_store,
            allocation=allocation,
            rerun=rerun,
            metric_range=metric_range,
        )

    @property
    def artifact_store(self) -> ArtifactStore:
        """The store checkpoints go to (see :func:`~optuna_fms.save_checkpoint`)."""
        if self._artifact_store is None:
            base = Path("artifacts")
            base.mkdir(parents=True, exist_ok=True)
            self._artifact_store = optuna.artifacts.FileSystemArtifactStore(str(base))
        return self._artifact_store

    @property
    def engine(self) -> Engine:
        """The engine that fits the surrogate and makes the decisions; the study's
        :class:`~optuna_fms.FMSPruner` and :func:`~optuna_fms.forecast` use it too."""
        return self._engine

    def _get_artifact_store(self) -> ArtifactStore:
        return self.artifact_store

    def reseed_rng(self) -> None:
        self._engine.reseed()
        self._independent_sampler.reseed_rng()

    def _ready(self, study: Study) -> bool:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return len(trials) >= self._n_startup_trials

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)
        self._engine.own_trial(study, trial._trial_id)
        freeze_thaw = self._engine.freeze_thaw(study)
        copied = freeze_thaw.disown_copied(trial)
        if study._is_multi_objective():
            return
        ready = self._ready(study)
        if ready or copied is not None:
            # Claims whose continuation died with its worker (no after_trial ran) are
            # released here, before any decision reads the open claims.
            freeze_thaw.recover()
        if copied is not None and freeze_thaw.retake(trial, copied, heartbeat=_in_optimize(study)):
            return
        if not ready:
            preset = bool(trial.params) or "fixed_params" in trial.system_attrs
            warm = None if preset else self._engine.warm_proposal(study)
            if warm is not None:
                freeze_thaw.propose(trial._trial_id, warm)
            return
        decision = self._decide(study)
        if decision is None:
            return
        params = decision.fresh
        # Only a trial whose parameters the sampler chooses may continue a paused one: an
        # enqueued, retried or added trial keeps its own parameters, and must not train on
        # another trial's weights.
        preset = bool(trial.params) or "fixed_params" in trial.system_attrs
        if decision.claim is not None and decision.parent is not None and not preset:
            # A lost race (another worker took the claim first) or a paused trial that still
            # runs falls back to the fresh pick; without one, the search is not exhausted yet
            # (the claim may be taken later), and this trial is sampled as a fresh one.
            if freeze_thaw.take(
                trial, decision.claim, decision.parent, heartbeat=_in_optimize(study)
            ):
                params = dict(decision.parent.params)
            elif params is None:
                return
        if params is None:
            self._exhausted(trial)
            return
        freeze_thaw.propose(trial._trial_id, params)
        if decision.restart is not None and params == decision.fresh and not preset:
            freeze_thaw.record_restart(trial._trial_id, decision.restart)

    def _exhausted(self, trial: FrozenTrial) -> None:
        """Every configuration of the finite search space has been run and none is paused
        with a checkpoint: this worker's ``optimize`` stops after ``trial`` (which runs a
        configuration again), and the user is told once."""
        self._stop_after.add(trial._trial_id)
        self._warn_exhausted()

    def _warn_exhausted(self) -> None:
        if not self._warned_exhausted:
            self._warned_exhausted = True
            _logger.warning(
                "FMSSampler has run every configuration of the search space and none is left to "
                "continue: the search is exhausted, and study.optimize stops. "
                "Widen the search space, or pass FMSSampler(rerun=True) if "
                "the objective is noisy and configurations should be trained again."
            )

    def _decide(self, study: Study) -> Decision | None:
        """DyHPO's decision for the next trial, or ``None`` to sample at random."""
        return self._engine.next_trial(study)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._engine.search_space(study)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if study._is_multi_objective():
            raise ValueError(
                "FMSSampler supports single-objective studies only; use "
                "optuna.samplers.TPESampler or NSGAIISampler for multi-objective studies."
            )
        if not search_space:
            return {}
        proposal = self._stored_proposal(study, trial)
        if proposal is not None and SpaceEncoder(search_space).contains(proposal):
            return {name: proposal[name] for name in search_space}
        if self._ready(study):
            params = self._engine.fresh_params(study, search_space)
            if params is not None:
                return params
        tried = [
            t.params for t in study.get_trials(deepcopy=False) if t._trial_id != trial._trial_id
        ]
        return self._engine.random_params(search_space, tried)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if study._is_multi_objective():
            raise ValueError("FMSSampler supports single-objective studies only.")
        proposal = self._stored_proposal(study, trial)
        if proposal is not None and SpaceEncoder({param_name: param_distribution}).contains(
            proposal
        ):
            return proposal[param_name]
        if (
            self._warn_independent_sampling
            and param_name not in self._warned_params
            and self._ready(study)
        ):
            self._warned_params.add(param_name)
            _logger.warning(
                "FMSSampler samples parameter '%s' with %s: it is not in every trial's search "
                "space (dynamic or conditional), so the surrogate does not model it.",
                param_name,
                type(self._independent_sampler).__name__,
            )
        return self._independent_sampler.sample_independent(
            study, trial, param_name, param_distribution
        )

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._independent_sampler.after_trial(study, trial, state, values)
        freeze_thaw = self._engine.freeze_thaw(study)
        freeze_thaw.end_pause(trial, state)
        if trial._trial_id in self._stop_after or self._engine.exhausted(
            study, finishing=trial._trial_id, state=state
        ):
            self._stop_after.discard(trial._trial_id)
            self._warn_exhausted()
            try:
                study.stop()
            except RuntimeError:  # study.tell outside study.optimize: nothing to stop
                pass
        unresumed = freeze_thaw.end_continuation(trial, state)
        if unresumed is not None and not self._warned_no_resume:
            self._warned_no_resume = True
            _logger.warning(
                "Trial %d was chosen to continue paused trial %d but the objective never "
                "called optuna_fms.resume(trial, model, optimizer); continuation of paused "
                "trials is now off for this study. Call resume() before training to use "
                "freeze-thaw.",
                trial.number,
                unresumed.trial,
            )

    def _stored_proposal(self, study: Study, trial: FrozenTrial) -> dict[str, Any] | None:
        return self._engine.freeze_thaw(study).proposal(trial._trial_id)


def _in_optimize(study: Study) -> bool:
    """Whether ``study.optimize`` runs the trial being sampled (with Optuna's heartbeat, if
    the storage has one, whose thread starts once ``ask`` has returned)."""
    return bool(getattr(study._thread_local, "in_optimize_loop", False))
