"""Checkpoints of a trial's weights, stored as Optuna artifacts in safetensors format.

A checkpoint is one safetensors file per ``(trial, step)``: the model's tensors under their
state-dict names, the optimizer's tensors under the :data:`OPTIMIZER_PREFIX` prefix, and the
non-tensor parts (optimizer hyper-parameters, format version, trial number, step, the module's
structure) as JSON in the safetensors header. The file is uploaded with
:func:`optuna.artifacts.upload_artifact` and the trial's user attribute
``fms:checkpoints`` (:data:`optuna_fms._attrs.CHECKPOINTS`) maps ``str(step)`` to the artifact
id, so every worker that shares the study's storage and artifact store can find it.

Nothing here ever unpickles: files are parsed by :mod:`safetensors` only, and JSON is used for
everything that is not a tensor. See ``docs/checkpoints.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import operator
import os
import shutil
import tempfile
from typing import TYPE_CHECKING
from typing import Any
import warnings

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound

from optuna_fms import _attrs


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.study import Study
    from optuna.trial import FrozenTrial
    from optuna.trial import Trial
    import torch


__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT_NAME = "optuna-fms-checkpoint"
"""Value of the ``format`` header entry of every checkpoint this module writes."""

FORMAT_VERSION = 1
"""Version of the checkpoint layout; readers refuse files with a newer version."""

OPTIMIZER_PREFIX = "__fms_optimizer__/"
"""Prefix of the optimizer's tensors inside the safetensors file."""

DEFAULT_KEEP_LAST = 2

_ARTIFACTS_ATTR_PREFIX = "artifacts:"  # Key prefix optuna.artifacts.upload_artifact writes.


class CheckpointError(Exception):
    """A checkpoint is missing, truncated, corrupt or not a checkpoint of this library.

    The message names the trial number, the step and the artifact id.

    Examples
    --------
    >>> import optuna
    >>> from optuna_fms import CheckpointError, load_checkpoint
    >>> store = optuna.artifacts.FileSystemArtifactStore(".")
    >>> trial = optuna.create_study().ask()
    >>> try:
    ...     load_checkpoint(trial, artifact_store=store)
    ... except CheckpointError as e:
    ...     print(e)  # doctest: +ELLIPSIS
    trial 0, step None, artifact None: the trial has no checkpoint ...
    """


# ---------------------------------------------------------------------------------------------
# Artifact store and the step -> artifact id map.
# ---------------------------------------------------------------------------------------------


def _resolve_artifact_store(study: Study | None, artifact_store: ArtifactStore | None):
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


def _checkpoint_map(trial: Trial | FrozenTrial) -> dict[int, str]:
    """``{step: artifact_id}`` recorded on the trial, read fresh from storage for a Trial."""
    storage = getattr(trial, "storage", None)
    if storage is not None and hasattr(trial, "_trial_id"):
        user_attrs = storage.get_trial(trial._trial_id).user_attrs
    else:
        user_attrs = trial.user_attrs
    raw = user_attrs.get(_attrs.CHECKPOINTS) or {}
    return {int(step): str(artifact_id) for step, artifact_id in raw.items()}


def _latest_step(trial: Trial | FrozenTrial) -> int | None:
    """The largest step with a recorded checkpoint, or ``None``."""
    steps = _checkpoint_map(trial)
    return max(steps) if steps else None


# ---------------------------------------------------------------------------------------------
# Lossless JSON for the non-tensor parts (optimizer state dicts); tensors go to the file.
# ---------------------------------------------------------------------------------------------

