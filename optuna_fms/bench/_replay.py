"""Replay a hub: run a method as a real Optuna study whose objective reads the hub.

The objective goes through the same public API a user's training loop calls (see
docs/benchmarks.md): it suggests the hub's search space, restores a continued trial with
:func:`optuna_fms.resume`, and for each epoch loads the stored checkpoint into the network,
saves it with :func:`optuna_fms.save_checkpoint`, reports the stored score and asks
``should_prune``. Only the training itself is replaced by a table look-up.

Every hub is a full grid and its search space is exactly that grid (categories as categorical
choices, ordered values as integer indices), so every proposal of every sampler is a trained
configuration: the objective replays the configuration whose parameters are exactly the
trial's (:meth:`Hub.find_config`), and there is no nearest-configuration matching anywhere. The
configuration is recorded in the trial's user attribute ``bench:config`` and its
hyper-parameter values (indices resolved) in ``bench:hyperparameters``.

The study has the hub's direction (:attr:`Hub.direction`) and a trial reports the hub's
metric as measured (:attr:`Hub.values`: the validation loss on a minimised hub). Everything
the harness ranks or subtracts (best observed, regret, Kendall's tau, the recommendation) is in
the hub's higher-is-better units (:attr:`Hub.scores`, the metric times :attr:`Hub.sign`): the
sign is applied where a value crosses from the study to the harness, in :func:`make_objective`
(what the tracker records) and :func:`predict_final_scores` (the surrogate's forecasts).

Epochs spent count the epochs replayed: a continuation counts only the epochs after its
parent's pause (:func:`optuna_fms.epochs_spent`). A study stops at the budget
(:class:`optuna_fms.EpochBudget`); a trial still running when the budget is reached is cut
there, so no method spends more than the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import as_completed
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
import math
import multiprocessing
import os
from pathlib import Path
import tempfile
import time
import traceback
from typing import Any
import warnings

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import Trial

import optuna_fms
from optuna_fms import _attrs
from optuna_fms.bench._allocation import CONFIG_ATTR
from optuna_fms.bench._allocation import allocation_stats
from optuna_fms.bench._hub import Hub
from optuna_fms.bench._methods import get_method
from optuna_fms.bench._metrics import TAU_BUDGETS
from optuna_fms.bench._metrics import kendall_tau


HPARAMS_ATTR = "bench:hyperparameters"
"""Trial user attribute: the replayed configuration's hyper-parameter values."""

_SAMPLER_METHODS = (
    "infer_relative_search_space",
    "sample_relative",
    "sample_independent",
    "before_trial",
    "after_trial",
)


