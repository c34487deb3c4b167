"""What FMS is doing, shown in optuna-dashboard: a learning-curve figure and a study note.

optuna-dashboard already shows, per trial, the user attributes FMS writes (``fms:forecast``,
``fms:paused``, ``fms:continues``, ``fms:checkpoints``) and the checkpoints as trial artifacts.
:class:`DashboardReport` adds the study-level view: one plotly figure (saved with
:func:`optuna_dashboard.save_plotly_graph_object`) of the observed learning curves, with
continuations joined to the curves of the trials they continue, pauses marked, and the
forecast band of the leading configurations; and a markdown note (saved with
:func:`optuna_dashboard.save_note`) with what FMS has done so far.

A paused trial is finished (PRUNED) before anything continues it, and Optuna refuses to
update a finished trial, so "continued by" cannot be a user attribute of the paused trial.
It is shown from the child's side (``fms:continues``), in the note's table of continuations
and in the figure's hover text instead.

optuna-dashboard is optional: without it the callback writes nothing (and warns once). The
figure is built as plotly JSON directly, so plotly itself is not needed either.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import logging
import math
from typing import Any

from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms import _attrs
from optuna_fms._budget import epochs_spent
from optuna_fms._budget import resolve_max_steps
from optuna_fms._dashboard_figure import _chains
from optuna_fms._dashboard_figure import _Figure
from optuna_fms._dashboard_figure import _leading_traces
from optuna_fms._dashboard_figure import _others_trace
from optuna_fms._dashboard_figure import _pause_traces
from optuna_fms._engine import engine_of
from optuna_fms._forecast import Forecast
from optuna_fms._forecast import recommend
from optuna_fms._freeze_thaw import Lineage
from optuna_fms._surrogate import SurrogateFitError


_logger = logging.getLogger("optuna_fms")

GRAPH_OBJECT_ID = "fms-learning-curves"
"""The id under which the figure is saved (and overwritten) in the study's system attributes."""


