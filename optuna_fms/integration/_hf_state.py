"""The ``transformers.Trainer`` state a continuation needs, in a checkpoint and back.

:class:`~optuna_fms.integration.transformers.FMSTrainerCallback` stores, beside the model (or
PEFT adapter) and the optimizer, the ``extra_state`` entry ``"transformers"``:

- ``"trainer_state"``: the ``TrainerState`` as the JSON text of ``trainer_state.json``
  (global step, epoch, ``log_history``...), without callback states;
- ``"scheduler"``: the LR scheduler's ``state_dict()``;
- ``"rng"``: the Python, NumPy, torch CPU (and CUDA) random states, as the Trainer saves them.

:func:`write_resume_dir` writes them out as a checkpoint folder in the Trainer's own layout, for
``trainer.train(resume_from_checkpoint=folder)``: the Trainer then restores everything itself
(weights, optimizer, scheduler, RNG, epoch and step, skipping the data already seen).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import json
import os
import random
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
import torch


if TYPE_CHECKING:
    from transformers import TrainerState

    from optuna_fms._checkpoint import Checkpoint


KEY = "transformers"
"""The ``extra_state`` entry that holds the Trainer's state."""

# The file names of a Trainer checkpoint folder (transformers.trainer and transformers.utils).
_TRAINER_STATE, _OPTIMIZER, _SCHEDULER, _RNG = (
    "trainer_state.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
)
_MODEL, _ADAPTER, _ADAPTER_CONFIG = (
    "model.safetensors",
    "adapter_model.safetensors",
    "adapter_config.json",
)


class NotResumableError(Exception):
    """A checkpoint lacks what a Trainer needs to continue (saved without the Trainer's state)."""


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    rng: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():  # As the Trainer saves (and restores) them.
        rng["cuda"] = torch.cuda.random.get_rng_state()
    return rng


def trainer_extra_state(state: TrainerState, lr_scheduler: Any) -> dict[str, Any]:
    """The ``extra_state`` of a checkpoint saved at an evaluation during training."""
    fields = dataclasses.asdict(state)
    fields["stateful_callbacks"] = {}  # Callback states are not restored (documented).
    return {
        KEY: {
            "trainer_state": json.dumps(fields, sort_keys=True),
            "scheduler": None if lr_scheduler is None else lr_scheduler.state_dict(),
            "rng": _rng_state(),
        }
    }


def _rng_file(rng: Mapping[str, Any]) -> dict[str, Any]:
    """The random states as the Trainer's ``rng_state.pth`` holds them."""
    numpy_state = rng["numpy"]
    out = {
        "python": rng["python"],
        "numpy": (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        ),
        "cpu": rng["cpu"],
    }
    if "cuda" in rng:
        out["cuda"] = rng["cuda"]
    return out


def _unique(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` without the second name of a tied tensor (safetensors refuses shared
    memory; the Trainer loads non-strictly and ties them again)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def write_resume_dir(path: str, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` into the folder ``path`` in the Trainer's checkpoint layout.

    Raises
    ------
    NotResumableError
        The checkpoint has no optimizer state or no Trainer state.
    """
    from safetensors.torch import save_file

    hf = (checkpoint.extra_state or {}).get(KEY)
    if hf is None or checkpoint.optimizer_state is None or hf.get("scheduler") is None:
        raise NotResumableError(
            "the checkpoint has no Trainer state (optimizer, LR scheduler, RNG and step): it "
            "was not saved by FMSTrainer or FMSTrainerCallback(save_optimizer=True)"
        )
    with open(os.path.join(path, _TRAINER_STATE), "w", encoding="utf-8") as f:
        f.write(hf["trainer_state"])
    torch.save(checkpoint.optimizer_state, os.path.join(path, _OPTIMIZER))
    torch.save(hf["scheduler"], os.path.join(path, _SCHEDULER))
    torch.save(_rng_file(hf["rng"]), os.path.join(path, _RNG))
    adapter = checkpoint.metadata.get("adapter")
    if adapter is None:
        save_file(_unique(checkpoint.tensors), os.path.join(path, _MODEL), {"format": "pt"})
        return
    save_file(dict(checkpoint.tensors), os.path.join(path, _ADAPTER), {"format": "pt"})
    with open(os.path.join(path, _ADAPTER_CONFIG), "w", encoding="utf-8") as f:
        json.dump(adapter["config"], f)