# ------------------------------------------------------------------------------ timing
class Stopwatch:
    """Accumulated wall time of the outermost timed calls (nested calls are not counted
    twice)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._depth = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
                self._depth -= 1

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


def time_sampler(sampler: BaseSampler) -> Stopwatch:
    """Time every call Optuna makes to ``sampler``.

    The timed versions are installed on the instance itself rather than in a delegating
    wrapper class: :class:`~optuna_fms.FMSPruner` and :func:`optuna_fms.forecast` find the
    sampler's engine as ``study.sampler.engine``, and a wrapper would hide it.
    Under a HyperbandPruner Optuna hands the sampler a bracket-filtered study; the timed
    methods pass whatever study they get through unchanged.
    """
    watch = Stopwatch()
    for name in _SAMPLER_METHODS:
        setattr(sampler, name, watch.wrap(getattr(sampler, name)))
    return watch


def time_pruner(pruner: BasePruner) -> Stopwatch:
    """Time every ``prune`` call (``trial.should_prune`` calls it once)."""
    watch = Stopwatch()
    pruner.prune = watch.wrap(pruner.prune)  # type: ignore[method-assign]
    return watch


# ------------------------------------------------------------------------------ results
@dataclass
class RunResult:
    """One method on one hub with one seed.

    Every score here is in the hub's higher-is-better units (:attr:`Hub.scores`: the
    validation accuracy, or minus the validation loss on a minimised hub), so that regret is
    ``best_final_score - score`` and non-negative up to intermediate epochs beating every final
    one, whatever the hub's direction. ``best_final_score`` is :attr:`Hub.best_final_score`.

    ``best_observed[e - 1]`` is the best score reported in the first ``e`` epochs spent,
    ``incumbent_final[e - 1]`` the true final score of the configuration that reported it, and
    ``recommended_final[e - 1]`` the true final score of the configuration a user of the
    method would pick then without a model: the one whose furthest-trained observation is
    the best (the last observed score as the forecast of the final one).

    ``tau``, ``tau_observed`` and ``tau_unseen`` map an epoch count to Kendall's tau of the
    surrogate's forecast of the final score at that moment, over all configurations, over
    those some trial has replayed and over the others (NaN where the surrogate had no fit or
    fewer than two configurations; empty for methods without a surrogate).
    ``forecast_recommended_final`` maps the same epoch counts to the true final score of the
    configuration :func:`optuna_fms.recommend` returns, and ``n_observed`` to the
    number of configurations observed then (the size of the observed split).
    """

    hub: str
    method: str
    seed: int
    budget: int
    best_final_score: float
    best_observed: list[float] = field(default_factory=list)
    incumbent_final: list[float] = field(default_factory=list)
    recommended_final: list[float] = field(default_factory=list)
    tau: dict[int, float] = field(default_factory=dict)
    tau_observed: dict[int, float] = field(default_factory=dict)
    tau_last_observed: dict[int, float] = field(default_factory=dict)
    """The reference for ``tau_observed``: Kendall's tau of the observed configurations' own
    last observed score (the furthest-trained one) against their final score."""
    diagnostics: dict[int, dict[str, Any]] = field(default_factory=dict)
    """At the same epoch counts, :func:`optuna_fms.diagnose` of the surrogate (as a dict)."""
    tau_unseen: dict[int, float] = field(default_factory=dict)
    forecast_recommended_final: dict[int, float] = field(default_factory=dict)
    n_observed: dict[int, int] = field(default_factory=dict)
    sampler_seconds: float = 0.0
    pruner_seconds: float = 0.0
    snapshot_seconds: float = 0.0
    wall_seconds: float = 0.0
    n_trials: int = 0
    n_continued: int = 0
    n_configs: int = 0
    allocation: dict[str, float] = field(default_factory=dict)
    """How the epochs were spent (:func:`optuna_fms.bench._allocation.allocation_stats`)."""
    epochs_spent: int = 0
    error: str | None = None

    @property
    def regret(self) -> np.ndarray:
        return self.best_final_score - np.asarray(self.best_observed, dtype=float)

    @property
    def incumbent_regret(self) -> np.ndarray:
        return self.best_final_score - np.asarray(self.incumbent_final, dtype=float)

    @property
    def recommendation_regret(self) -> np.ndarray:
        return self.best_final_score - np.asarray(self.recommended_final, dtype=float)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in (*_BUDGET_MAPS, "n_observed", "diagnostics"):
            d[k] = {str(b): v for b, v in getattr(self, k).items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        d = dict(d)
        for k in _BUDGET_MAPS:
            d[k] = {int(b): float(v) for b, v in d.get(k, {}).items()}
        d["n_observed"] = {int(b): int(v) for b, v in d.get("n_observed", {}).items()}
        d["diagnostics"] = {int(b): dict(v) for b, v in d.get("diagnostics", {}).items()}
        return cls(**d)


_BUDGET_MAPS = (
    "tau",
    "tau_observed",
    "tau_unseen",
    "tau_last_observed",
    "forecast_recommended_final",
)


class _Tracker:
    """Scores reported so far (higher-is-better units), epoch by epoch spent."""

    def __init__(self, hub: Hub, budget: int) -> None:
        self.hub = hub
        self.budget = budget
        self.final = hub.final_scores()
        self.best = -math.inf
        self.incumbent = -1
        self.result_best: list[float] = []
        self.result_inc: list[float] = []
        self.result_rec: list[float] = []
        # config -> (furthest epoch observed, score there)
        self.latest: dict[int, tuple[int, float]] = {}
        self.recommended = -1

    @property
    def spent(self) -> int:
        return len(self.result_best)

    @property
    def touched(self) -> set[int]:
        return set(self.latest)

    def record(self, score: float, config_id: int, epoch: int) -> None:
        if score > self.best:
            self.best, self.incumbent = float(score), config_id
        seen = self.latest.get(config_id)
        if seen is None or epoch >= seen[0]:
            self.latest[config_id] = (epoch, float(score))
        if config_id == self.recommended or self.recommended < 0:
            # The recommendation's own value changed: look at every configuration again.
            self.recommended = max(self.latest, key=lambda c: self.latest[c][::-1])
        elif self.latest[config_id][::-1] > self.latest[self.recommended][::-1]:
            self.recommended = config_id
        self.result_best.append(self.best)
        self.result_inc.append(float(self.final[self.incumbent]))
        self.result_rec.append(float(self.final[self.recommended]))


# ------------------------------------------------------------------------------ the objective
def suggest(trial: Trial, name: str, dist: BaseDistribution) -> Any:
    """``trial.suggest_*`` for one of the hub's distributions."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"Unsupported distribution {dist!r}.")