class DashboardReport:
    """Study callback that shows FMS's learning curves and progress in optuna-dashboard.

    Every ``every`` trials (by trial number, so several workers share the cadence) it saves a
    plotly figure and a markdown note to the study; :meth:`write` does it at any time (call
    it once after ``optimize`` for the final state). Both live in the study's system
    attributes, where optuna-dashboard reads them: the figure on the study's top page, the
    note under it. The figure shows

    - the observed learning curve of every configuration, a continued trial's curve joined to
      the curve of the trial it continues (one line per chain of continuations);
    - in colour, the ``top`` leading configurations (best value observed), the others grey;
    - a marker where FMSPruner paused a trial (filled: paused, open: paused and continued
      later);
    - for a leading configuration that has not reached the full budget, the forecast of its
      final score (``fms:forecast``: mean and two standard deviations), drawn as a band from
      its last observed value to the final step.

    The note counts trials started (fresh and continuations), paused, continued, and epochs
    trained against full-budget training of the same configurations, and lists the latest
    continuations ("trial 3, paused at step 5, continued by trial 12").

    Without optuna-dashboard installed nothing is written and a warning is logged once. The
    callback keeps no state between calls other than that warning flag.

    Parameters
    ----------
    every:
        Write after every ``every``-th trial (``trial.number % every == every - 1``).
    top:
        Configurations drawn in colour, with their forecast band.
    max_steps:
        The full budget in steps. Defaults to the study pruner's ``max_steps`` (as
        :class:`~optuna_fms.FMSPruner` has), else the largest step reported plus one.
    max_continuations:
        Rows of the note's continuation table (the latest ones).

    Examples
    --------
    >>> import optuna, optuna_fms
    >>> def objective(trial):
    ...     x = trial.suggest_float("x", 0, 1)
    ...     for step in range(5):
    ...         trial.report(x * (step + 1), step)
    ...     return x * 5
    >>> report = optuna_fms.DashboardReport(every=2)
    >>> study = optuna.create_study(direction="maximize")
    >>> study.optimize(objective, n_trials=4, callbacks=[report])
    >>> figure = report.figure(study)  # plotly JSON: {"data": [...], "layout": {...}}
    >>> sorted(figure)
    ['data', 'layout']
    >>> print(report.note(study).splitlines()[0])
    ## Forecasting Model Search
    """

    def __init__(
        self,
        every: int = 10,
        *,
        top: int = 5,
        max_steps: int | None = None,
        max_continuations: int = 10,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        if top < 0:
            raise ValueError(f"top must be >= 0, got {top}.")
        self.every = every
        self.top = top
        self.max_steps = max_steps
        self.max_continuations = max_continuations
        self._warned = False

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        if trial.number % self.every == self.every - 1:
            self.write(study)

    def write(self, study: Study) -> bool:
        """Save the figure and the note to ``study`` now; ``False`` without optuna-dashboard."""
        try:
            from optuna_dashboard import save_note
            from optuna_dashboard import save_plotly_graph_object
        except ImportError:
            if not self._warned:
                self._warned = True
                _logger.warning(
                    "DashboardReport writes nothing: optuna-dashboard is not installed "
                    "(pip install optuna-dashboard)."
                )
            return False
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        save_plotly_graph_object(
            study, _Figure(self._figure(study, trials)), graph_object_id=GRAPH_OBJECT_ID
        )
        save_note(study, self._note(study, trials))
        return True

    def figure(self, study: Study) -> dict[str, Any]:
        """The figure as plotly JSON (``plotly.graph_objects.Figure(report.figure(study))``)."""
        return self._figure(study, study._storage.get_all_trials(study._study_id, deepcopy=False))

    def note(self, study: Study) -> str:
        """The markdown note."""
        return self._note(study, study._storage.get_all_trials(study._study_id, deepcopy=False))

    # ------------------------------------------------------------------ internals
    def _budget(self, study: Study, trials: Sequence[FrozenTrial]) -> int:
        return resolve_max_steps(study, self.max_steps, trials)

    @staticmethod
    def _recommendation(study: Study) -> Forecast | None:
        """The study sampler's recommendation, when the sampler is an FMSSampler with a fit
        (never a surrogate fitted for the note alone)."""
        engine = engine_of(study)
        if engine is None or study._is_multi_objective():
            return None
        try:
            forecast = recommend(study)
        except (SurrogateFitError, ValueError):
            return None
        finite = math.isfinite(forecast.mean) and math.isfinite(forecast.std)
        return forecast if finite else None

    def _figure(self, study: Study, trials: Sequence[FrozenTrial]) -> dict[str, Any]:
        maximize = study.directions[0] == StudyDirection.MAXIMIZE
        final_step = self._budget(study, trials) - 1
        chains = _chains(trials)
        ranked = sorted(
            (c for c in chains if c.curve),
            key=lambda c: c.best(maximize),
            reverse=maximize,
        )
        leading, others = ranked[: self.top], ranked[self.top :]
        data = _others_trace(others) + _leading_traces(leading, final_step)
        data += _pause_traces(chains)
        direction = "maximize" if maximize else "minimize"
        layout = {
            "title": {"text": "FMS learning curves", "x": 0.02},
            "xaxis": {"title": {"text": "step"}, "range": [-0.5, final_step + 0.5]},
            "yaxis": {"title": {"text": f"intermediate value ({direction})"}},
            "legend": {"orientation": "h", "y": -0.2},
            "margin": {"l": 50, "r": 20, "t": 60, "b": 20},
            "hovermode": "closest",
        }
        return {"data": data, "layout": layout}

    def _note(self, study: Study, trials: Sequence[FrozenTrial]) -> str:
        maximize = study.directions[0] == StudyDirection.MAXIMIZE
        max_steps = self._budget(study, trials)
        by_id = {t._trial_id: t for t in trials}
        states = [t.state for t in trials]
        lineage = Lineage(trials)
        children = lineage.continuations()
        links = [lineage.continuation(c) for c in children]
        continued_ids = {link.trial_id for link in links if link is not None}
        pauses = {
            t._trial_id: p for t in trials if (p := _attrs.read_pause(t.user_attrs)) is not None
        }
        paused = [t for t in trials if t._trial_id in pauses]
        waiting = [
            t
            for t in paused
            if pauses[t._trial_id].claim is not None and t._trial_id not in continued_ids
        ]
        fresh = len(trials) - len(children)
        spent = epochs_spent(list(trials))
        full = fresh * max_steps
        saved = full - spent
        lines = [
            "## Forecasting Model Search",
            "",
            "FMSSampler forecasts each configuration's final score from its learning curve "
            "so far; at each step FMSPruner *pauses* a trial whose next epoch is worth less "
            "than starting or continuing another one. A paused trial is PRUNED in Optuna's "
            "terms but keeps its checkpoint, and the sampler may later *continue* it: a new "
            "trial with the same parameters that restores the checkpoint and trains on "
            "(freeze-thaw). The figure on the study's top page joins each continuation to the "
            "curve it continues.",
            "",
            "| | |",
            "|---|---|",
            f"| Trials started | {len(trials)} ({fresh} fresh configurations, "
            f"{len(children)} continuations) |",
            f"| Complete (full budget, {max_steps} steps) | {states.count(TrialState.COMPLETE)} |",
            f"| Paused | {len(paused)} ({len(continued_ids)} continued later, "
            f"{len(waiting)} continuable now) |",
            f"| Running | {states.count(TrialState.RUNNING)} |",
            f"| Epochs trained | {spent} |",
            f"| Full-budget training of the same configurations | {fresh} × {max_steps} = "
            f"{full} epochs |",
            f"| Epochs saved | {saved} ({_percent(saved, full)}) |",
        ]
        engine = engine_of(study)
        if engine is not None:
            lines.append(f"| Surrogate reads | {engine.inputs_summary()} |")
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if done:
            best = (max if maximize else min)(done, key=lambda t: t.values[0])
            lines.append(f"| Best complete trial | {best.value:.6g} (trial {best.number}) |")
        recommended = self._recommendation(study)
        if recommended is not None:
            where = f"trial {recommended.trial}, step {recommended.last_step}"
            params = json.dumps(recommended.params, default=str)
            lines.append(
                "| Recommended (best last observed score; forecast of its final) | "
                f"{recommended.mean:.6g} ± {recommended.std:.2g} ({where}): `{params}` |"
            )
        if children:
            lines += _continuations_table(children, lineage, by_id, self.max_continuations)
        lines += [
            "",
            "Per trial, the user attributes show `fms:forecast` (forecast of the final score "
            "at the last decision), `fms:paused`, `fms:continues` (on the continuing trial) "
            "and `fms:checkpoints` (step → artifact); the checkpoints are the trial's "
            f"artifacts. Updated after trial {trials[-1].number if trials else '-'}.",
        ]
        return "\n".join(lines)


def _continuations_table(
    children: Sequence[FrozenTrial],
    lineage: Lineage,
    by_id: dict[int, FrozenTrial],
    limit: int,
) -> list[str]:
    """Markdown lines: the latest ``limit`` continuations, each beside the trial it continued."""
    lines = [
        "",
        f"### Latest continuations ({min(len(children), limit)} of {len(children)})",
        "",
        "| Paused trial | Paused at step | Continued by | State |",
        "|---|---|---|---|",
    ]
    for child in children[-limit:]:
        ref = lineage.continuation(child)
        assert ref is not None
        parent = by_id.get(ref.trial_id)
        number = parent.number if parent is not None else ref.trial
        lines.append(f"| {number} | {ref.step} | {child.number} | {child.state.name.lower()} |")
    return lines


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"
