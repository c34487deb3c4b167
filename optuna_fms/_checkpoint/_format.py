"""The checkpoint file format: one safetensors file per ``(trial, step)``.

The file holds the model's tensors under their state-dict names, the optimizer's tensors under
the :data:`OPTIMIZER_PREFIX` prefix, the tensors of any other training state (``extra_state``:
LR scheduler, RNG states...) under :data:`EXTRA_PREFIX`, and everything that is not a tensor
(optimizer hyper-parameters, format version, trial number, step, the module's structure, a PEFT
adapter's description) as JSON strings in the safetensors header. See ``docs/checkpoints.md``
for the layout.

This module knows nothing about Optuna: it turns tensors and an optimizer state dict into a file
and back, and validates what it reads. Nothing here ever unpickles: files are parsed by
:mod:`safetensors` only, and JSON is used for everything that is not a tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
from typing import TYPE_CHECKING
from typing import Any


if TYPE_CHECKING:
    import torch


__all__ = [
    "FORMAT_NAME",
    "EXTRA_PREFIX",
    "FORMAT_VERSION",
    "OPTIMIZER_PREFIX",
    "CheckpointError",
    "read_file",
    "write_file",
]

FORMAT_NAME = "optuna-fms-checkpoint"
"""Value of the ``format`` header entry of every checkpoint this package writes."""

FORMAT_VERSION = 1
"""Version of the checkpoint layout; readers refuse files with a newer version."""

OPTIMIZER_PREFIX = "__fms_optimizer__/"
"""Prefix of the optimizer's tensors inside the safetensors file."""

EXTRA_PREFIX = "__fms_extra__/"
"""Prefix of the tensors of ``extra_state`` (any other training state) inside the file."""

_RESERVED = (OPTIMIZER_PREFIX, EXTRA_PREFIX)