_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        name = OPTIMIZER_PREFIX + path
        tensors[name] = obj.detach()
        return {_TENSOR: name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) and k not in (_TENSOR, _TUPLE, _DICT) for k in obj)
        if plain:
            return {k: _encode(v, _join(path, k), tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"Cannot store a dict key of type {type(k).__name__} at {path}.")
            items.append([k, _encode(v, _join(path, k), tensors)])
        return {_DICT: items}
    raise TypeError(
        f"Cannot store an object of type {type(obj).__name__} at {path!r} in a checkpoint: "
        "only tensors, None, bool, int, float, str, lists, tuples and dicts are stored "
        "(checkpoints never use pickle)."
    )


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if _TENSOR in obj and len(obj) == 1:
            return tensors[obj[_TENSOR]]
        if _TUPLE in obj and len(obj) == 1:
            return tuple(_decode(v, tensors) for v in obj[_TUPLE])
        if _DICT in obj and len(obj) == 1:
            return {k: _decode(v, tensors) for k, v in obj[_DICT]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------------


def _describe_structure(module: Any) -> str | None:
    """JSON of :func:`optuna_fms.metanet._structure.describe_module` for ``module``.

    The one place where the checkpoint code depends on the metanetwork package. ``None`` (and
    no ``structure`` header entry) when the module cannot be described; a checkpoint is never
    lost because its architecture is unknown to the metanetwork.
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


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (str(t.device), t.untyped_storage().data_ptr())


def _prepare_tensors(
    flat: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Make ``flat`` savable by safetensors without copying more than needed.

    A tensor that is an exact view of one already kept (same storage, offset, shape, stride,
    dtype; e.g. tied weights) is stored once and recorded as an alias. A tensor that overlaps
    another's storage differently is cloned (it is the only case that costs a copy besides
    making non-contiguous tensors contiguous).
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[str, int], list[str]] = {}
    for name, t in flat.items():
        key = _storage_key(t)
        if key is not None and key in seen:
            for canon in seen[key]:
                c = flat[canon]
                if (
                    c.dtype == t.dtype
                    and c.shape == t.shape
                    and c.stride() == t.stride()
                    and c.storage_offset() == t.storage_offset()
                ):
                    aliases[name] = canon
                    break
            else:
                out[name] = t.clone(memory_format=torch.contiguous_format)
                seen[key].append(name)
            continue
        out[name] = t if t.is_contiguous() else t.contiguous()
        if key is not None:
            seen[key] = [name]
    return out, aliases


def _write_safetensors(
    path: str,
    state_dict: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any] | None,
    metadata: dict[str, str],
) -> None:
    from safetensors.torch import save_file
    import torch

    flat: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"State dict keys must be str, got {type(name).__name__}.")
        if name.startswith(OPTIMIZER_PREFIX):
            raise ValueError(f"State dict key {name!r} uses the reserved {OPTIMIZER_PREFIX!r}.")
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"State dict entry {name!r} is a {type(value).__name__}, not a tensor; "
                "checkpoints store tensors only (no pickle)."
            )
        flat[name] = value.detach()
    if optimizer_state is not None:
        opt_tensors: dict[str, torch.Tensor] = {}
        skeleton = _encode(dict(optimizer_state), "", opt_tensors)
        metadata["optimizer"] = json.dumps(skeleton)
        flat.update(opt_tensors)
    tensors, aliases = _prepare_tensors(flat)
    if aliases:
        metadata["aliases"] = json.dumps(aliases)
    save_file(tensors, path, metadata=metadata)


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


def _remove_artifact(trial: Trial, artifact_store: ArtifactStore, artifact_id: str) -> None:
    """Delete one superseded checkpoint; mark its artifact record removed like the dashboard."""
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
        trial._trial_id, _ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(None)
    )


def _retained_steps(
    steps: list[int], keep_last: int | None, keep_every: int | None, just_saved: int
) -> set[int]:
    if keep_last is None:
        return set(steps)
    ordered = sorted(steps)
    keep = set(ordered[-keep_last:]) if keep_last > 0 else set()
    if keep_every is not None:
        keep.update(s for s in steps if s % keep_every == 0)
    keep.add(ordered[-1])  # The newest checkpoint is never deleted.
    keep.add(just_saved)
    return keep


def save_checkpoint(
    trial: Trial,
    model_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor],
    step: int,
    *,
    optimizer: Any | None = None,
    artifact_store: ArtifactStore | None = None,
    keep_last: int | None = DEFAULT_KEEP_LAST,
    keep_every: int | None = None,
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
        the metanetwork) or a mapping from names to tensors. Shared (e.g. tied) and
        non-contiguous tensors are supported.
    step:
        The step (usually the 0-based epoch just finished), as given to ``trial.report``.
        Saving the same step again replaces the earlier checkpoint.
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

    Returns
    -------
    str
        The artifact id of the new checkpoint.

    Notes
    -----
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

    if isinstance(step, bool):
        raise TypeError(f"step must be an int, got {step!r}.")
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an int, got {step!r}.") from None
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}.")
    if keep_every is not None and keep_every < 1:
        raise ValueError(f"keep_every must be >= 1 or None, got {keep_every}.")
    store = _resolve_artifact_store(getattr(trial, "study", None), artifact_store)

    structure = None
    if isinstance(model_or_state_dict, torch.nn.Module):
        state_dict: Mapping[str, torch.Tensor] = model_or_state_dict.state_dict()
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

    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "trial_number": str(trial.number),
        "step": str(step),
    }
    if structure is not None:
        metadata["structure"] = structure
    if optimizer_class is not None:
        metadata["optimizer_class"] = optimizer_class

    local_dir = _local_store_dir(store)
    if local_dir is not None:
        os.makedirs(
            local_dir, exist_ok=True
        )  # A FileSystemArtifactStore's folder may not exist yet.
    tmp_dir = tempfile.mkdtemp(prefix=".optuna-fms-tmp-", dir=local_dir)
    try:
        path = os.path.join(tmp_dir, f"trial-{trial.number}-step-{step}.safetensors")
        _write_safetensors(path, state_dict, optimizer_state, metadata)
        artifact_id = optuna.artifacts.upload_artifact(
            artifact_store=_RenameIntoStore(store) if local_dir is not None else store,
            file_path=path,
            study_or_trial=trial,
        )
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    # Record first, delete afterwards: a crash in between leaves an orphan file, never a
    # recorded id without a file.
    recorded = _checkpoint_map(trial)
    replaced = recorded.get(step)
    recorded[step] = artifact_id
    keep = _retained_steps(list(recorded), keep_last, keep_every, step)
    removed = [aid for s, aid in recorded.items() if s not in keep]
    if replaced is not None:
        removed.append(replaced)
    new_map = {str(s): recorded[s] for s in sorted(keep)}
    trial.set_user_attr(_attrs.CHECKPOINTS, new_map)
    for aid in removed:
        _remove_artifact(trial, store, aid)
    return artifact_id


# ---------------------------------------------------------------------------------------------
# Reading.
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


def _parse_int(metadata: Mapping[str, str], key: str) -> int | None:
    value = metadata.get(key)
    return int(value) if value is not None else None


def _load_checkpoint_full(
    trial: Trial | FrozenTrial,
    step: int | None = None,
    *,
    artifact_store: ArtifactStore | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """Load a checkpoint: ``(model tensors, optimizer state dict or None, metadata)``.

    ``metadata`` has ``format_version``, ``trial_number``, ``step`` (ints), ``structure``
    (decoded JSON or ``None``) and ``optimizer_class`` (``str`` or ``None``). The optimizer
    state dict is rebuilt with its original key and container types, ready for
    ``optimizer.load_state_dict``.
    """
    from safetensors import safe_open

    store = _resolve_artifact_store(getattr(trial, "study", None), artifact_store)
    recorded = _checkpoint_map(trial)
    number = trial.number
    if not recorded:
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
            with safe_open(path, framework="pt", device=str(map_location)) as f:
                metadata = dict(f.metadata() or {})
                if metadata.get("format") != FORMAT_NAME:
                    raise error(
                        f"not an optuna-fms checkpoint (header 'format' is "
                        f"{metadata.get('format')!r}, expected {FORMAT_NAME!r})."
                    )
                version = _parse_int(metadata, "format_version")
                if version is None or version > FORMAT_VERSION:
                    raise error(
                        f"checkpoint format version {version} is not supported by this "
                        f"optuna-fms (reads up to {FORMAT_VERSION})."
                    )
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises SafetensorError, OSError, ValueError...
            raise error(
                f"not a valid safetensors file (corrupt or truncated): {type(e).__name__}: {e}"
            ) from e
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    try:
        aliases: dict[str, str] = json.loads(metadata.get("aliases", "{}"))
        for name, canon in aliases.items():
            tensors[name] = tensors[canon]
        model = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
        optimizer_state = None
        if "optimizer" in metadata:
            optimizer_state = _decode(json.loads(metadata["optimizer"]), tensors)
        structure = json.loads(metadata["structure"]) if "structure" in metadata else None
        info: dict[str, Any] = {
            "format_version": version,
            "trial_number": _parse_int(metadata, "trial_number"),
            "step": _parse_int(metadata, "step"),
            "structure": structure,
            "optimizer_class": metadata.get("optimizer_class"),
        }
    except (KeyError, ValueError, TypeError) as e:
        raise error(f"corrupt checkpoint header: {type(e).__name__}: {e}") from e
    return model, optimizer_state, info


def load_checkpoint(
    trial_or_frozen_trial: Trial | FrozenTrial,
    step: int | None = None,
    *,
    artifact_store: ArtifactStore | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Load the model tensors a trial saved with :func:`save_checkpoint`.

    Parameters
    ----------
    trial_or_frozen_trial:
        A :class:`~optuna.trial.Trial` or a :class:`~optuna.trial.FrozenTrial` (for example
        from ``study.trials``). A FrozenTrial has no study, so ``artifact_store`` must then be
        given; its ``fms:checkpoints`` map is the one of the snapshot.
    step:
        The step to load; ``None`` loads the latest (largest) step.
    artifact_store:
        The store to read from; default as in :func:`save_checkpoint`.
    map_location:
        Device the tensors are loaded to.

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
    model, _, _ = _load_checkpoint_full(
        trial_or_frozen_trial, step, artifact_store=artifact_store, map_location=map_location
    )
    return model
