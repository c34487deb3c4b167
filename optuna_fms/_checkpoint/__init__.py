"""Checkpoints of a trial's weights, stored as Optuna artifacts in safetensors format.

A checkpoint is one safetensors file per ``(trial, step)``, uploaded with
:func:`optuna.artifacts.upload_artifact`; the trial's user attribute ``fms:checkpoints``
(:data:`optuna_fms._attrs.CHECKPOINTS`) maps ``str(step)`` to the artifact id, so every worker
that shares the study's storage and artifact store can find it. Nothing here ever unpickles.

- :mod:`._format`: the file format (header, validation, tensors and optimizer state); no Optuna.
- :mod:`._store`: the artifact store and the ``fms:checkpoints`` map.
- :mod:`._retention`: which checkpoints ``keep_last``/``keep_every`` keep.
- :mod:`._api`: :func:`save_checkpoint`, :func:`read_checkpoint` (-> :class:`Checkpoint`) and
  :func:`load_checkpoint`.

See ``docs/checkpoints.md``.
"""

from optuna_fms._checkpoint._api import Checkpoint
from optuna_fms._checkpoint._api import load_checkpoint
from optuna_fms._checkpoint._api import read_checkpoint
from optuna_fms._checkpoint._api import save_checkpoint
from optuna_fms._checkpoint._format import FORMAT_NAME
from optuna_fms._checkpoint._format import FORMAT_VERSION
from optuna_fms._checkpoint._format import OPTIMIZER_PREFIX
from optuna_fms._checkpoint._format import CheckpointError
from optuna_fms._checkpoint._retention import DEFAULT_KEEP_LAST
from optuna_fms._checkpoint._store import _resolve_artifact_store as _resolve_artifact_store


__all__ = [
    "DEFAULT_KEEP_LAST",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "OPTIMIZER_PREFIX",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
