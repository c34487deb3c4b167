from __future__ import annotations

import logging

from optuna.artifacts._protocol import ArtifactStore
from optuna.trial import Trial
import torch

from optuna_fms import _attrs
from optuna_fms._checkpoint import CheckpointError
from optuna_fms._checkpoint import read_checkpoint
from optuna_fms._checkpoint._store import _resolve_artifact_store
from optuna_fms._freeze_thaw import FreezeThaw


_logger = logging.getLogger("optuna_fms")


def resume(
    trial: Trial,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    artifact_store: ArtifactStore | None = None,
) -> int:
    """Restore a continued trial from its parent's checkpoint; return the next step to run.

    When :class:`~optuna_fms.FMSSampler` chose ``trial`` to continue a trial that
    :class:`~optuna_fms.FMSPruner` paused (freeze-thaw), this loads the parent's checkpoint
    at the step where it was paused into ``model`` (and ``optimizer``, when the checkpoint
    has its state), copies the parent's learning curve into ``trial`` (so the dashboard and
    the surrogate see one continuous curve) and returns the step after the pause. For any
    other trial it does nothing and returns 0, so an objective can always call it.

    Parameters
    ----------
    trial:
        The running trial.
    model:
        The freshly built model to restore into.
    optimizer:
        Its optimizer, restored too when given.
    artifact_store:
        Where the checkpoints live; defaults to the study sampler's ``artifact_store``.

    Returns
    -------
    int
        The first step the objective should run.

    Raises
    ------
    optuna_fms.CheckpointError
        If the parent's checkpoint is missing or unreadable.

    Examples
    --------
    >>> import optuna, torch, optuna_fms
    >>> study = optuna.create_study(sampler=optuna_fms.FMSSampler())
    >>> trial = study.ask()
    >>> optuna_fms.resume(trial, torch.nn.Linear(2, 1))
    0
    """
    storage = trial.study._storage
    freeze_thaw = FreezeThaw(storage, trial.study._study_id)
    parent_ref = freeze_thaw.continuation_of(trial._trial_id)
    if parent_ref is None:
        return 0
    if not freeze_thaw.holds(trial._trial_id, parent_ref):
        # The attribute was copied from the trial that took the claim (a retry keeps the
        # failed trial's attributes): only that trial may load the parent's weights.
        _logger.warning(
            "Trial %d carries %r of another trial but did not claim paused trial %d; it "
            "trains from step 0.",
            trial.number,
            _attrs.CONTINUES,
            parent_ref.trial,
        )
        return 0
    parent = storage.get_trial(parent_ref.trial_id)
    step = parent_ref.step
    store = _resolve_artifact_store(trial.study, artifact_store)
    try:
        checkpoint = read_checkpoint(parent, step, artifact_store=store, map_location="cpu")
    except CheckpointError as err:
        # The study goes on: this trial trains the parent's configuration from scratch.
        _logger.warning(
            "Trial %d cannot continue paused trial %d (%s); it trains the same configuration "
            "from step 0 instead.",
            trial.number,
            parent.number,
            err,
        )
        freeze_thaw.record_resume_failed(trial._trial_id, str(err))
        return 0
    model.load_state_dict(checkpoint.tensors)
    if optimizer is not None and checkpoint.optimizer_state is not None:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    for s, value in sorted(parent.intermediate_values.items()):
        if s <= step:
            trial.report(value, s)
    freeze_thaw.record_resumed(trial._trial_id)
    return step + 1
