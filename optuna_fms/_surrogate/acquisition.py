"""DyHPO's acquisition: expected improvement at the next budget, and the choices made with it.

Everything FMS decides goes through this module: which fresh candidates to score, the
incumbent each row is compared with, the choice between a fresh configuration and a paused
trial's next step (the sampler), and whether a running trial keeps its next step (the
pruner). It works on arrays and :class:`~optuna_fms._surrogate._fitted.FittedModel`; it
knows nothing about studies, storages or checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math

import numpy as np
import torch

from optuna_fms._surrogate._encoding import SpaceEncoder
from optuna_fms._surrogate._fitted import FittedModel


N_LOCAL_CENTERS = 5
"""Fresh candidates include local moves around this many best configurations."""
LOCAL_STEP = 0.05
"""Standard deviation of a local move in the encoded unit cube."""


@dataclass(frozen=True)
class Scores:
    """Posterior mean and std (standardised units) and expected improvement of query rows."""

    mean: np.ndarray
    std: np.ndarray
    ei: np.ndarray


@dataclass(frozen=True)
class Choice:
    """The argmax of expected improvement over fresh candidates and paused trials.

    ``fresh`` indexes the best fresh candidate; ``paused`` the paused trial to continue
    instead, or ``None`` when a fresh configuration is worth more. ``best_ei`` is the higher
    of the two: what any other use of the next step of compute is worth.
    """

    fresh: int
    paused: int | None
    best_ei: float


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Expected improvement over ``best`` for maximisation (all in the same units).

    Examples
    --------
    >>> import numpy as np
    >>> expected_improvement(np.array([0.0, 1.0]), np.array([1.0, 1e-12]), np.zeros(2))
    array([0.39894228, 1.        ])
    """
    std = np.maximum(std, 1e-9)
    z = (mean - best) / std
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    cdf = torch.special.ndtr(torch.as_tensor(z, dtype=torch.float64)).numpy()
    return std * (z * cdf + pdf)


def incumbent(model: FittedModel, budgets: np.ndarray) -> np.ndarray:
    """Best observed value (standardised) at each budget; where no trial has reached a
    budget yet, the best at the largest budget below it that some trial has reached.

    DyHPO compares a row at budget ``b`` with the best value observed at ``b``, so that a
    trial's next step competes with what other configurations reached after as many steps.
    The leading trial's next step, at a budget nobody has reached, is compared with the best
    score after as many steps as it has trained, not with the best score overall: a lucky
    short run can hold that, and then the leader's expected improvement was about 0 (in the
    demo no trial reached the full budget).
    """
    data = model.data
    overall = float(np.max(data.y)) if len(data.y) else 0.0
    # Keyed by the int budgets themselves: a budget above 2**53 does not survive a round
    # trip through float (a report at step 2**53 made this a KeyError).
    budgets_known = sorted(data.best_at_budget)
    known = np.array(budgets_known, dtype=float)
    best = np.array([data.best_at_budget[b] for b in budgets_known] + [overall])
    # The largest known budget <= b (index -1, the overall best, where there is none).
    below = np.searchsorted(known, np.asarray(budgets, dtype=float), side="right") - 1
    return best[below]


def score(
    model: FittedModel,
    x: np.ndarray,
    budgets: np.ndarray,
    histories: Sequence[np.ndarray],
    ckpts: np.ndarray | None = None,
) -> Scores:
    """Mean, std and expected improvement of each row against its budget's incumbent, on
    the posterior that decisions read."""
    mean, std = model.predict(x, budgets, histories, ckpts, decide=True)
    return Scores(mean, std, expected_improvement(mean, std, incumbent(model, budgets)))


def fresh_candidates(
    encoder: SpaceEncoder,
    best_x: np.ndarray,
    n: int,
    rng: np.random.RandomState,
) -> np.ndarray:
    """``n`` quasi-random configurations plus ``n`` local moves around ``best_x`` (encoded).

    ``best_x`` holds the encoded best configurations so far, best first (may be empty).

    Examples
    --------
    >>> import numpy as np
    >>> from optuna.distributions import FloatDistribution
    >>> enc = SpaceEncoder({"x": FloatDistribution(0, 1)})
    >>> fresh_candidates(enc, np.array([[0.5]]), 8, np.random.RandomState(0)).shape
    (16, 1)
    """
    if not encoder.dim:
        return np.zeros((1, 0))
    cands = [encoder.sample(n, rng)]
    if len(best_x):
        cands.append(encoder.perturb(best_x[:N_LOCAL_CENTERS], n, LOCAL_STEP, rng))
    return np.concatenate(cands)


def choose(fresh_ei: np.ndarray, paused_ei: np.ndarray) -> Choice:
    """DyHPO's choice: continue the paused trial with the highest EI when it beats every
    fresh candidate, else start the best fresh candidate.

    Examples
    --------
    >>> import numpy as np
    >>> choose(np.array([0.1, 0.3]), np.array([0.2, 0.5]))
    Choice(fresh=1, paused=1, best_ei=0.5)
    >>> choose(np.array([0.1, 0.3]), np.zeros(0)).paused is None
    True
    """
    fresh = int(np.argmax(fresh_ei))
    best = float(fresh_ei[fresh])
    paused = None
    if len(paused_ei) and float(paused_ei.max()) > best:
        paused = int(np.argmax(paused_ei))
        best = float(paused_ei[paused])
    return Choice(fresh=fresh, paused=paused, best_ei=best)


def keeps_running(ei: float, alternative_ei: float, tolerance: float) -> bool:
    """The pruner's rule: a trial keeps its next step while its expected improvement is at
    least ``tolerance`` times the best alternative's (``1.0`` is DyHPO's strict argmax).

    Examples
    --------
    >>> keeps_running(0.2, 0.3, tolerance=0.5), keeps_running(0.1, 0.3, tolerance=0.5)
    (True, False)
    """
    return ei >= tolerance * alternative_ei
