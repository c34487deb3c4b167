"""DyHPO's one-step rule with successive halving's promotions: explore by EI, commit by rank."""

from __future__ import annotations

from optuna_fms._surrogate.allocation._base import Options
from optuna_fms._surrogate.allocation._base import Pick
from optuna_fms._surrogate.allocation._base import View
from optuna_fms._surrogate.allocation._one_step import OneStepEI
from optuna_fms._surrogate.allocation._one_step import best_fresh
from optuna_fms._surrogate.allocation._rungs import ModelBasedRungs


class PromotingOneStep:
    """:class:`OneStepEI` with the promotions of :class:`ModelBasedRungs` (without brackets).

    The sampler first continues a paused trial whose forecast final score now ranks in the top
    ``1 / eta`` of its rung (the furthest trained first; a trial paused between rungs is ranked
    at the rung below it once ``eta**2`` configurations have reached that rung), and otherwise
    takes DyHPO's argmax of one-step expected improvement. The pruner lets a running trial go
    on while either rule would: its next step's expected improvement is at least ``tolerance``
    times the best alternative's, or it is at a rung and in the top ``1 / eta`` there. The
    exploration of DyHPO's rule stays; what it starts and ranks well is trained further instead
    of being left for ever more fresh configurations.
    """

    name = "one-step-promoting"
    cacheable = True

    def __init__(self, eta: int = 3) -> None:
        self._one_step = OneStepEI()
        self._rungs = ModelBasedRungs(eta=eta, brackets=False)
        self._between = eta**2

    def choose(self, view: View, fresh: Options, paused: Options) -> Pick:
        promoted = self._rungs.promotion(view, paused, between=self._between)
        if promoted is not None:
            return Pick(best_fresh(view, fresh), promoted.paused, promoted.value)
        return self._one_step.choose(view, fresh, paused)

    def alternative(self, view: View, fresh: Options, paused: Options) -> float:
        return self._one_step.alternative(view, fresh, paused)

    def keeps_running(
        self, view: View, running: Options, alternative: float, tolerance: float
    ) -> bool:
        if self._one_step.keeps_running(view, running, alternative, tolerance):
            return True
        return self._rungs.ranks_at_rung(view, running)
