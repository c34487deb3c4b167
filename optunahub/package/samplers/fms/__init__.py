"""Forecasting Model Search (FMS) for OptunaHub: a sampler and a pruner that work as a pair.

Everything here comes from the ``optuna-fms`` package on PyPI (``pip install optuna-fms``),
which ships the surrogate models and the pretrained graph metanetwork; this directory holds
no code or weights of its own.
"""

from __future__ import annotations


try:
    from optuna_fms import EpochBudget
    from optuna_fms import epochs_spent
    from optuna_fms import FMSPruner
    from optuna_fms import FMSSampler
    from optuna_fms import recommend
    from optuna_fms import resume
    from optuna_fms import save_checkpoint
except ModuleNotFoundError as err:
    raise ModuleNotFoundError(
        f"samplers/fms needs the optuna-fms package ({err}). Install it with "
        "`pip install -r https://hub.optuna.org/samplers/fms/requirements.txt`."
    ) from err


__all__ = [
    "EpochBudget",
    "FMSPruner",
    "FMSSampler",
    "epochs_spent",
    "recommend",
    "resume",
    "save_checkpoint",
]
