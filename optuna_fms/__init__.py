"""optuna-fms: Forecasting Model Search as an Optuna sampler and pruner.

- :class:`FMSSampler` and :class:`FMSPruner`: the sampler/pruner pair sharing one surrogate (by
  default an ARD Matern GP with priors; DyHPO's deep-kernel GP on request) over
  hyperparameters, budget, learning curve and (optionally) checkpoints.
- :func:`save_checkpoint`, :func:`load_checkpoint`, :func:`read_checkpoint` (a
  :class:`Checkpoint`), :func:`resume`: checkpoints as Optuna artifacts in safetensors format,
  and freeze-thaw continuation of paused trials.
- :func:`forecast`, :func:`recommend`, :func:`diagnose`: the surrogate's forecast of
  configurations' final scores, the configuration it recommends, and what it learned.
- :class:`EpochBudget`: stop a study after a number of epochs really trained.
- :class:`DashboardReport`: FMS's learning curves and progress in optuna-dashboard.
"""

from optuna_fms._budget import EpochBudget
from optuna_fms._budget import epochs_spent
from optuna_fms._checkpoint import Checkpoint
from optuna_fms._checkpoint import CheckpointError
from optuna_fms._checkpoint import load_checkpoint
from optuna_fms._checkpoint import read_checkpoint
from optuna_fms._checkpoint import save_checkpoint
from optuna_fms._dashboard import DashboardReport
from optuna_fms._diagnostics import Diagnostics
from optuna_fms._diagnostics import diagnose
from optuna_fms._forecast import Forecast
from optuna_fms._forecast import forecast
from optuna_fms._forecast import recommend
from optuna_fms._pruner import FMSPruner
from optuna_fms._resume import resume
from optuna_fms._sampler import FMSSampler
from optuna_fms._surrogate import SurrogateFitError


__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DashboardReport",
    "Diagnostics",
    "EpochBudget",
    "FMSPruner",
    "FMSSampler",
    "Forecast",
    "SurrogateFitError",
    "__version__",
    "diagnose",
    "epochs_spent",
    "forecast",
    "load_checkpoint",
    "read_checkpoint",
    "recommend",
    "resume",
    "save_checkpoint",
]
