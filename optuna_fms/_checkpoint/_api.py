"""The public checkpoint functions: :func:`save_checkpoint`, :func:`read_checkpoint` and
:func:`load_checkpoint`, and the :class:`Checkpoint` that :func:`read_checkpoint` returns.

They tie the file format (:mod:`._format`), the artifact store (:mod:`._store`) and retention
(:mod:`._retention`) together. See ``docs/checkpoints.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import operator
import shutil
import tempfile
from typing import TYPE_CHECKING
from typing import Any
import warnings

from optuna.artifacts.exceptions import ArtifactNotFound

from optuna_fms import _attrs
from optuna_fms._checkpoint._adapter import adapter_state
from optuna_fms._checkpoint._adapter import peft_model_of
from optuna_fms._checkpoint._format import CheckpointError
from optuna_fms._checkpoint._format import read_file
from optuna_fms._checkpoint._format import write_file
from optuna_fms._checkpoint._retention import DEFAULT_KEEP_LAST
from optuna_fms._checkpoint._retention import _after_save
from optuna_fms._checkpoint._retention import _check_retention
from optuna_fms._checkpoint._store import _check_running
from optuna_fms._checkpoint._store import _checkpoint_map
from optuna_fms._checkpoint._store import _copied_from
from optuna_fms._checkpoint._store import _open_local_copy
from optuna_fms._checkpoint._store import _record_checkpoint_map
from optuna_fms._checkpoint._store import _remove_artifact
from optuna_fms._checkpoint._store import _resolve_artifact_store
from optuna_fms._checkpoint._store import _upload


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.trial import FrozenTrial
    from optuna.trial import Trial
    import torch


__all__ = ["Checkpoint", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

_MAX_STEP = 2**63 - 1
"""Steps must lie in ``[0, _MAX_STEP)``."""


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Checkpoint:
    """One checkpoint as read back by :func:`read_checkpoint`.

    Attributes
    ----------
    tensors:
        ``{name: tensor}`` of the model, ready for ``model.load_state_dict`` (for a PEFT
        adapter, ``peft.set_peft_model_state_dict``). Tied tensors come back as one tensor
        under each name.
    optimizer_state:
        The optimizer state dict with its original key and container types (ready for
        ``optimizer.load_state_dict``), or ``None`` when none was saved.
    structure:
        The module structure recorded by the metanetwork's ``describe_module`` (decoded JSON),
        or ``None`` when a bare state dict was saved or the module could not be described.
    step:
        The step the checkpoint was read for.
    metadata:
        The decoded header: ``format_version``, ``trial_number``, ``step`` (ints, ``None``
        when absent), ``structure`` (as above), ``adapter`` (a PEFT adapter's description, see
        docs/checkpoints.md, or ``None``) and ``optimizer_class`` (``str`` or ``None``).
    extra_state:
        The ``extra_state`` given to :func:`save_checkpoint` (same container types), or
        ``None``.

    Examples
    --------
    >>> import tempfile
    >>> import optuna
    >>> import torch
    >>> import optuna_fms
    >>> store = optuna.artifacts.FileSystemArtifactStore(tempfile.mkdtemp())
    >>> trial = optuna.create_study().ask()
    >>> _ = optuna_fms.save_checkpoint(trial, {"w": torch.ones(2)}, step=4, artifact_store=store)
    >>> optuna_fms.read_checkpoint(trial, artifact_store=store)
    Checkpoint(step=4, tensors=['w'], optimizer_state=None, structure=None)
    """

    tensors: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    structure: Any
    step: int
    metadata: dict[str, Any]
    extra_state: dict[str, Any] | None = None

    def __repr__(self) -> str:  # The tensors themselves would flood a console.
        return (
            f"Checkpoint(step={self.step}, tensors={list(self.tensors)}, "
            f"optimizer_state={'...' if self.optimizer_state is not None else None}, "
            f"structure={'...' if self.structure is not None else None})"
        )


# ---------------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------------


def _check_step(step: Any) -> int:
    """``step`` as an int in ``[0, 2**63 - 1)``: :class:`TypeError` or :class:`ValueError`."""
    if isinstance(step, bool):
        raise TypeError(f"step must be an int, got {step!r}.")
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int, got {step!r}.") from None
    if not 0 <= step < _MAX_STEP:
        raise ValueError(f"step must be in [0, 2**63 - 1), got {step}.")
    return step


def _describe_structure(module: Any) -> str | None:
    """JSON of :func:`optuna_fms.metanet._structure.describe_module` for ``module``.

    The one place where the checkpoint code depends on the metanetwork package. ``None`` (and
    no ``structure`` header entry) when the module cannot be described; a checkpoint is never
    lost because its architecture is unknown to the metanetwork. Called directly by
    :func:`save_checkpoint`: the warning points at its caller.
    """
    try:
        from optuna_fms.metanet._structure import describe_module
    except ModuleNotFoundError as e:  # The metanet package is optional at this layer.
        if e.name is not None and e.name.startswith("optuna_fms.metanet"):
            return None
        raise
    try:
        return json.dumps(describe_module(module))
    except Exception as e:  # noqa: BLE001 - an unsupported layer must not stop training.
        warnings.warn(
            f"Checkpoint saved without 'structure' metadata: describe_module failed for "
            f"{type(module).__name__} ({type(e).__name__}: {e}).",
            stacklevel=3,
        )
        return None


def save_checkpoint(
    trial: Trial,
    model_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor],
    step: int,
    *,
    optimizer: Any | None = None,
    artifact_store: ArtifactStore | None = None,
    keep_last: int | None = DEFAULT_KEEP_LAST,
    keep_every: int | None = None,
    extra_state: Mapping[str, Any] | None = None,
) -> str:
    """Save the weights (and optimizer state) of ``trial`` at ``step`` as an Optuna artifact.

    The tensors are written to a temporary safetensors file, uploaded with
    :func:`optuna.artifacts.upload_artifact` and the temporary file is deleted (with a local
    :class:`~optuna.artifacts.FileSystemArtifactStore` it is renamed into the store instead:
    one write, atomic). The artifact id is recorded in the trial's user attribute
    ``fms:checkpoints`` (``{str(step): artifact_id}``). Peak extra memory is at most about one
    copy of the tensors (none for contiguous CPU tensors; a CPU copy for GPU tensors; a copy of
    each non-contiguous tensor).

    Parameters
    ----------
    trial:
        The running trial.
    model_or_state_dict:
        A :class:`torch.nn.Module` (its ``state_dict()`` is saved, plus its ``structure`` for
        the metanetwork; of a ``peft.PeftModel``, only its active adapter's tensors, as
        ``save_pretrained`` writes them, and the ``adapter`` description) or a mapping from
        names to tensors. Shared (e.g. tied) and
        non-contiguous tensors are supported; sparse, nested, quantized and meta tensors are
        not.
    step:
        The step (usually the 0-based epoch just finished), as given to ``trial.report``; an
        int in ``[0, 2**63 - 1)``. Saving the same step again replaces the earlier checkpoint.
    optimizer:
        Optional optimizer (anything with ``state_dict()``) or an optimizer state dict. Its
        tensors go into the same file under the ``__fms_optimizer__/`` prefix, the rest
        (``param_groups`` etc.) as JSON in the header.
    artifact_store:
        Where to upload. Default: ``trial.study.sampler.artifact_store`` (set by
        :class:`~optuna_fms.FMSSampler`); :class:`ValueError` if neither is available.
    keep_last:
        Keep the checkpoints of the ``keep_last`` largest steps; ``None`` keeps all.
    keep_every:
        Also keep the checkpoints of steps divisible by ``keep_every``.
    extra_state:
        Any other state to restore from (LR scheduler, RNG states...), stored like the
        optimizer's; ``Checkpoint.extra_state`` gives it back.

    Returns
    -------
    str
        The artifact id of the new checkpoint.

    Raises
    ------
    TypeError
        ``step`` is not an int, or the state holds something other than tensors (optimizer
        state: tensors, ``None``, bool, int, float, str, lists, tuples and dicts).
    ValueError
        ``step`` is out of range, ``keep_last``/``keep_every`` is below 1, no artifact store
        is available, or a tensor cannot be stored (sparse, nested, quantized, meta; the
        message names it). Nothing is uploaded or recorded then.
    optuna.exceptions.UpdateFinishedTrialError
        The trial has already finished (``study.tell`` was called, or the objective
        returned). Nothing is uploaded or recorded then.

    Notes
    -----
    When :class:`~optuna_fms.FMSPruner` paused the trial at ``step`` before this checkpoint
    was saved (``save_checkpoint`` called after ``should_prune()`` returned ``True``), saving
    it makes the pause continuable, as if it had been saved before the report.

    Retention never deletes the newest checkpoint (largest step) nor the one just saved.
    Superseded files are removed with the store's ``remove``, dropped from
    ``fms:checkpoints`` first, and their ``artifacts:<id>`` record is set to JSON null the way
    optuna-dashboard deletes an artifact.

    Examples
    --------
    >>> import tempfile
    >>> import optuna
    >>> import torch
    >>> import optuna_fms
    >>> store = optuna.artifacts.FileSystemArtifactStore(tempfile.mkdtemp())
    >>> trial = optuna.create_study().ask()
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.Adam(model.parameters())
    >>> for epoch in range(3):
    ...     artifact_id = optuna_fms.save_checkpoint(
    ...         trial, model, step=epoch, optimizer=opt, artifact_store=store
    ...     )
    >>> sorted(trial.user_attrs["fms:checkpoints"])  # keep_last=2
    ['1', '2']
    """
    import torch

    step = _check_step(step)
    _check_retention(keep_last, keep_every)
    store = _resolve_artifact_store(getattr(trial, "study", None), artifact_store)
    _check_running(trial)

    structure = adapter = None
    if isinstance(model_or_state_dict, torch.nn.Module):
        state_dict: Mapping[str, torch.Tensor] = {}
        if peft_model_of(model_or_state_dict) is not None:  # The adapter, never the base.
            state_dict, adapter = adapter_state(model_or_state_dict)
        else:
            state_dict = model_or_state_dict.state_dict()
        structure = _describe_structure(model_or_state_dict)
    elif isinstance(model_or_state_dict, Mapping):
        state_dict = model_or_state_dict
    else:
        raise TypeError(
            "model_or_state_dict must be a torch.nn.Module or a mapping of tensors, got "
            f"{type(model_or_state_dict).__name__}."
        )
    optimizer_state = None
    optimizer_class = None
    if optimizer is not None:
        if isinstance(optimizer, Mapping):
            optimizer_state = optimizer
        else:
            optimizer_state = optimizer.state_dict()
            inner = getattr(optimizer, "optimizer", optimizer)  # Lightning/accelerate wrappers.
            optimizer_class = type(inner).__module__ + "." + type(inner).__qualname__

    def write(path: str) -> None:
        write_file(
            path,
            state_dict,
            trial_number=trial.number,
            step=step,
            optimizer_state=optimizer_state,
            structure=structure,
            optimizer_class=optimizer_class,
            extra_state=extra_state,
            adapter=adapter,
        )

    file_name = f"trial-{trial.number}-step-{step}.safetensors"
    artifact_id = _upload(trial, store, file_name, write)

    # Record first, delete afterwards: a crash in between leaves an orphan file, never a
    # recorded id without a file. Retention deletes only the trial's own files.
    recorded = _checkpoint_map(trial, owned=True)
    kept, removed = _after_save(recorded, step, artifact_id, keep_last, keep_every)
    _record_checkpoint_map(trial, kept, first=not recorded)
    for aid in removed:
        _remove_artifact(trial, store, aid)
    _pause_checkpointed(trial, step)
    return artifact_id


def _pause_checkpointed(trial: Trial, step: int) -> None:
    """Tell the study's :class:`~optuna_fms.FMSPruner` that ``trial`` has a checkpoint at
    ``step``: a pause it decided there before the checkpoint existed becomes continuable."""
    study = getattr(trial, "study", None)
    # Looked up, not imported: the pruner imports this package (and any pruner may listen).
    listener = getattr(getattr(study, "pruner", None), "_checkpoint_saved", None)
    if study is not None and callable(listener):
        listener(study, trial._trial_id, step)


# ---------------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------------


def read_checkpoint(
    trial: Trial | FrozenTrial,
    step: int | None = None,
    *,
    artifact_store: ArtifactStore | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read everything a trial saved with :func:`save_checkpoint` at one step.

    Parameters
    ----------
    trial:
        A :class:`~optuna.trial.Trial` or a :class:`~optuna.trial.FrozenTrial` (for example
        from ``study.trials``). A FrozenTrial has no study, so ``artifact_store`` must then be
        given; its ``fms:checkpoints`` map is the one of the snapshot.
    step:
        The step to read; ``None`` reads the latest (largest) step.
    artifact_store:
        The store to read from; default as in :func:`save_checkpoint`.
    map_location:
        Device the tensors are loaded to.

    Returns
    -------
    Checkpoint
        The model's tensors, the optimizer state dict (or ``None``), the module structure (or
        ``None``), the step and the decoded header.

    Raises
    ------
    CheckpointError
        No checkpoint at ``step``, or the artifact is missing, truncated, corrupt or not a
        safetensors checkpoint of this library, or it was saved by another trial (a record
        copied from that trial). The message names the trial number, the step and the
        artifact id. Nothing is ever unpickled.
    ValueError
        No artifact store (see ``artifact_store``).

    Notes
    -----
    A checkpoint belongs to the trial *number* that saved it (the file's header and the
    trial's owner stamp say so): the trials of an ``optuna.copy_study`` copy read the
    checkpoints of the trials they copy (with the same artifact store), a retry that copied
    another trial's attributes does not.

    Examples
    --------
    >>> import tempfile
    >>> import optuna
    >>> import torch
    >>> import optuna_fms
    >>> store = optuna.artifacts.FileSystemArtifactStore(tempfile.mkdtemp())
    >>> trial = optuna.create_study().ask()
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> _ = optuna_fms.save_checkpoint(trial, model, 0, optimizer=opt, artifact_store=store)
    >>> ckpt = optuna_fms.read_checkpoint(trial, artifact_store=store)
    >>> sorted(ckpt.tensors), ckpt.step, ckpt.metadata["optimizer_class"]
    (['bias', 'weight'], 0, 'torch.optim.sgd.SGD')
    >>> fresh = torch.optim.SGD(torch.nn.Linear(3, 1).parameters(), lr=0.5)
    >>> fresh.load_state_dict(ckpt.optimizer_state)
    >>> fresh.param_groups[0]["lr"]
    0.1
    """
    store = _resolve_artifact_store(getattr(trial, "study", None), artifact_store)
    recorded = _checkpoint_map(trial)
    number = trial.number
    if not recorded:
        source = _copied_from(trial)
        if source is not None:
            raise CheckpointError(
                f"trial {number}, step {step}, artifact None: the trial has no checkpoint of "
                f"its own; its {_attrs.CHECKPOINTS!r} was copied from trial {source} (a retry "
                f"copies every attribute): read the checkpoints of trial {source} instead."
            )
        raise CheckpointError(
            f"trial {number}, step {step}, artifact None: the trial has no checkpoint "
            f"(user attribute {_attrs.CHECKPOINTS!r} is empty)."
        )
    if step is None:
        step = max(recorded)
    if step not in recorded:
        raise CheckpointError(
            f"trial {number}, step {step}, artifact None: no checkpoint at this step; "
            f"checkpointed steps: {sorted(recorded)}."
        )
    artifact_id = recorded[step]

    def error(reason: str) -> CheckpointError:
        return CheckpointError(f"trial {number}, step {step}, artifact {artifact_id}: {reason}")

    tmp_dir = tempfile.mkdtemp(prefix="optuna-fms-")
    try:
        try:
            path = _open_local_copy(store, artifact_id, tmp_dir)
        except ArtifactNotFound as e:
            raise error("the artifact is missing from the artifact store.") from e
        except (OSError, ValueError) as e:
            raise error(f"the artifact cannot be read ({type(e).__name__}: {e}).") from e
        try:
            tensors, optimizer_state, info = read_file(path, map_location)
        except CheckpointError as e:  # The reason only: add trial, step and artifact id.
            raise error(str(e)) from e.__cause__
        saved_by = info["trial_number"]
        if saved_by is not None and saved_by != number:
            # The record was copied from another trial (by hand, or by a tool that copies
            # attributes): the file is that trial's, whatever this trial's attributes say.
            raise error(
                f"the file was saved by trial {saved_by}, not by this trial (its record was "
                f"copied from trial {saved_by}): read the checkpoints of trial {saved_by}."
            )
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return Checkpoint(
        tensors=tensors,
        optimizer_state=optimizer_state,
        structure=info["structure"],
        step=step,
        extra_state=info.pop("extra_state"),
        metadata=info,
    )


