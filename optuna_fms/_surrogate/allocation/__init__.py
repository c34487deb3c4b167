"""Allocation rules: how FMS spends the next step of compute (one rule per module).

A rule decides, from the fitted model's forecasts, which option a new trial gets (a fresh
configuration or the continuation of a paused trial: the sampler) and whether a running
trial keeps its next step (the pruner). The engine builds the :class:`Options` and the
:class:`View`; a rule is a small object with :meth:`~AllocationRule.choose`,
:meth:`~AllocationRule.alternative` and :meth:`~AllocationRule.keeps_running`. A new rule is
one module here and one entry in :data:`RULES`.

Examples
--------
>>> sorted(RULES)
['final', 'one-step', 'one-step-promoting', 'random-horizon', 'rungs']
>>> make_rule("rungs").name
'rungs'
"""

from __future__ import annotations

from collections.abc import Callable

from optuna_fms._surrogate.allocation._base import AllocationRule
from optuna_fms._surrogate.allocation._base import Options
from optuna_fms._surrogate.allocation._base import Pick
from optuna_fms._surrogate.allocation._base import View
from optuna_fms._surrogate.allocation._final import FinalEIPerStep
from optuna_fms._surrogate.allocation._one_step import OneStepEI
from optuna_fms._surrogate.allocation._promoting import PromotingOneStep
from optuna_fms._surrogate.allocation._random_horizon import RandomHorizonPI
from optuna_fms._surrogate.allocation._rungs import ModelBasedRungs


RULES: dict[str, Callable[[], AllocationRule]] = {
    "one-step": OneStepEI,
    "final": FinalEIPerStep,
    "random-horizon": RandomHorizonPI,
    "rungs": ModelBasedRungs,
    "one-step-promoting": PromotingOneStep,
}
"""Rule name -> factory (what ``FMSSampler(allocation=...)`` accepts by name)."""


def make_rule(rule: str | AllocationRule) -> AllocationRule:
    """The rule named ``rule`` (a fresh object), or ``rule`` itself when it is one."""
    if not isinstance(rule, str):
        return rule
    try:
        return RULES[rule]()
    except KeyError:
        raise ValueError(
            f"Unknown allocation rule {rule!r}; choose from {', '.join(sorted(RULES))} or "
            "pass an object with choose, alternative and keeps_running."
        ) from None


__all__ = [
    "RULES",
    "AllocationRule",
    "FinalEIPerStep",
    "ModelBasedRungs",
    "OneStepEI",
    "PromotingOneStep",
    "Options",
    "Pick",
    "RandomHorizonPI",
    "View",
    "make_rule",
]
