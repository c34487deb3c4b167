"""The engine between Optuna and the surrogate, shared by FMSSampler and FMSPruner.

It owns everything that reads or writes a study; the decisions themselves are made on arrays
by :mod:`optuna_fms._surrogate.acquisition` and the allocation rules. One module per job:

- :mod:`._curves`: trials into learning curves (following the continuation lineage), and
  which configurations are run, closed or restartable;
- :mod:`._weights`: checkpoints and starting weights into the weight bank
  (:class:`WeightInputs`);
- :mod:`._schedule`: the fit schedule, when the surrogate is trained or conditioned
  (:class:`FitSchedule`);
- :mod:`._shared_training`: GP trainings shared between workers, announce / adopt / wait /
  publish (:class:`SharedTraining`);
- :mod:`._decisions`: what to start, what to continue, whether to keep running
  (:class:`Decisions`; the allocation rule plugs in here);
- :mod:`._forecasting`: forecasts at the full budget in the objective's units
  (:class:`Forecaster`);
- :mod:`._records`: the records they pass (:class:`Fit`, :class:`Decision`, ...);
- :mod:`._engine`: :class:`Engine`, the facade the sampler, the pruner and the public
  functions call, with the per-study caches.
"""

from optuna_fms._engine._curves import count_observations
from optuna_fms._engine._curves import longest_curves
from optuna_fms._engine._decisions import Decisions
from optuna_fms._engine._engine import Engine
from optuna_fms._engine._engine import engine_of
from optuna_fms._engine._engine import fitted
from optuna_fms._engine._forecasting import Forecaster
from optuna_fms._engine._records import Decision
from optuna_fms._engine._records import FinalForecast
from optuna_fms._engine._records import Fit
from optuna_fms._engine._records import StepForecast
from optuna_fms._engine._schedule import FitSchedule
from optuna_fms._engine._shared_training import SharedTraining
from optuna_fms._engine._weights import WeightInputs


__all__ = [
    "Decision",
    "Decisions",
    "Engine",
    "FinalForecast",
    "Fit",
    "FitSchedule",
    "Forecaster",
    "SharedTraining",
    "StepForecast",
    "WeightInputs",
    "count_observations",
    "engine_of",
    "fitted",
    "longest_curves",
]