def make_objective(
    hub: Hub,
    store: Any,
    tracker: _Tracker,
    on_epoch: Callable[[Trial], None] | None = None,
    checkpoints: bool = True,
) -> Callable[[Trial], float]:
    """The replay objective: a user's training loop with training replaced by the hub.

    A trial reports and returns the hub's metric as measured (:attr:`Hub.values`, for a study
    created with :attr:`Hub.direction`); ``tracker`` records the higher-is-better score.
    ``checkpoints=False`` is the loop of a user who never calls ``save_checkpoint`` nor
    ``resume`` (FMS's pauses are then final).
    """

    def objective(trial: Trial) -> float:
        params = {name: suggest(trial, name, d) for name, d in hub.search_space.items()}
        c = hub.find_config(params)  # the search space is the grid: always exact
        trial.set_user_attr(CONFIG_ATTR, c)
        trial.set_user_attr(HPARAMS_ATTR, hub.hyperparameters(c))
        module = hub.module(c) if checkpoints else None
        start = optuna_fms.resume(trial, module, artifact_store=store) if module else 0
        value = math.nan
        for epoch in range(start, hub.n_epochs):
            if tracker.spent >= tracker.budget:
                raise optuna.TrialPruned("epoch budget spent")
            if module is not None:
                module.load_state_dict(hub.checkpoint(c, epoch))
                optuna_fms.save_checkpoint(trial, module, step=epoch, artifact_store=store)
            value = float(hub.values[c, epoch])
            trial.report(value, epoch)
            tracker.record(float(hub.scores[c, epoch]), c, epoch)
            if on_epoch is not None:
                on_epoch(trial)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return objective


# ------------------------------------------------------------------------------ tau
def predict_final_scores(study: Study, hub: Hub) -> np.ndarray | None:
    """The FMS surrogate's forecast of every hub configuration's final score.

    Read through the public :func:`optuna_fms.forecast`, which brings the surrogate up to
    date as the sampler would before its next proposal. A configuration some trial has run
    is forecast from the longest learning curve observed for it (and, with checkpoint
    features, that trial's newest checkpoint); one no trial has run from its parameters
    alone, with an empty curve and its starting weights (never weights of a run that has
    not happened). Returns ``None`` when the surrogate has no fit.

    The forecasts are of the study's objective (a loss on a minimised hub); they are returned
    times :attr:`Hub.sign`, in the units of :meth:`Hub.final_scores` (higher is better), so
    that Kendall's tau against the true final scores has the right sign on every hub.
    """
    try:
        forecasts = optuna_fms.forecast(study, list(hub.configs))
    except optuna_fms.SurrogateFitError:
        return None
    return hub.sign * np.array([f.mean for f in forecasts])


