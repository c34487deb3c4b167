"""Model-based asynchronous successive halving: commit on geometric rungs, rank by forecast."""

from __future__ import annotations

import hashlib
import math

import numpy as np

from optuna_fms._surrogate.allocation._base import Options
from optuna_fms._surrogate.allocation._base import Pick
from optuna_fms._surrogate.allocation._base import View
from optuna_fms._surrogate.allocation._one_step import best_fresh
from optuna_fms._surrogate.allocation._one_step import next_step_ei


def rungs(max_steps: int, first: int, eta: int, interval: int = 1) -> list[int]:
    """The budgets at which trials are compared: ``first * eta**k`` below ``max_steps``,
    each raised to the next budget ``first + j * interval`` (the budgets a pruner that
    decides every ``interval`` steps from ``first`` on can stop at).

    Examples
    --------
    >>> rungs(30, 1, 3), rungs(50, 2, 3), rungs(4, 1, 3)
    ([1, 3, 9, 27], [2, 6, 18], [1, 3])
    >>> rungs(30, 3, 3, interval=4)
    [3, 11, 27]
    """
    out: list[int] = []
    r = max(1, first)
    while r < max_steps:
        snapped = first + -(-(r - first) // interval) * interval
        if snapped < max_steps and (not out or snapped > out[-1]):
            out.append(snapped)
        r *= eta
    return out


class ModelBasedRungs:
    """Asynchronous successive halving (ASHA, Li et al. 2020) whose ranks are the model's
    forecasts, as MOBSTER and Hyper-Tune rank with their models.

    Trials are compared only at the rungs ``first * eta**k`` (steps). A trial reaching a
    rung keeps running while its forecast final score is in the top ``1 / eta`` (at least
    the best one) of every configuration that has reached that rung; otherwise it is
    paused there. The sampler first *promotes* (continues) a paused trial that is now in
    the top ``1 / eta`` of its rung, the highest rung first; else it starts the fresh
    configuration with the highest expected improvement at the first step (DyHPO's, against
    the best first-step score). Every started configuration gets ``first`` steps and every
    promotion a whole rung, so the rule commits: the first trials run to the full budget,
    and the share of compute spent on one-step trials is bounded by the rungs.

    Parameters
    ----------
    eta:
        Reduction factor: a third (``3``) of the configurations at a rung go on.
    first:
        Steps of the first rung: what every started configuration trains at least.
    brackets:
        Hedge like Hyperband: each configuration is compared from one of the rungs on,
        drawn with Hyperband's bracket sizes (with 30 steps and ``eta=3``: 55 % from step
        1, 24 % from 3, 12 % from 9, 8 % from 27), so that some configurations are committed
        whatever the first steps show (early scores can mislead). ``False``: every
        configuration is compared from the first rung (ASHA).
    interval:
        Rungs only at budgets ``first + j * interval`` (see :func:`rungs`): those a pruner
        deciding every ``interval`` steps reaches.

    Examples
    --------
    >>> ModelBasedRungs(eta=3).name
    'rungs'
    """

    name = "rungs"
    cacheable = True

    def __init__(
        self, eta: int = 3, first: int = 1, brackets: bool = True, interval: int = 1
    ) -> None:
        if eta < 2 or first < 1 or interval < 1:
            raise ValueError(
                f"rungs need eta >= 2, first >= 1 and interval >= 1, got {eta}, {first} and "
                f"{interval}."
            )
        self.eta = eta
        self.first = first
        self.brackets = brackets
        self.interval = interval

    def _ladder(self, max_steps: int) -> list[int]:
        return rungs(max_steps, self.first, self.eta, self.interval)

    def _start_rung(self, x: np.ndarray, ladder: list[int]) -> int:
        """The first rung at which a configuration can be paused: with ``brackets``, one of
        the ladder's rungs drawn as Hyperband sizes its brackets (most configurations start
        at the lowest rung, a few are committed further), from a hash of the configuration
        so that every worker and every continuation agree."""
        if not self.brackets or len(ladder) < 2:
            return ladder[0] if ladder else self.first
        s_max = len(ladder) - 1
        sizes = np.array(
            [math.ceil((s_max + 1) / (s + 1) * self.eta**s) for s in range(s_max, -1, -1)]
        )
        digest = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2**64
        return ladder[int(np.searchsorted(np.cumsum(sizes) / sizes.sum(), u, side="right"))]

    def _in_top(self, view: View, done: int, forecast: float, final: np.ndarray) -> bool:
        """Whether ``forecast`` ranks in the top ``1/eta`` of the configurations observed for
        at least ``done`` steps (``final``: their forecasts)."""
        reached = final[view.observed.done >= done]
        k = max(1, len(reached) // self.eta)
        return int(np.sum(reached > forecast)) < k

    def promotion(self, view: View, paused: Options, between: int | None = None) -> Pick | None:
        """The paused trial to promote: one at a rung whose forecast final score now ranks
        in the top ``1 / eta`` there (the furthest trained first, then the best forecast).

        ``between``: a trial paused between two rungs (by a rule that pauses anywhere) is
        ranked at the rung below it once at least ``between`` configurations have reached
        that rung. Without it such a trial is never promoted again: a promotion buys one
        step, the trial is paused past its rung, and nothing reaches the full budget for
        hundreds of epochs on a noisy hub. Ranked at once, it commits before the model
        knows enough (docs/experiments.md)."""
        if not len(paused):
            return None
        final = view.observed.final(view.model)
        mine = paused.final(view.model)
        ladder = self._ladder(view.max_steps)
        promotable = []
        for i in range(len(paused)):
            done = int(paused.done[i])
            rung = done if done in ladder else None
            if rung is None and between is not None:
                below = [r for r in ladder if r < done]
                if below and int(np.sum(view.observed.done >= below[-1])) >= between:
                    rung = below[-1]
            if rung is not None and self._in_top(view, rung, mine[i], final):
                promotable.append(i)
        if not promotable:
            return None
        best = max(promotable, key=lambda i: (paused.done[i], mine[i]))
        return Pick(None, best, float(mine[best]))

    def _at_rung(self, view: View, running: Options) -> int | None:
        """The steps of a running trial at one of its rungs (from its start rung on), else
        ``None``."""
        done = int(running.done[0])
        ladder = self._ladder(view.max_steps)
        if done not in ladder or done < self._start_rung(running.x[0], ladder):
            return None
        return done

    def ranks_at_rung(self, view: View, running: Options) -> bool:
        """Whether a running trial is at one of its rungs and in the top ``1 / eta`` there."""
        done = self._at_rung(view, running)
        if done is None:
            return False
        final = view.observed.final(view.model)
        return self._in_top(view, done, float(running.final(view.model)[0]), final)

    def choose(self, view: View, fresh: Options, paused: Options) -> Pick:
        promoted = self.promotion(view, paused)
        if promoted is not None:
            return Pick(best_fresh(view, fresh), promoted.paused, promoted.value)
        if len(fresh):
            ei = next_step_ei(view, fresh)
            i = int(np.argmax(ei))
            return Pick(i, None, float(ei[i]))
        if len(paused):  # nothing fresh is left: the best paused trial goes on
            mine = paused.final(view.model)
            i = int(np.argmax(mine))
            return Pick(None, i, float(mine[i]))
        return Pick(None, None, 0.0)

    def alternative(self, view: View, fresh: Options, paused: Options) -> float:
        return 0.0  # ranks, not values, decide

    def keeps_running(
        self, view: View, running: Options, alternative: float, tolerance: float
    ) -> bool:
        return self._at_rung(view, running) is None or self.ranks_at_rung(view, running)
