from __future__ import annotations

from collections.abc import Sequence

from optuna.study import Study
from optuna.trial import FrozenTrial

from optuna_fms._freeze_thaw import Lineage


MAX_BUDGET = 2**53
"""The largest full budget in steps: budgets up to it are exact as floats and as int64.
Optuna accepts a report at any int step; one beyond this budget is not read by the
surrogate (a report at step 2**63 - 1 overflowed the surrogate's budgets)."""


def resolve_max_steps(
    study: Study, explicit: int | None = None, trials: Sequence[FrozenTrial] | None = None
) -> int:
    """The full budget in steps: ``explicit`` when given, else the study pruner's
    ``max_steps`` (an :class:`~optuna_fms.FMSPruner`), else the largest step reported so far
    plus one; at most :data:`MAX_BUDGET`. The sampler, the pruner's surrogate and the
    dashboard all read it here.

    Examples
    --------
    >>> import optuna, optuna_fms
    >>> study = optuna.create_study(pruner=optuna_fms.FMSPruner(max_steps=30))
    >>> resolve_max_steps(study), resolve_max_steps(study, explicit=10)
    (30, 10)
    """
    if explicit is not None:
        return min(explicit, MAX_BUDGET)
    pruner_steps = getattr(study.pruner, "max_steps", None)
    if isinstance(pruner_steps, int):
        return min(pruner_steps, MAX_BUDGET)
    if trials is None:
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    last = [max(t.intermediate_values) for t in trials if t.intermediate_values]
    return min(max(last) + 1, MAX_BUDGET) if last else 1


def epochs_spent(trials: Sequence[FrozenTrial]) -> int:
    """Steps actually run: reported steps, less those a continuation copied from its parent.

    Examples
    --------
    >>> import optuna
    >>> study = optuna.create_study()
    >>> trial = study.ask()
    >>> for step in range(3):
    ...     trial.report(0.0, step)
    >>> epochs_spent(study.trials)
    3
    """
    lineage = Lineage(trials)
    total = 0
    for t in trials:
        copied = lineage.copied_steps(t)
        total += sum(1 for s in t.intermediate_values if s > copied)
    return total


class EpochBudget:
    """Study callback that stops the study once a total number of epochs has been run.

    Under freeze-thaw ``n_trials`` means little: a continuation is a new trial that runs
    only the epochs after its parent's pause. This callback counts what was really trained
    (:func:`epochs_spent`: every reported step, continuations counting only their new ones)
    and calls :meth:`optuna.study.Study.stop` when ``max_epochs`` is reached. Running
    trials finish their current epoch loop; with several workers the total may overshoot
    by what the other workers have in flight.

    Parameters
    ----------
    max_epochs:
        Total epochs (steps) to spend.

    Examples
    --------
    >>> import optuna, optuna_fms
    >>> def objective(trial):
    ...     x = trial.suggest_float("x", 0, 1)
    ...     for step in range(10):
    ...         trial.report(x, step)
    ...     return x
    >>> study = optuna.create_study()
    >>> study.optimize(objective, callbacks=[optuna_fms.EpochBudget(35)])
    >>> len(study.trials)
    4
    """

    def __init__(self, max_epochs: int) -> None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
        self.max_epochs = max_epochs

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        if epochs_spent(study._storage.get_all_trials(study._study_id, deepcopy=False)) >= (
            self.max_epochs
        ):
            study.stop()