# ------------------------------------------------------------------------------ one run
def run_replay(
    hub: Hub,
    method: str,
    seed: int,
    budget: int,
    *,
    tau_budgets: Sequence[int] = TAU_BUDGETS,
    sampler_pruner: tuple[BaseSampler, BasePruner] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    storage: str | optuna.storages.BaseStorage | None = None,
) -> RunResult:
    """Run ``method`` on ``hub`` with ``seed`` until ``budget`` epochs are spent.

    Parameters
    ----------
    hub:
        The hub to replay.
    method:
        A name from :data:`optuna_fms.bench._methods.METHODS` (only a label when
        ``sampler_pruner`` is given).
    seed:
        Seeds the sampler and pruner; nothing else is carried between runs.
    budget:
        Epochs to spend.
    tau_budgets:
        Epoch counts at which Kendall's tau of the surrogate is taken (methods with one).
    sampler_pruner:
        Use these instead of the registered method's (tests: an oracle sampler).
    workdir:
        Directory for the artifact store (default: a temporary directory, removed after).
    storage:
        Storage of the run's study (default: a fresh in-memory one); pass one to inspect the
        trials afterwards.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from optuna_fms.bench import Hub, build_hub
    >>> hub = Hub.load(build_hub("tiny", Path(tempfile.mkdtemp()), workers=1, progress=False))
    >>> r = run_replay(hub, "random", seed=0, budget=20)
    >>> r.epochs_spent, len(r.best_observed)
    (20, 20)
    """
    torch_seed(seed)
    m = get_method(method) if sampler_pruner is None else None
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="fms-replay-") as tmp:
            return _run(hub, method, seed, budget, tau_budgets, m, sampler_pruner, tmp, storage)
    return _run(hub, method, seed, budget, tau_budgets, m, sampler_pruner, str(workdir), storage)


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _run(
    hub: Hub,
    method: str,
    seed: int,
    budget: int,
    tau_budgets: Sequence[int],
    m: Any,
    sampler_pruner: tuple[BaseSampler, BasePruner] | None,
    workdir: str,
    storage: str | optuna.storages.BaseStorage | None = None,
) -> RunResult:
    store = optuna.artifacts.FileSystemArtifactStore(workdir)
    sampler, pruner = sampler_pruner if sampler_pruner is not None else m.make(hub, seed, store)
    sampler_watch = time_sampler(sampler)
    pruner_watch = time_pruner(pruner)
    tracker = _Tracker(hub, budget)
    result = RunResult(
        hub=hub.name,
        method=method,
        seed=seed,
        budget=budget,
        best_final_score=hub.best_final_score,
    )
    has_surrogate = hasattr(sampler, "engine") and (m is None or m.surrogate)
    pending = sorted(b for b in tau_budgets if b <= budget) if has_surrogate else []
    if has_surrogate:
        for k in _BUDGET_MAPS:
            setattr(result, k, {b: math.nan for b in pending})
    true_final = hub.final_scores()

    def on_epoch(trial: Trial) -> None:
        if not pending or tracker.spent < pending[0]:
            return
        b = pending.pop(0)
        t0 = time.perf_counter()
        predicted = predict_final_scores(trial.study, hub)
        if predicted is not None:
            seen = np.zeros(hub.n_configs, dtype=bool)
            seen[list(tracker.touched)] = True
            result.n_observed[b] = int(seen.sum())
            result.tau[b] = kendall_tau(predicted, true_final)
            result.tau_observed[b] = kendall_tau(predicted[seen], true_final[seen])
            ids = np.flatnonzero(seen)
            last = np.array([tracker.latest[int(c)][1] for c in ids])
            result.tau_last_observed[b] = kendall_tau(last, true_final[ids])
            try:
                result.diagnostics[b] = asdict(optuna_fms.diagnose(trial.study))
            except optuna_fms.SurrogateFitError:
                pass
            result.tau_unseen[b] = kendall_tau(predicted[~seen], true_final[~seen])
            try:
                # The public call a user makes (the same fit as ``predicted``).
                recommended = optuna_fms.recommend(trial.study)
                best = hub.find_config(recommended.params)
                result.forecast_recommended_final[b] = float(true_final[best])
            except optuna_fms.SurrogateFitError:
                pass
        result.snapshot_seconds += time.perf_counter() - t0

    study = optuna.create_study(
        direction=hub.study_direction, sampler=sampler, pruner=pruner, storage=storage
    )
    checkpoints = m.checkpoints if m is not None else True
    objective = make_objective(hub, store, tracker, on_epoch, checkpoints=checkpoints)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(
            objective, n_trials=10 * budget + 10, callbacks=[optuna_fms.EpochBudget(budget)]
        )
    result.wall_seconds = time.perf_counter() - t0
    trials = study.get_trials(deepcopy=False)
    result.best_observed = tracker.result_best
    result.incumbent_final = tracker.result_inc
    result.recommended_final = tracker.result_rec
    result.sampler_seconds = sampler_watch.seconds
    result.pruner_seconds = pruner_watch.seconds
    result.n_trials = len(trials)
    result.n_continued = sum(1 for t in trials if _attrs.read_resumed(t.user_attrs))
    result.n_configs = len(tracker.touched)
    result.epochs_spent = optuna_fms.epochs_spent(trials)
    result.allocation = allocation_stats(trials, hub.final_scores(), hub.n_epochs)
    return result


# ------------------------------------------------------------------------------ many runs
_HUBS: dict[str, Hub] = {}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def _job(args: tuple[str, str, int, int, tuple[int, ...]]) -> dict[str, Any]:
    path, method, seed, budget, tau_budgets = args
    hub = _HUBS.get(path)
    if hub is None:
        hub = _HUBS[path] = Hub.load(path)
    try:
        return run_replay(hub, method, seed, budget, tau_budgets=tau_budgets).to_dict()
    except Exception:  # noqa: BLE001 - report the failure in the table, keep the others
        return RunResult(
            hub=hub.name,
            method=method,
            seed=seed,
            budget=budget,
            best_final_score=hub.best_final_score,
            error=traceback.format_exc(limit=8),
        ).to_dict()


def run_many(
    hub_path: str | Path,
    methods: Sequence[str],
    seeds: Iterable[int],
    budget: int,
    *,
    workers: int = 1,
    tau_budgets: Sequence[int] = TAU_BUDGETS,
    progress: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every method with every seed on the hub at ``hub_path``, in ``workers`` processes with
    one torch thread each. Failed runs come back with ``error`` set."""
    jobs = [(str(hub_path), m, s, budget, tuple(tau_budgets)) for s in seeds for m in methods]
    out: list[RunResult] = []
    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        _worker_init()
        try:
            for job in jobs:
                r = RunResult.from_dict(_job(job))
                out.append(r)
                if progress is not None:
                    progress(r)
        finally:
            torch.set_num_threads(threads)
        return out
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        futures = [pool.submit(_job, job) for job in jobs]
        for future in as_completed(futures):
            r = RunResult.from_dict(future.result())
            out.append(r)
            if progress is not None:
                progress(r)
    order = {(m, s): i for i, (_, m, s, _, _) in enumerate(jobs)}
    return sorted(out, key=lambda r: order[(r.method, r.seed)])
