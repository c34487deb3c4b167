"""DyHPO's rule: expected improvement of one more step, against the best at that step."""

from __future__ import annotations

import numpy as np

from optuna_fms._surrogate import acquisition
from optuna_fms._surrogate.allocation._base import Options
from optuna_fms._surrogate.allocation._base import Pick
from optuna_fms._surrogate.allocation._base import View


def next_step_ei(view: View, options: Options) -> np.ndarray:
    """Expected improvement of each option's next step (budget ``done + 1``) over the best
    value observed at that budget, on the posterior decisions read."""
    budgets = options.done + 1.0
    mean, std = options.predict(view.model, budgets, decide=True)
    return acquisition.expected_improvement(mean, std, acquisition.incumbent(view.model, budgets))


def best_fresh(view: View, fresh: Options) -> int | None:
    """The fresh option with the highest one-step expected improvement (``None`` if none):
    what a rule that picked a paused trial starts instead when another worker takes it
    first."""
    return int(np.argmax(next_step_ei(view, fresh))) if len(fresh) else None


def pick_best(fresh_value: np.ndarray, paused_value: np.ndarray) -> Pick:
    """The option with the highest value; a paused trial wins ties with nothing fresh left.

    Examples
    --------
    >>> import numpy as np
    >>> pick_best(np.array([0.1, 0.3]), np.array([0.2, 0.5]))
    Pick(fresh=1, paused=1, value=0.5)
    >>> pick_best(np.zeros(0), np.array([0.0]))
    Pick(fresh=None, paused=0, value=0.0)
    """
    fresh = int(np.argmax(fresh_value)) if len(fresh_value) else None
    best = float(fresh_value[fresh]) if fresh is not None else -np.inf
    if len(paused_value) and (fresh is None or float(paused_value.max()) > best):
        paused = int(np.argmax(paused_value))
        return Pick(fresh, paused, float(paused_value[paused]))
    return Pick(fresh, None, best if fresh is not None else 0.0)


class OneStepEI:
    """DyHPO's allocation: every decision is one step. The sampler gives the next step to
    the fresh configuration (at step 1) or paused trial (at its next step) with the highest
    expected improvement over the best value observed at that same step; the pruner lets a
    running trial keep its next step while its expected improvement is at least
    ``tolerance`` times the best alternative's.

    Nothing in the rule prefers finishing a configuration: on a grid hub not used for tuning
    it started hundreds of configurations in 500 epochs, most for one step
    (docs/benchmarks.md).
    """

    name = "one-step"
    cacheable = True

    def choose(self, view: View, fresh: Options, paused: Options) -> Pick:
        return pick_best(next_step_ei(view, fresh), next_step_ei(view, paused))

    def alternative(self, view: View, fresh: Options, paused: Options) -> float:
        return self.choose(view, fresh, paused).value

    def keeps_running(
        self, view: View, running: Options, alternative: float, tolerance: float
    ) -> bool:
        return acquisition.keeps_running(
            float(next_step_ei(view, running)[0]), alternative, tolerance
        )
