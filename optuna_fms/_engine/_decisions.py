"""The three decisions, each one call that returns it: what to start, what to continue, and
whether a running trial keeps its next step.

The allocation rule (:mod:`optuna_fms._surrogate.allocation`) plugs in here: the engine's
rule is asked with the options built from a fit (fresh candidates, paused trials, trials to
restart, the running trial) and its choice is turned back into trials and parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms import _attrs
from optuna_fms._engine._curves import closed
from optuna_fms._engine._curves import config_key
from optuna_fms._engine._curves import longest_curves
from optuna_fms._engine._curves import restartable
from optuna_fms._engine._curves import unfinished
from optuna_fms._engine._records import Decision
from optuna_fms._engine._records import Fit
from optuna_fms._engine._records import StepForecast
from optuna_fms._surrogate import Curve
from optuna_fms._surrogate import SpaceEncoder
from optuna_fms._surrogate import SurrogateFitError
from optuna_fms._surrogate import acquisition
from optuna_fms._surrogate.allocation import AllocationRule
from optuna_fms._surrogate.allocation import Options
from optuna_fms._surrogate.allocation import View


if TYPE_CHECKING:
    from optuna_fms._engine._engine import Engine


_RANDOM_DRAWS = 64
"""Random draws among which a random configuration not tried yet is looked for."""
_MAX_ENUMERATED = 20_000
"""A finite search space up to this size is enumerated once random candidates are all run."""
_WARM_MIN_GAP = 0.05
"""Smallest distance (max over encoded inputs) of a warm-start proposal to a tried one."""


class Decisions:
    """An engine's decisions, made by its allocation rule on its fits.

    Parameters
    ----------
    engine:
        The engine whose rule, studies, fits and weight inputs are read.
    rng:
        The engine's random generator (candidates, random configurations).
    n_candidates:
        Quasi-random candidates scored for a fresh configuration (as many local moves).
    rerun:
        Whether a configuration some trial has run may be started again from scratch.

    Examples
    --------
    >>> import optuna
    >>> from optuna_fms._engine import Engine
    >>> space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    >>> sorted(Engine(seed=0).decisions.random_params(space))
    ['x']
    """

    def __init__(
        self, engine: Engine, rng: np.random.RandomState, *, n_candidates: int, rerun: bool
    ) -> None:
        self._engine = engine
        self._rng = rng
        self._n_candidates = n_candidates
        self._rerun = rerun

    # ---------------------------------------------------------------- what to start
    def warm_proposal(self, study: Study) -> dict[str, Any] | None:
        """Before the study's own GP can be fitted: the fresh configuration the earlier
        studies (``warm_start``) forecast best at the full budget, away from those tried;
        ``None`` without them. Before the study's first trial defines its search space, the
        proposal is in the space the earlier studies share (parameters the objective then
        suggests with other distributions are sampled at random)."""
        warm = self._engine.warm
        if warm is None:
            return None
        space = self._engine.search_space(study) or warm.search_space()
        if not space or not warm.fit(space):
            return None
        encoder = SpaceEncoder(space)
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        tried = [t.params for t in trials if encoder.contains(t.params)]
        x = acquisition.fresh_candidates(
            encoder, np.zeros((0, encoder.dim)), self._n_candidates, self._rng
        )
        forecast = warm.final_forecast(encoder, x)
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

    def propose(self, study: Study, fit: Fit) -> Decision | None:
        """The allocation rule's choice: a fresh configuration or a paused trial to continue
        (``None`` if the surrogate's prediction fails: the sampler then samples at random).
        ``Decision.fresh`` is ``None`` when no configuration is left to start (a finite
        space, every configuration run) and nothing paused either: the search is exhausted.
        """
        try:
            fresh = self._fresh(fit)
            paused = self._paused(study, fit)
            # Every configuration run: those pruned without a checkpoint short of the
            # full budget can only go on by training again from scratch. They are offered
            # as paused trials are, by their curves (a restart is a continuation that
            # recomputes its first steps), and only then: a new configuration costs less.
            restarts = [] if self._rerun or len(fresh.x) else restartable(fit)
            curves = [c for _, c in paused] + restarts
            rule = self._engine.rule
            pick = rule.choose(self._view(fit), fresh, self._curve_options(fit, curves))
        except SurrogateFitError as err:
            self._engine.fit_failed(study, err)
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
        try:
            fresh = self._fresh(fit)
            pick = self._engine.rule.choose(self._view(fit), fresh, self._paused_options(fit, []))
        except SurrogateFitError as err:
            self._engine.fit_failed(study, err)
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
        engine = self._engine
        space = engine.search_space(study)
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
        if not closed(space, trials):
            return False
        seen = {config_key(t.params) for t in trials if encoder.contains(t.params)}
        if len(seen) < size:
            return False
        if unfinished(trials, engine.max_steps(study, trials), finishing, state):
            return False
        return engine.freeze_thaw(study).nothing_to_continue()

    # ---------------------------------------------------------------- whether to keep running
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
        continue from, or continuations are off). It then decides alone: the allocation
        rule's pause weighs one more step against starting something new, which is right
        when the paused trial can be taken up again; a stop cannot be. (Letting either rule
        keep the trial, as until December 2026, kept one-step expected improvement in the
        decision and lost to successive halving's ranks alone on the hub suite:
        docs/experiments.md.)
        """
        try:
            return self._step_forecast(study, fit, trial, tolerance, stops)
        except SurrogateFitError as err:
            self._engine.fit_failed(study, err)
            return None

    def _step_forecast(
        self,
        study: Study,
        fit: Fit,
        trial: FrozenTrial,
        tolerance: float,
        stops: AllocationRule | None,
    ) -> StepForecast:
        engine = self._engine
        view = self._view(fit)
        sign = engine.sign(study)
        steps = sorted(trial.intermediate_values)
        hist = sign * np.array([trial.intermediate_values[s] for s in steps], dtype=float)
        x = fit.encoder.encode([trial.params])
        ckpt = -1.0
        if engine.weight_inputs.bank is not None:
            curve = Curve(
                key=trial._trial_id,
                params=dict(trial.params),
                steps=np.array(steps),
                values=hist,
                checkpoints=_attrs.read_checkpoints(trial.user_attrs),
            )
            budget = min(steps[-1] + 2, fit.max_steps)
            ckpt = engine.weight_inputs.index(curve, budget, trial)
        ckpts = np.array([ckpt])
        running = Options(x, np.array([steps[-1] + 1]), [hist], ckpts)
        if stops is not None:
            keeps = stops.keeps_running(view, running, 0.0, tolerance)
        else:
            alternative = self._alternative(study, fit, view)
            keeps = engine.rule.keeps_running(view, running, alternative, tolerance)
        at_end = fit.model.predict(x, np.array([fit.max_steps]), [hist], ckpts)
        mean, std = engine.forecaster.objective_units(study, fit, *at_end)
        return StepForecast(keeps=keeps, mean=float(mean[0]), std=float(std[0]))

    def _alternative(self, study: Study, fit: Fit, view: View) -> float:
        """The rule's value of the best other use of one step. A cacheable rule's value is
        kept while the model has not been trained again (conditioning on new observations
        does not count): scoring a thousand candidates at every report would make
        ``should_prune`` as costly as ``ask``."""
        state = self._engine.state(study)
        rule = self._engine.rule
        if (
            rule.cacheable
            and state.alternative is not None
            and state.alternative[0] == fit.n_trained
        ):
            return state.alternative[1]
        paused = self._paused_options(fit, self._paused(study, fit))
        best = rule.alternative(view, self._fresh(fit), paused)
        state.alternative = (fit.n_trained, best)
        return best

    # ---------------------------------------------------------------- the options
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
            elif closed(fit.encoder.search_space, fit.trials.values()):
                grid = fit.encoder.grid(_MAX_ENUMERATED)
                if grid is not None:
                    x = fit.encoder.encode(grid) if grid else np.zeros((0, fit.encoder.dim))
                    x = x[[row.tobytes() not in seen for row in x]]
        inputs = self._engine.weight_inputs
        ckpts = inputs.start_indices(fit.encoder.decode(x)) if len(x) else None
        if ckpts is None and inputs.bank is not None:
            ckpts = np.zeros(0)
        return Options.fresh(x, ckpts)

    def _paused(self, study: Study, fit: Fit) -> list[tuple[FrozenTrial, Curve]]:
        """Open claims and the curves of the paused trials they stand for, short of the full
        budget."""
        by_key = {c.key: c for c in fit.curves}
        out = []
        for claim, trial in self._engine.freeze_thaw(study).open_pauses(fit.trials):
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
        inputs = self._engine.weight_inputs
        if inputs.bank is not None:
            ckpts = np.array([inputs.index(c, c.last_step + 2, fit.trials[c.key]) for c in curves])
        return Options(x, done, histories, ckpts)

    def _view(self, fit: Fit) -> View:
        """What the allocation rule reads besides the options (the observed configurations,
        each by its longest curve, built only if the rule asks)."""
        return View(fit.model, self._rng, lambda: self._curve_options(fit, longest_curves(fit)))
