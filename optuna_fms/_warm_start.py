"""Warm starts: what earlier studies' learning curves tell a new study.

The earlier studies are one *related task*. A GP (the same model as the study's own) is
fitted once on their curves, over the parameters they share with the new study, each study's
values standardised on their own (so studies with other metrics or score ranges mix). Its
forecast of a configuration at a budget becomes one more input of the new study's GP, which
learns from the new study's own observations how far to trust it (a lengthscale and a trend
coefficient, with the same priors as any input): unrelated earlier studies cost little,
related ones inform the first decisions. Before the new study's GP can be fitted, the
sampler proposes the configurations the earlier studies forecast best (for the first trial,
in the search space the earlier studies share).
"""

from __future__ import annotations

from collections.abc import Sequence
import logging
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms._budget import resolve_max_steps
from optuna_fms._surrogate import SpaceEncoder
from optuna_fms._surrogate._data import Standardizer
from optuna_fms._surrogate._gp import GPSurrogate
from optuna_fms._surrogate._model import RowLayout


_logger = logging.getLogger("optuna_fms")

FEATURE = "warm_start"
"""Name of the new GP's input that holds the earlier studies' forecast."""
MAX_ROWS = 256
"""Cap on the related GP's training rows (a seeded random subset beyond it)."""


class WarmStart:
    """A GP fitted on earlier studies' curves, read as an input by a new study's GP.

    Parameters
    ----------
    studies:
        The earlier studies (any storage; ``optuna.load_study(...)``). Their finished and
        running trials' intermediate values are read once per search space of the new study.
        Multi-objective studies are refused.
    seed:
        Seeds the subsampling of rows when the earlier studies have more than
        :data:`MAX_ROWS` observations.
    final_only:
        Give every row the earlier studies' forecast of its configuration's *final* score,
        whatever the row's budget (a configuration-level input), instead of their forecast at
        the row's budget.

    Examples
    --------
    >>> import optuna
    >>> from optuna.distributions import FloatDistribution
    >>> old = optuna.create_study(direction="maximize")
    >>> for x in (0.1, 0.4, 0.6, 0.9):
    ...     old.enqueue_trial({"x": x})
    ...     t = old.ask({"x": FloatDistribution(0, 1)})
    ...     for step in range(3):
    ...         t.report(x * (step + 1), step)
    ...     _ = old.tell(t, x * 3)
    >>> warm = WarmStart([old])
    >>> warm.fit({"x": FloatDistribution(0, 1)})
    ['x']
    >>> layout = RowLayout(x_dim=1, curve_len=0, x_names=["x"], max_steps=3)
    >>> rows = np.zeros((2, layout.width))
    >>> rows[:, 0], rows[:, layout.budget] = [0.2, 0.8], 1.0
    >>> u = warm.feature(layout, rows)
    >>> bool(u[1] > u[0])
    True
    """

    def __init__(
        self, studies: Sequence[Study], *, seed: int | None = None, final_only: bool = False
    ) -> None:
        self._final_only = final_only
        self._studies = list(studies)
        for s in self._studies:
            if s._is_multi_objective():
                raise ValueError(
                    f"warm_start: study {s.study_name!r} is multi-objective; FMS warm-starts "
                    "from single-objective studies only."
                )
        self._seed = seed
        self._for: dict[str, BaseDistribution] | None = None
        self._gp: GPSurrogate | None = None
        self._layout: RowLayout | None = None
        self._common: list[str] = []
        self._warned: set[tuple[str, ...]] = set()
        self._failed = False

    @property
    def studies(self) -> list[Study]:
        return list(self._studies)

    def fit(self, space: dict[str, BaseDistribution]) -> list[str]:
        """Fit the related GP for the new study's search space ``space`` (once per space).

        Returns the parameters it reads: those of ``space`` that every earlier study has with
        the same distribution. Others are ignored, with one log line saying so. If the earlier
        studies cannot be read or the fit fails, one warning says so and this study goes on
        without them (an empty list).
        """
        space = dict(sorted(space.items()))
        if self._for == space:
            return self._common
        self._for, self._gp, self._common = space, None, []
        try:
            return self._fit(space)
        except Exception as err:  # an unreachable storage or a failed fit must not stop a study
            self._gp, self._common = None, []
            if not self._failed:
                self._failed = True
                _logger.warning(
                    "warm_start: the earlier studies could not be read or fitted (%s); this "
                    "study goes on without them.",
                    err,
                )
            return []

    def _fit(self, space: dict[str, BaseDistribution]) -> list[str]:
        histories = [
            (s, s._storage.get_all_trials(s._study_id, deepcopy=False)) for s in self._studies
        ]
        common = [
            name
            for name, dist in space.items()
            if all(_has(trials, name, dist) for _, trials in histories)
        ]
        ignored = tuple(sorted(set(space) - set(common)))
        if ignored and ignored not in self._warned:
            self._warned.add(ignored)
            _logger.info(
                "warm_start: the earlier studies do not share %s with this study (same name "
                "and distribution); their curves inform the other parameters only.",
                list(ignored),
            )
        if not common:
            return []
        encoder = SpaceEncoder({n: space[n] for n in common})
        xs, budgets, ys = [], [], []
        for study, trials in histories:
            x, b, y = _observations(study, trials, encoder, common)
            xs.append(x)
            budgets.append(b)
            ys.append(y)
        x = np.concatenate(xs) if xs else np.zeros((0, encoder.dim))
        b = np.concatenate(budgets) if budgets else np.zeros(0)
        y = np.concatenate(ys) if ys else np.zeros(0)
        if len(y) < 2:
            _logger.info("warm_start: the earlier studies have fewer than 2 observations.")
            return []
        if len(y) > MAX_ROWS:
            keep = np.random.RandomState(self._seed).choice(len(y), MAX_ROWS, replace=False)
            x, b, y = x[keep], b[keep], y[keep]
        steps = max(2, int(round(1.0 / max(b.min(), 1e-6))))
        layout = RowLayout(encoder.dim, 0, encoder.groups, encoder.names, steps)
        rows = _pack(layout, x, b)
        scale = Standardizer.fit(y)
        gp = GPSurrogate()
        gp.fit(layout, rows, scale(y))
        self._gp, self._layout, self._common = gp, layout, common
        return common

    def feature(self, layout: RowLayout, rows: np.ndarray) -> np.ndarray:
        """The related forecast of the new study's packed ``rows`` (configuration and budget
        fraction, in ``layout``), as an input in about ``[0, 1]``.

        ``0.5`` is the earlier studies' mean score; each standard deviation moves it by 0.25.
        ``0.5`` everywhere when nothing was fitted.
        """
        if self._gp is None or self._layout is None:
            return np.full(len(rows), 0.5)
        lay = self._layout
        common = set(self._common)
        cols = [i for i, g in enumerate(layout.x_groups) if layout.x_names[g] in common]
        budget = np.ones(len(rows)) if self._final_only else rows[:, layout.budget]
        mean, _ = self._gp.predict(_pack(lay, rows[:, cols], budget))
        return 0.5 + 0.25 * mean

    def final_forecast(self, encoder: SpaceEncoder, x: np.ndarray) -> np.ndarray:
        """:meth:`feature` of configurations ``x`` (encoded by the new study's ``encoder``)
        at the full budget."""
        layout = RowLayout(encoder.dim, 0, encoder.groups, encoder.names, 1)
        return self.feature(layout, _pack(layout, x, np.ones(len(x))))

    def search_space(self) -> dict[str, BaseDistribution]:
        """The parameters every earlier study has, each with one distribution: the guess for a
        new study's search space before its first trial defines it."""
        spaces = []
        for s in self._studies:
            try:
                space = IntersectionSearchSpace(include_pruned=True).calculate(s)
            except Exception:  # unreadable: fit() says so once
                return {}
            spaces.append({n: d for n, d in space.items() if not d.single()})
        if not spaces:
            return {}
        first, *rest = spaces
        return {n: d for n, d in first.items() if all(other.get(n) == d for other in rest)}

    @property
    def ready(self) -> bool:
        """Whether a related GP is fitted (for the last search space passed to :meth:`fit`)."""
        return self._gp is not None


