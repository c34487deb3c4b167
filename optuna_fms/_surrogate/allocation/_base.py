"""What every allocation rule reads and returns: the options of one decision."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
import functools
from typing import Protocol

import numpy as np

from optuna_fms._surrogate._fitted import FittedModel


@dataclass(frozen=True)
class Options:
    """Configurations that could get the next step of compute, as rows the model reads.

    ``done[i]`` is the number of steps option ``i`` has trained (``0`` for a fresh
    configuration), ``histories[i]`` its learning curve so far (standardised by the model,
    "higher is better" units) and ``ckpts[i]`` the weight-bank index of its newest weights
    (``-1``: none; ``None`` without weights). The next step of an option is budget
    ``done + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> o = Options.fresh(np.zeros((3, 2)))
    >>> len(o), o.done.tolist()
    (3, [0, 0, 0])
    """

    x: np.ndarray
    done: np.ndarray
    histories: Sequence[np.ndarray]
    ckpts: np.ndarray | None = None

    @classmethod
    def fresh(cls, x: np.ndarray, ckpts: np.ndarray | None = None) -> Options:
        """Configurations no trial has run."""
        n = len(x)
        return cls(x, np.zeros(n, dtype=int), [np.zeros(0)] * n, ckpts)

    def __len__(self) -> int:
        return len(self.x)

    def predict(
        self, model: FittedModel, budgets: np.ndarray, *, decide: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std (standardised) of every option at ``budgets``."""
        if not len(self):
            return np.zeros(0), np.zeros(0)
        return model.predict(self.x, budgets, self.histories, self.ckpts, decide=decide)

    def final(self, model: FittedModel) -> np.ndarray:
        """Forecast mean (standardised) of every option at the full budget, on the
        posterior forecasts read (the one that ranks final scores best)."""
        budgets = np.full(len(self), float(model.max_steps))
        return self.predict(model, budgets, decide=False)[0]


class View:
    """What a rule may read besides the options: the fit, a seeded generator (rules that
    draw) and every observed configuration (:attr:`observed`: the longest curve of each,
    for ranks within a budget; built on first use from ``observed``)."""

    def __init__(
        self,
        model: FittedModel,
        rng: np.random.RandomState,
        observed: Callable[[], Options],
    ) -> None:
        self.model = model
        self.rng = rng
        self._observed = observed

    @property
    def max_steps(self) -> int:
        return self.model.max_steps

    @functools.cached_property
    def observed(self) -> Options:
        return self._observed()


@dataclass(frozen=True)
class Pick:
    """A rule's choice for the next trial: ``paused`` indexes the paused trial to continue,
    else ``fresh`` the fresh configuration to start (``None`` when there is none left).
    With ``paused`` set, ``fresh`` is still the configuration to start if another worker
    takes the paused trial first (``None`` only when no fresh option exists: a sampler
    that finds ``fresh`` ``None`` after a lost race says the search is exhausted).
    ``value`` is what the rule's score of the chosen option was (for logs)."""

    fresh: int | None
    paused: int | None
    value: float


class AllocationRule(Protocol):
    """How FMS spends the next step of compute.

    The sampler asks :meth:`choose` which option a new trial gets: a fresh configuration or
    the continuation of a paused trial. The pruner asks :meth:`keeps_running` whether a
    running trial keeps its next step. A rule works on arrays and the fitted model only.
    ``alternative`` is the rule's value of the best other use of a step, computed by
    :meth:`alternative` (``cacheable`` says whether that value may be reused while the
    model is not trained again).
    """

    name: str
    cacheable: bool

    def choose(self, view: View, fresh: Options, paused: Options) -> Pick: ...

    def alternative(self, view: View, fresh: Options, paused: Options) -> float: ...

    def keeps_running(
        self, view: View, running: Options, alternative: float, tolerance: float
    ) -> bool: ...