class CheckpointError(Exception):
    """A checkpoint is missing, truncated, corrupt or not a checkpoint of this library.

    The message names the trial number, the step and the artifact id (raised by
    the internal ``read_file`` directly, it gives the reason only).

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
# Lossless JSON for the non-tensor parts (optimizer state dicts); tensors go to the file.
# ---------------------------------------------------------------------------------------------

_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _unique_name(path: str, tensors: Mapping[str, torch.Tensor], prefix: str) -> str:
    """The file name of the optimizer tensor at ``path``, never one already taken.

    Paths join keys with ``"."``, so different paths can give the same string (``{"a.b": x}``
    and ``{"a": {"b": y}}``; int key ``0`` and str key ``"0"``). The skeleton records the name
    actually used, so a ``~<n>`` suffix keeps each tensor apart and readers need nothing new.
    """
    name = prefix + path
    if name not in tensors:
        return name
    n = 1
    while f"{name}~{n}" in tensors:
        n += 1
    return f"{name}~{n}"


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        name = _unique_name(path, tensors, prefix)
        tensors[name] = obj.detach()
        return {_TENSOR: name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_encode(v, _join(path, i), tensors, prefix) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, _join(path, i), tensors, prefix) for i, v in enumerate(obj)]}
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) and k not in (_TENSOR, _TUPLE, _DICT) for k in obj)
        if plain:
            return {k: _encode(v, _join(path, k), tensors, prefix) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"Cannot store a dict key of type {type(k).__name__} at {path}.")
            items.append([k, _encode(v, _join(path, k), tensors, prefix)])
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


def _check_storable(name: str, t: torch.Tensor) -> None:
    """Refuse, naming the tensor, what safetensors cannot store (it has no clear error)."""
    import torch

    if t.layout != torch.strided or t.is_nested:
        raise ValueError(
            f"Tensor {name!r} has layout {t.layout}{' (nested)' if t.is_nested else ''}; "
            "checkpoints store dense tensors only (convert it with .to_dense() first)."
        )
    if t.device.type == "meta":
        raise ValueError(
            f"Tensor {name!r} is on the meta device and has no data to store; materialise it "
            "(e.g. module.to_empty(device='cpu') and initialise it) before saving."
        )
    if t.is_quantized:
        raise ValueError(
            f"Tensor {name!r} is quantized ({t.dtype}); checkpoints store plain tensors only "
            "(dequantize it first)."
        )


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


def write_file(
    path: str,
    state_dict: Mapping[str, torch.Tensor],
    *,
    trial_number: int,
    step: int,
    optimizer_state: Mapping[str, Any] | None = None,
    structure: str | None = None,
    optimizer_class: str | None = None,
    extra_state: Mapping[str, Any] | None = None,
    adapter: str | None = None,
) -> None:
    """Write a checkpoint file: the tensors, the optimizer state and the header.

    Parameters
    ----------
    path:
        The file to write (replaced if it exists).
    state_dict:
        ``{name: tensor}``; names must not start with :data:`OPTIMIZER_PREFIX`. Tied and
        non-contiguous tensors are supported; tensors that are exact views of another are
        stored once and recorded in the ``aliases`` header entry.
    trial_number, step:
        Recorded in the header.
    optimizer_state:
        An optimizer state dict or ``None``. Its tensors go into the file, the rest into the
        ``optimizer`` header entry as JSON that keeps int keys, tuples and nested containers.
    structure:
        JSON text of the module's structure, or ``None`` (no ``structure`` entry).
    optimizer_class:
        Informative ``module.qualname`` of the optimizer, or ``None``.
    extra_state:
        Any other training state (LR scheduler, RNG states...) or ``None``: stored like the
        optimizer state, its tensors under :data:`EXTRA_PREFIX`, the rest in the ``extra``
        header entry.
    adapter:
        JSON text describing a PEFT adapter whose tensors ``state_dict`` holds (see
        ``optuna_fms._checkpoint._adapter``), or ``None`` (no ``adapter`` entry).

    Raises
    ------
    TypeError
        A state-dict key is not a ``str``, a value is not a tensor, or the optimizer state
        holds an object other than tensors, ``None``, bool, int, float, str, lists, tuples and
        dicts (checkpoints never use pickle).
    ValueError
        A name uses a reserved prefix, or a tensor is sparse, nested, quantized or on the
        meta device (the message names it).

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from optuna_fms._checkpoint._format import read_file, write_file
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
    >>> write_file(path, {"w": torch.ones(2)}, trial_number=0, step=3)
    >>> tensors, optimizer_state, info = read_file(path)
    >>> tensors["w"], optimizer_state, info["step"]
    (tensor([1., 1.]), None, 3)
    """
    from safetensors.torch import save_file
    import torch

    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "trial_number": str(trial_number),
        "step": str(step),
    }
    if structure is not None:
        metadata["structure"] = structure
    if optimizer_class is not None:
        metadata["optimizer_class"] = optimizer_class
    if adapter is not None:
        metadata["adapter"] = adapter

    flat: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"State dict keys must be str, got {type(name).__name__}.")
        if name.startswith(_RESERVED):
            raise ValueError(f"State dict key {name!r} uses a reserved prefix {_RESERVED}.")
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"State dict entry {name!r} is a {type(value).__name__}, not a tensor; "
                "checkpoints store tensors only (no pickle)."
            )
        flat[name] = value.detach()
    for key, state, prefix in (
        ("optimizer", optimizer_state, OPTIMIZER_PREFIX),
        ("extra", extra_state, EXTRA_PREFIX),
    ):
        if state is not None:
            state_tensors: dict[str, torch.Tensor] = {}
            metadata[key] = json.dumps(_encode(dict(state), "", state_tensors, prefix))
            flat.update(state_tensors)
    for name, t in flat.items():
        _check_storable(name, t)
    tensors, aliases = _prepare_tensors(flat)
    if aliases:
        metadata["aliases"] = json.dumps(aliases)
    save_file(tensors, path, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------------


def _parse_int(metadata: Mapping[str, str], key: str) -> int | None:
    value = metadata.get(key)
    return int(value) if value is not None else None


def read_file(
    path: str, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """Read a checkpoint file: ``(model tensors, optimizer state dict or None, info)``.

    Parameters
    ----------
    path:
        A checkpoint written by :func:`write_file`. Its tensors are mapped from the file
        (copy-on-write), so the file may be deleted afterwards on POSIX.
    map_location:
        Device the tensors are loaded to.

    Returns
    -------
    tuple
        The model's tensors (tied names share one tensor); the optimizer state dict rebuilt
        with its original key and container types, or ``None``; and ``info`` with
        ``format_version``, ``trial_number``, ``step`` (ints), ``structure`` and ``adapter``
        (decoded JSON or ``None``), ``optimizer_class`` (``str`` or ``None``) and
        ``extra_state`` (rebuilt like the optimizer state, or ``None``).

    Raises
    ------
    CheckpointError
        The file is not valid safetensors (corrupt, truncated, a pickle...), not a checkpoint
        of this library, of a newer format version, or its header entries are malformed
        (including JSON nested too deeply to parse). The message gives the reason only.

    Examples
    --------
    >>> import os, tempfile
    >>> import torch
    >>> from optuna_fms._checkpoint._format import CheckpointError, read_file
    >>> path = os.path.join(tempfile.mkdtemp(), "junk.safetensors")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"not a checkpoint")
    >>> try:
    ...     read_file(path)
    ... except CheckpointError as e:
    ...     print(e)  # doctest: +ELLIPSIS
    not a valid safetensors file (corrupt or truncated): ...
    """
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device=str(map_location)) as f:
            metadata = dict(f.metadata() or {})
            if metadata.get("format") != FORMAT_NAME:
                raise CheckpointError(
                    f"not an optuna-fms checkpoint (header 'format' is "
                    f"{metadata.get('format')!r}, expected {FORMAT_NAME!r})."
                )
            version = _parse_int(metadata, "format_version")
            if version is None or version > FORMAT_VERSION:
                raise CheckpointError(
                    f"checkpoint format version {version} is not supported by this "
                    f"optuna-fms (reads up to {FORMAT_VERSION})."
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises SafetensorError, OSError, ValueError...
        raise CheckpointError(
            f"not a valid safetensors file (corrupt or truncated): {type(e).__name__}: {e}"
        ) from e

    try:
        aliases: dict[str, str] = json.loads(metadata.get("aliases", "{}"))
        for name, canon in aliases.items():
            tensors[name] = tensors[canon]
        model = {k: v for k, v in tensors.items() if not k.startswith(_RESERVED)}
        decoded = {
            key: _decode(json.loads(metadata[key]), tensors) if key in metadata else None
            for key in ("optimizer", "extra")
        }
        info: dict[str, Any] = {
            "format_version": version,
            "trial_number": _parse_int(metadata, "trial_number"),
            "step": _parse_int(metadata, "step"),
            "structure": json.loads(metadata["structure"]) if "structure" in metadata else None,
            "adapter": json.loads(metadata["adapter"]) if "adapter" in metadata else None,
            "optimizer_class": metadata.get("optimizer_class"),
            "extra_state": decoded["extra"],
        }
    # RecursionError: JSON nested too deeply; AttributeError: an entry of the wrong JSON type.
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"corrupt checkpoint header: {type(e).__name__}: {e}") from e
    return model, decoded["optimizer"], info