def _pack(layout: RowLayout, x: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """Rows of ``layout`` for encoded configurations ``x`` at budget fractions ``budget``
    (no learning curve, no weights): the only rows a related GP reads and is asked about."""
    rows = np.zeros((len(x), layout.width))
    rows[:, : layout.x_dim] = x
    rows[:, layout.budget] = budget
    rows[:, layout.ckpt] = -1
    return rows


def _has(trials: Sequence[FrozenTrial], name: str, dist: BaseDistribution) -> bool:
    """Whether some trial of ``trials`` has parameter ``name`` with distribution ``dist``."""
    return any(t.distributions.get(name) == dist for t in trials)


def _observations(
    study: Study, trials: Sequence[FrozenTrial], encoder: SpaceEncoder, common: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encoded parameters, budget fractions and standardised values of a study's reports."""
    sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
    max_steps = resolve_max_steps(study, None, trials)
    xs: list[Any] = []
    budgets: list[float] = []
    values: list[float] = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
            continue
        params = {n: t.params[n] for n in common if n in t.params}
        if len(params) != len(common) or not encoder.contains(params):
            continue
        if any(t.distributions[n] != encoder.search_space[n] for n in common):
            continue
        for step, value in sorted(t.intermediate_values.items()):
            if step < max_steps and np.isfinite(value):
                xs.append(params)
                budgets.append((step + 1) / max_steps)
                values.append(sign * value)
    if not values:
        return np.zeros((0, encoder.dim)), np.zeros(0), np.zeros(0)
    v = np.asarray(values)
    std = v.std() if v.std() > 1e-12 else 1.0
    return encoder.encode(xs), np.asarray(budgets), (v - v.mean()) / std
