"""Checkpoints in Optuna's artifact store, and the trial attribute that finds them.

A checkpoint file is uploaded with :func:`optuna.artifacts.upload_artifact`; the trial's user
attribute ``fms:checkpoints`` (:data:`optuna_fms._attrs.CHECKPOINTS`) maps ``str(step)`` to the
artifact id, so every worker that shares the study's storage and artifact store can find it.
This module is the only one of the package that touches stores and trial attributes; what the
files contain is :mod:`optuna_fms._checkpoint._format`'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING
from typing import Any
import warnings

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.exceptions import UpdateFinishedTrialError

from optuna_fms import _attrs


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.study import Study
    from optuna.trial import FrozenTrial
    from optuna.trial import Trial


def _resolve_artifact_store(
    study: Study | None, artifact_store: ArtifactStore | None
) -> ArtifactStore:
    """Return the artifact store to use for a study; the one rule used everywhere.

    1. An explicit ``artifact_store`` wins.
    2. Otherwise ``study.sampler.artifact_store`` when the study's sampler has that attribute
       (:class:`optuna_fms.FMSSampler` does).
    3. Otherwise :class:`ValueError`.
    """
    if artifact_store is not None:
        return artifact_store
    sampler = getattr(study, "sampler", None) if study is not None else None
    store = getattr(sampler, "artifact_store", None)
    if store is not None:
        return store
    if study is None:
        raise ValueError(
            "No artifact store: a FrozenTrial has no study, so pass artifact_store= "
            "(e.g. optuna.artifacts.FileSystemArtifactStore('artifacts'))."
        )
    raise ValueError(
        "No artifact store for checkpoints: pass artifact_store= (e.g. "
        "optuna.artifacts.FileSystemArtifactStore('artifacts')), or create the study with "
        "optuna_fms.FMSSampler(artifact_store=...), whose store is then used by default. "
        f"The study's sampler ({type(sampler).__name__}) has no 'artifact_store' attribute."
    )


# ---------------------------------------------------------------------------------------------
# The step -> artifact id map.
# ---------------------------------------------------------------------------------------------


def _fresh(trial: Trial | FrozenTrial) -> Any:
    """The trial as stored now (a Trial's attributes may have changed since it was made), or
    the FrozenTrial snapshot itself."""
    storage = getattr(trial, "storage", None)
    if storage is not None and hasattr(trial, "_trial_id"):
        return storage.get_trial(trial._trial_id)
    return trial


def _stamp_number(frozen: Any) -> int | None:
    """The trial number the owner stamp names; ``None`` for no stamp or a stamp of the
    earlier form (the owner's storage id, which ``optuna.copy_study`` does not keep)."""
    stamp = _attrs.read_checkpoints_owner(frozen.system_attrs)
    return None if stamp is None else stamp.number


def _owns_records(frozen: Any, *, strict: bool) -> bool:
    """Whether ``frozen`` saved the checkpoints its ``fms:checkpoints`` records.

    The owner stamp (:data:`~optuna_fms._attrs.CHECKPOINTS_OWNER`) names the trial that saved
    them by number: ``optuna.copy_study`` keeps trial numbers (not storage ids), and a retry
    made by :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`, which copies every
    attribute, has a number of its own. ``strict`` (before retention deletes files): only a
    stamp that names this trial counts, or one of the earlier form that names its storage id.
    Otherwise (reading, where the file's own header must name the trial too) only a stamp
    naming another trial disowns the records.
    """
    number = _stamp_number(frozen)
    if number is not None:
        return number == frozen.number
    if not strict:
        return True
    stamp = _attrs.read_checkpoints_owner(frozen.system_attrs)
    return stamp is not None and stamp.trial_id == getattr(frozen, "_trial_id", None)


def _checkpoint_map(trial: Trial | FrozenTrial, *, owned: bool = False) -> dict[int, str]:
    """``{step: artifact_id}`` recorded on the trial, read fresh from storage for a Trial.

    Empty when the map was copied from another trial (see :func:`_owns_records`): a retry
    must neither read nor delete the failed trial's checkpoints. With ``owned`` (saving,
    whose retention deletes files) a map is the trial's only if its stamp says so.
    """
    frozen = _fresh(trial)
    if not _owns_records(frozen, strict=owned):
        return {}
    return _attrs.read_checkpoints(frozen.user_attrs)


def _copied_from(trial: Trial | FrozenTrial) -> int | None:
    """The number of the trial whose checkpoint records ``trial`` carries, if another's."""
    number = _stamp_number(_fresh(trial))
    return number if number is not None and number != trial.number else None


def _record_checkpoint_map(trial: Trial, recorded: Mapping[int, str], *, first: bool) -> None:
    """Store ``{str(step): artifact_id}`` (in step order) as the trial's ``fms:checkpoints``;
    with ``first`` (the trial had no checkpoint of its own yet) stamp the trial, by number,
    as their owner."""
    if first:
        stamp = _attrs.CheckpointsOwner(number=trial.number)
        trial.storage.set_trial_system_attr(
            trial._trial_id, _attrs.CHECKPOINTS_OWNER, stamp.to_json()
        )
    trial.set_user_attr(_attrs.CHECKPOINTS, {str(s): recorded[s] for s in sorted(recorded)})


def _check_running(trial: Trial) -> None:
    """:class:`~optuna.exceptions.UpdateFinishedTrialError` if ``trial`` has finished: checked
    before anything is uploaded, so that a late call leaves no file behind."""
    state = trial.storage.get_trial(trial._trial_id).state
    if state.is_finished():
        raise UpdateFinishedTrialError(
            f"Cannot save a checkpoint of trial {trial.number}: it has already finished "
            f"({state.name}). Call save_checkpoint inside the objective, before it returns or "
            "raises optuna.TrialPruned (before study.tell in an ask-and-tell loop); nothing "
            "was uploaded."
        )


# ---------------------------------------------------------------------------------------------
# Upload.
# ---------------------------------------------------------------------------------------------


def _local_store_dir(store: Any) -> str | None:
    """The directory of a plain :class:`~optuna.artifacts.FileSystemArtifactStore` on POSIX.

    There the temporary file is written inside the store's directory and renamed into place
    (see :class:`_RenameIntoStore`); elsewhere it goes to the system's temporary directory and
    the store copies it.
    """
    if os.name != "posix" or type(store) is not optuna.artifacts.FileSystemArtifactStore:
        return None
    if not hasattr(store, "_get_filepath") or not hasattr(store, "_base_path"):
        return None  # A future Optuna changed the class: take the portable path.
    return str(store._base_path)


class _RenameIntoStore:
    """Adapter given to ``upload_artifact`` for a local FileSystemArtifactStore.

    ``write`` moves the (already complete) temporary file into place with an atomic
    ``os.replace`` instead of copying its bytes: the data is written once, and no reader can
    ever see a half-written artifact. ``upload_artifact`` still records the artifact.
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    def write(self, artifact_id: str, content_body: Any) -> None:
        source = getattr(content_body, "name", None)
        target = self._store._get_filepath(artifact_id)
        if isinstance(source, str) and os.path.isfile(source):
            os.replace(source, target)
        else:  # pragma: no cover - upload_artifact always passes the opened file.
            self._store.write(artifact_id, content_body)

    def open_reader(self, artifact_id: str) -> Any:  # pragma: no cover - protocol only
        return self._store.open_reader(artifact_id)

    def remove(self, artifact_id: str) -> None:  # pragma: no cover - protocol only
        self._store.remove(artifact_id)


def _upload(
    trial: Trial, store: ArtifactStore, file_name: str, write: Callable[[str], None]
) -> str:
    """Write a file with ``write(path)`` into a temporary directory and upload it; the id.

    With a local FileSystemArtifactStore the temporary directory is inside the store and the
    file is renamed into place (one write, atomic); otherwise the store copies it. The
    temporary directory is always removed.
    """
    local_dir = _local_store_dir(store)
    if local_dir is not None:
        # A FileSystemArtifactStore's folder may not exist yet.
        os.makedirs(local_dir, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".optuna-fms-tmp-", dir=local_dir)
    try:
        path = os.path.join(tmp_dir, file_name)
        write(path)
        return optuna.artifacts.upload_artifact(
            artifact_store=_RenameIntoStore(store) if local_dir is not None else store,
            file_path=path,
            study_or_trial=trial,
        )
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _remove_artifact(trial: Trial, artifact_store: ArtifactStore, artifact_id: str) -> None:
    """Delete one superseded checkpoint; mark its artifact record removed like the dashboard.

    Called directly by :func:`~optuna_fms.save_checkpoint`: the warning points at its caller.
    """
    try:
        artifact_store.remove(artifact_id)
    except ArtifactNotFound:
        pass
    except Exception as e:  # noqa: BLE001 - a failed cleanup must not stop training.
        warnings.warn(f"Could not remove checkpoint artifact {artifact_id}: {e}", stacklevel=3)
        return
    # optuna-dashboard's own "delete artifact" sets the record to JSON null; the dashboard then
    # hides it (and does not try to delete it again with the study).
    trial.storage.set_trial_system_attr(
        trial._trial_id, _attrs.artifact_record(artifact_id), json.dumps(None)
    )


# ---------------------------------------------------------------------------------------------
# Download.
# ---------------------------------------------------------------------------------------------


def _open_local_copy(store: ArtifactStore, artifact_id: str, tmp_dir: str) -> str:
    """A local path to the artifact's bytes: the file itself when the store hands out a real
    file (FileSystemArtifactStore), otherwise a copy streamed into ``tmp_dir``."""
    with store.open_reader(artifact_id) as reader:
        name = getattr(reader, "name", None)
        if isinstance(name, str) and os.path.isfile(name) and hasattr(reader, "fileno"):
            return name
        path = os.path.join(tmp_dir, "checkpoint.safetensors")
        with open(path, "wb") as f:
            shutil.copyfileobj(reader, f)
        return path
