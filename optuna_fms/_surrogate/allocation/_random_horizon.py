"""ifBO's rule: probability of improvement at a random horizon over a random threshold."""

from __future__ import annotations

import numpy as np
import torch

from optuna_fms._surrogate import acquisition
from optuna_fms._surrogate.allocation._base import Options
from optuna_fms._surrogate.allocation._base import Pick
from optuna_fms._surrogate.allocation._base import View
from optuna_fms._surrogate.allocation._one_step import pick_best


def _draw(view: View) -> tuple[int, float]:
    """A horizon (steps ahead) and a threshold margin (standardised units), as ifBO draws
    them: the horizon uniform over the budget, the margin log-uniform over 1e-4..1e-1 of
    the observed range."""
    horizon = int(view.rng.randint(1, view.max_steps + 1))
    y = view.model.data.y
    spread = float(np.ptp(y)) if len(y) else 1.0
    return horizon, spread * 10 ** view.rng.uniform(-4, -1)


def _pi(view: View, options: Options, horizon: int, margin: float) -> np.ndarray:
    budgets = np.minimum(options.done + horizon, view.max_steps).astype(float)
    mean, std = options.predict(view.model, budgets, decide=True)
    best = acquisition.incumbent(view.model, budgets) + margin
    z = (mean - best) / np.maximum(std, 1e-9)
    return torch.special.ndtr(torch.as_tensor(z, dtype=torch.float64)).numpy()


class RandomHorizonPI:
    """In-context freeze-thaw's acquisition (ifBO, Rakotoarison et al. 2024): at each
    decision draw a horizon ``h`` and a threshold, and score every option by the
    probability that its score ``h`` steps ahead (capped at the full budget) beats the best
    observed at that budget by the threshold. Random horizons mix short and long looks
    ahead over the run. The pruner draws its own horizon and compares the running trial
    with the best alternative at the same horizon (so its alternative is never cached).
    """

    name = "random-horizon"
    cacheable = False

    def __init__(self) -> None:
        self._drawn: tuple[int, float] | None = None

    def choose(self, view: View, fresh: Options, paused: Options) -> Pick:
        horizon, margin = _draw(view)
        return pick_best(_pi(view, fresh, horizon, margin), _pi(view, paused, horizon, margin))

    def alternative(self, view: View, fresh: Options, paused: Options) -> float:
        self._drawn = _draw(view)
        h, m = self._drawn
        return pick_best(_pi(view, fresh, h, m), _pi(view, paused, h, m)).value

    def keeps_running(
        self, view: View, running: Options, alternative: float, tolerance: float
    ) -> bool:
        h, m = self._drawn if self._drawn is not None else _draw(view)
        return acquisition.keeps_running(
            float(_pi(view, running, h, m)[0]), alternative, tolerance
        )
