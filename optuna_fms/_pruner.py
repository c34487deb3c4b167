from __future__ import annotations

import math

from optuna.pruners import BasePruner
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms import _attrs
from optuna_fms._engine import Engine
from optuna_fms._engine import engine_of
from optuna_fms._surrogate.allocation import ModelBasedRungs


class FMSPruner(BasePruner):
    """Pause trials whose next step is not worth its compute.

    At each report (or every ``interval`` steps) the allocation rule of the study's
    :class:`~optuna_fms.FMSSampler` (``allocation``) decides from the surrogate's forecasts
    whether the running trial keeps its next step. With ``"rungs"`` it is compared at 1, 3,
    9, ... steps and goes on while its forecast final score is in the top third of the
    configurations that reached that rung; with ``"one-step"`` (DyHPO) it goes on while the
    expected improvement of its next step is at least ``tolerance`` times the best
    alternative use of the same compute; with ``"one-step-promoting"`` it goes on when either
    holds. Otherwise it is *paused*: Optuna records it as
    PRUNED, and when its checkpoint at the current step exists (see
    :func:`~optuna_fms.save_checkpoint`), :class:`~optuna_fms.FMSSampler` may later continue
    it from there (freeze-thaw).

    A pause without a checkpoint at its step (or with continuations off) is a final stop,
    decided by successive halving alone
    (the internal ``ModelBasedRungs`` allocation rule with Hyperband's brackets, on
    rungs ``min_steps * 3**k`` raised to the steps it decides at): such a trial stops only at
    a rung, outside the top third of the forecasts there. Without checkpoints the one-step
    rules stopped nearly every configuration after one step, and letting them keep a trial
    that successive halving would stop lost on two hubs of five (docs/experiments.md).

    The pruner uses the engine (and surrogate) of the study's
    :class:`~optuna_fms.FMSSampler` when there is one (one fit per process), and its own
    otherwise. During the first ``n_startup_trials`` trials it pauses each at ``min_steps``
    (DyHPO's start; ``pause_startup=False`` lets them run). It never pauses before
    ``min_steps`` steps, at the last step, or while the surrogate cannot be fitted.

    Parameters
    ----------
    max_steps:
        The full budget: the number of steps (epochs) a trial runs when never paused.
    min_steps:
        Steps every trial runs before it can be paused.
    interval:
        Decide every ``interval`` steps after ``min_steps``.
    n_startup_trials:
        Finished trials (complete or pruned) needed before pausing by expected improvement.
    pause_startup:
        Pause every trial that reaches ``min_steps`` while fewer than ``n_startup_trials``
        trials have finished (DyHPO's start: several configurations at one step each, which
        the sampler continues later when they are worth it). ``False`` lets those trials run
        to the full budget.
    tolerance:
        For rules that compare values (``"one-step"``, ``"final"``, ``"random-horizon"``):
        keep running while the trial's value is at least this fraction of the best
        alternative's. ``1.0`` is DyHPO's strict argmax; lower values pause less.
    seed:
        Seed of the pruner's own surrogate (used only without an FMSSampler).

    Examples
    --------
    >>> import optuna, optuna_fms
    >>> pruner = optuna_fms.FMSPruner(max_steps=20, min_steps=2)
    >>> study = optuna.create_study(pruner=pruner)
    >>> def objective(trial):
    ...     lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    ...     loss = 1.0
    ...     for step in range(20):
    ...         loss *= 1 - lr / 2
    ...         trial.report(loss, step)
    ...         if trial.should_prune():
    ...             raise optuna.TrialPruned()
    ...     return loss
    >>> study.optimize(objective, n_trials=3)
    """

    def __init__(
        self,
        max_steps: int,
        *,
        min_steps: int = 1,
        interval: int = 1,
        n_startup_trials: int = 10,
        pause_startup: bool = True,
        tolerance: float = 0.5,
        seed: int | None = None,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
        if min_steps < 1 or interval < 1:
            raise ValueError("min_steps and interval must be >= 1.")
        if not 0.0 <= tolerance:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}.")
        self.max_steps = max_steps
        self._min_steps = min_steps
        self._interval = interval
        self._n_startup_trials = n_startup_trials
        self._pause_startup = pause_startup
        self._tolerance = tolerance
        self._own = Engine(seed=seed, max_steps=max_steps)
        self._stops = ModelBasedRungs(first=min_steps, interval=interval)
        self._unsaved: dict[int, int] = {}
        """Trial id -> step of the pauses decided here before their checkpoint was saved."""

    def engine(self, study: Study) -> Engine:
        """The engine this pruner decides with on ``study``: the FMSSampler's, else its own."""
        return engine_of(study) or self._own

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        self._unsaved.pop(trial._trial_id, None)
        if self._should_pause(study, trial, step):
            self._pause(study, trial)
            return True
        # The trial goes on: a claim opened by an earlier decision no longer stands for it.
        self.engine(study).freeze_thaw(study).go_on(trial)
        return False

    def _should_pause(self, study: Study, trial: FrozenTrial, step: int) -> bool:
        budget = step + 1
        if budget < self._min_steps or budget >= self.max_steps:
            return False
        if (budget - self._min_steps) % self._interval:
            return False
        restart = _attrs.read_restart_step(trial.system_attrs)
        if restart is not None and step <= restart:
            return False  # trained again from scratch to go past where it was pruned
        value = trial.intermediate_values[step]
        finished = study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
        )
        if len(finished) < self._n_startup_trials:
            # DyHPO's start: many configurations at one step each, continued later by EI.
            return self._pause_startup and budget == self._min_steps and not math.isnan(value)
        engine = self.engine(study)
        forecast = engine.keeps_running(study, trial, step, self._tolerance, stops=self._stops)
        if forecast is None:
            return False
        record = _attrs.ForecastRecord(step=step, mean=forecast.mean, std=forecast.std)
        engine.freeze_thaw(study).record_forecast(trial._trial_id, record)
        # A NaN report carries no evidence either way: never pause on it.
        if math.isnan(value):
            return False
        return not forecast.keeps

    def _pause(self, study: Study, trial: FrozenTrial) -> None:
        """Record ``trial`` as paused at its last step, continuable if checkpointed there
        (:meth:`FreezeThaw.pause <optuna_fms._freeze_thaw.FreezeThaw.pause>`); a pause that
        waits for its checkpoint is remembered for :meth:`_checkpoint_saved`."""
        if self.engine(study).freeze_thaw(study).pause(trial):
            assert trial.last_step is not None
            self._unsaved[trial._trial_id] = trial.last_step

    def _checkpoint_saved(self, study: Study, trial_id: int, step: int) -> None:
        """Make a pause decided here at ``step`` continuable now that its checkpoint exists.

        Called by :func:`~optuna_fms.save_checkpoint` (an objective that saves after
        ``should_prune()`` returned ``True``). Only a pause this pruner decided for this very
        trial counts (an attribute copied by a retry does not), and only while the trial is
        running and has reported nothing after the pause.
        """
        if self._unsaved.get(trial_id) != step:
            return
        self._unsaved.pop(trial_id, None)
        trial = self.engine(study).freeze_thaw(study).trial(trial_id)
        if trial.state == TrialState.RUNNING and trial.last_step == step:
            self._pause(study, trial)
