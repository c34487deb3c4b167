"""Freeze-thaw's rule: expected improvement of the forecast *final* score, per step it costs."""

from __future__ import annotations

import numpy as np

from optuna_fms._surrogate import acquisition
from optuna_fms._surrogate.allocation._base import Options
from optuna_fms._surrogate.allocation._base import Pick
from optuna_fms._surrogate.allocation._base import View
from optuna_fms._surrogate.allocation._one_step import pick_best


def final_ei_per_step(view: View, options: Options) -> np.ndarray:
    """Expected improvement of each option's score at the full budget over the best value
    observed at the largest budget any trial reached, divided by the steps still needed to
    get there (cost-aware: finishing a promising trial costs less than starting one)."""
    budgets = np.full(len(options), float(view.max_steps))
    mean, std = options.predict(view.model, budgets, decide=True)
    ei = acquisition.expected_improvement(mean, std, acquisition.incumbent(view.model, budgets))
    return ei / np.maximum(view.max_steps - options.done, 1)


class FinalEIPerStep:
    """Freeze-thaw Bayesian optimisation (Swersky et al. 2014), cost-aware: every option is
    scored by the expected improvement of its forecast score at the full budget, per step
    still needed to reach it. The sampler takes the best option; the pruner lets a running
    trial go on while its value is at least ``tolerance`` times the best alternative's.
    """

    name = "final"
    cacheable = True

    def choose(self, view: View, fresh: Options, paused: Options) -> Pick:
        return pick_best(final_ei_per_step(view, fresh), final_ei_per_step(view, paused))

    def alternative(self, view: View, fresh: Options, paused: Options) -> float:
        return self.choose(view, fresh, paused).value

    def keeps_running(
        self, view: View, running: Options, alternative: float, tolerance: float
    ) -> bool:
        return acquisition.keeps_running(
            float(final_ei_per_step(view, running)[0]), alternative, tolerance
        )
