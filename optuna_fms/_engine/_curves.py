"""Trials read into learning curves: the surrogate's data, and what is left to run.

Functions of the trials alone (no fit, no model): the curves of a study's trials
(following the continuation lineage), the number of observations, and which
configurations are run, closed or can only be trained again from scratch.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
import copy
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms import _attrs
from optuna_fms._engine._records import Fit
from optuna_fms._engine._records import StudyState
from optuna_fms._freeze_thaw import Lineage
from optuna_fms._surrogate import Curve
from optuna_fms._surrogate import SpaceEncoder


def collect_curves(
    state: StudyState,
    trials: Sequence[FrozenTrial],
    encoder: SpaceEncoder,
    max_steps: int,
    sign: float,
) -> list[Curve]:
    """Learning curves (values times ``sign``: the surrogate maximises) of the trials that
    fit ``encoder``'s search space; finished trials' curves are cached in ``state``.

    A paused trial whose continuation has already restored its checkpoint is left out,
    since the continuing trial's curve starts with the parent's values (unless the
    continuation failed: failed trials are left out, and their parent is continued
    again).

    Examples
    --------
    >>> import optuna
    >>> from optuna.search_space import IntersectionSearchSpace
    >>> space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    >>> trial = optuna.trial.create_trial(
    ...     params={"x": 0.5}, distributions=space, value=0.3,
    ...     intermediate_values={0: 0.1, 1: 0.3})
    >>> state = StudyState(None, IntersectionSearchSpace())
    >>> [c.values.tolist() for c in collect_curves(state, [trial], SpaceEncoder(space), 2, -1.0)]
    [[-0.1, -0.3]]
    """
    superseded = Lineage(trials).superseded()
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


def count_observations(trials: Sequence[FrozenTrial]) -> int:
    """Reported values plus completed trials without reports: the surrogate's data size."""
    n = 0
    for t in trials:
        if t.intermediate_values:
            n += len(t.intermediate_values)
        elif t.state == TrialState.COMPLETE:
            n += 1
    return n


def longest_curves(fit: Fit) -> list[Curve]:
    """The longest observed curve of each configuration (the one its forecast extends)."""
    longest: dict[bytes, Curve] = {}
    for c in fit.curves:
        key = c.x.tobytes()
        if key not in longest or len(c.steps) >= len(longest[key].steps):
            longest[key] = c
    return list(longest.values())


def closed(space: Mapping[str, BaseDistribution], trials: Iterable[FrozenTrial]) -> bool:
    """Whether ``space`` holds every parameter the trials have (a parameter with a single
    value aside): a conditional parameter, or one whose range changes between trials, lies
    outside the space the GP models, and a configuration of the space is then not a whole
    configuration; enumerating the space could not tell that the search is exhausted."""
    return all(
        name in space or dist.single() for t in trials for name, dist in t.distributions.items()
    )


def config_key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A configuration as a hashable key (its sorted parameter items)."""
    return tuple(sorted(params.items()))


def unfinished(
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
        key = config_key(t.params)
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


def restartable(fit: Fit) -> list[Curve]:
    """The longest curve of each configuration :func:`unfinished` names."""
    keys = unfinished(fit.trials.values(), fit.max_steps)
    return [c for c in longest_curves(fit) if config_key(fit.trials[c.key].params) in keys]
