"""optuna-fms: Forecasting Model Search as an Optuna sampler and pruner."""

from optuna_fms._pruner import FMSPruner
from optuna_fms._sampler import FMSSampler


__version__ = "0.1.0"

__all__ = ["FMSPruner", "FMSSampler", "__version__"]
