from __future__ import annotations

from optuna.study import Study
from optuna.trial import FrozenTrial

from optuna_fms import _attrs


def epochs_spent(trials: list[FrozenTrial]) -> int:
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
    total = 0
    for t in trials:
        parent = t.user_attrs.get(_attrs.CONTINUES)
        copied = parent["step"] if parent and t.user_attrs.get(_attrs.RESUMED) else -1
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
