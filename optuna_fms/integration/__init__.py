"""Training-loop integrations (optional extras).

- :class:`optuna_fms.integration.lightning.FMSCallback` for Lightning
  (``pip install optuna-fms[lightning]``);
- :class:`optuna_fms.integration.transformers.FMSTrainerCallback` for Hugging Face
  ``transformers.Trainer`` (``pip install optuna-fms[transformers]``), and
  :class:`optuna_fms.integration.transformers.FMSTrainer`, whose ``hyperparameter_search``
  pauses and continues trials (``pip install optuna-fms[peft]`` for LoRA adapters).

The submodules are imported on first use, so importing this package needs neither library.

Example:
    .. code-block:: python

        from optuna_fms.integration import FMSCallback  # imports Lightning here
"""

from __future__ import annotations

import importlib
from typing import Any


__all__ = ["FMSCallback", "FMSTrainer", "FMSTrainerCallback"]

_LAZY = {
    "FMSCallback": "optuna_fms.integration.lightning",
    "FMSTrainer": "optuna_fms.integration.transformers",
    "FMSTrainerCallback": "optuna_fms.integration.transformers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