def load_checkpoint(
    trial_or_frozen_trial: Trial | FrozenTrial,
    step: int | None = None,
    *,
    artifact_store: ArtifactStore | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Load the model tensors a trial saved with :func:`save_checkpoint`.

    :func:`read_checkpoint` gives the optimizer state and the metadata as well.

    Parameters
    ----------
    trial_or_frozen_trial, step, artifact_store, map_location:
        As ``trial``, ``step``, ``artifact_store`` and ``map_location`` of
        :func:`read_checkpoint`.

    Returns
    -------
    dict[str, torch.Tensor]
        ``{name: tensor}``, ready for ``model.load_state_dict``. Tied tensors come back as one
        tensor under each name.

    Raises
    ------
    CheckpointError
        No checkpoint at ``step``, or the artifact is missing, truncated, corrupt or not a
        safetensors checkpoint of this library. The message names the trial number, the step
        and the artifact id. Nothing is ever unpickled.

    Examples
    --------
    >>> import tempfile
    >>> import optuna
    >>> import torch
    >>> import optuna_fms
    >>> store = optuna.artifacts.FileSystemArtifactStore(tempfile.mkdtemp())
    >>> study = optuna.create_study()
    >>> trial = study.ask()
    >>> model = torch.nn.Linear(3, 1)
    >>> _ = optuna_fms.save_checkpoint(trial, model, step=0, artifact_store=store)
    >>> fresh = torch.nn.Linear(3, 1)
    >>> fresh.load_state_dict(optuna_fms.load_checkpoint(trial, artifact_store=store))
    <All keys matched successfully>
    >>> study.tell(trial, 1.0)  # doctest: +ELLIPSIS
    FrozenTrial(...)
    >>> tensors = optuna_fms.load_checkpoint(study.trials[0], step=0, artifact_store=store)
    >>> torch.equal(tensors["weight"], model.weight.detach())
    True
    """
    return read_checkpoint(
        trial_or_frozen_trial, step, artifact_store=artifact_store, map_location=map_location
    ).tensors
