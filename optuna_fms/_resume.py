from __future__ import annotations

import dataclasses
import logging

from optuna.artifacts._protocol import ArtifactStore
from optuna.trial import FrozenTrial
from optuna.trial import Trial
import torch

from optuna_fms import _attrs
from optuna_fms._checkpoint import Checkpoint
from optuna_fms._checkpoint import CheckpointError
from optuna_fms._checkpoint import read_checkpoint
from optuna_fms._checkpoint._adapter import load_weights
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
    has its state; a PEFT adapter's checkpoint onto the ``peft.PeftModel``'s base), copies
    the parent's learning curve into ``trial`` (so the dashboard and the surrogate see one
    continuous curve) and returns the step after the pause. For any other trial it does
    nothing and returns 0, so an objective can always call it.

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
    continuation = open_continuation(trial, artifact_store)
    if continuation is None:
        return 0
    checkpoint = continuation.checkpoint
    load_weights(model, checkpoint.tensors, checkpoint.metadata.get("adapter"))
    if optimizer is not None and checkpoint.optimizer_state is not None:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    return continuation.adopt()


@dataclasses.dataclass(frozen=True)
class ClaimedContinuation:
    """A trial that continues a paused one, and the paused trial's checkpoint, read.

    :func:`resume` and :class:`optuna_fms.integration.transformers.FMSTrainer` restore the
    checkpoint, then call :meth:`adopt`.
    """

    trial: Trial
    freeze_thaw: FreezeThaw
    parent: FrozenTrial
    checkpoint: Checkpoint

    def adopt(self) -> int:
        """Copy the parent's curve up to the pause into the trial, record the resume; return
        the next step."""
        step = self.checkpoint.step
        for s, value in sorted(self.parent.intermediate_values.items()):
            if s <= step:
                self.trial.report(value, s)
        self.freeze_thaw.record_resumed(self.trial._trial_id)
        return step + 1

    def give_up(self, reason: str) -> None:
        """Record that the checkpoint cannot be restored: the trial trains from step 0."""
        _give_up(self.trial, self.freeze_thaw, self.parent.number, reason)


def _give_up(trial: Trial, freeze_thaw: FreezeThaw, parent_number: int, reason: str) -> None:
    # The study goes on: the trial trains the parent's configuration from scratch.
    _logger.warning(
        "Trial %d cannot continue paused trial %d (%s); it trains the same configuration "
        "from step 0 instead.",
        trial.number,
        parent_number,
        reason,
    )
    freeze_thaw.record_resume_failed(trial._trial_id, reason)


def open_continuation(
    trial: Trial, artifact_store: ArtifactStore | None
) -> ClaimedContinuation | None:
    """The paused trial ``trial`` continues, with its checkpoint read; ``None`` when ``trial``
    continues none, does not hold the claim, or the checkpoint cannot be read (recorded)."""
    storage = trial.study._storage
    freeze_thaw = FreezeThaw(storage, trial.study._study_id)
    parent_ref = freeze_thaw.continuation_of(trial._trial_id)
    if parent_ref is None:
        return None
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
        return None
    parent = storage.get_trial(parent_ref.trial_id)
    store = _resolve_artifact_store(trial.study, artifact_store)
    try:
        checkpoint = read_checkpoint(
            parent, parent_ref.step, artifact_store=store, map_location="cpu"
        )
    except CheckpointError as err:
        _give_up(trial, freeze_thaw, parent.number, str(err))
        return None
    return ClaimedContinuation(trial, freeze_thaw, parent, checkpoint)
