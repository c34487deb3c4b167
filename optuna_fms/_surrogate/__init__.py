"""The deep-kernel GP surrogate shared by FMSSampler and FMSPruner."""

from optuna_fms._surrogate._forecaster import Forecaster
from optuna_fms._surrogate._surrogate import Surrogate
from optuna_fms._surrogate._surrogate import SurrogateFitError


__all__ = ["Forecaster", "Surrogate", "SurrogateFitError"]
