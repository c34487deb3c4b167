"""The surrogate: a GP over hyperparameters, budget, learning curve and weights (by default an
ARD Matern GP with priors, :class:`GPSurrogate`; DyHPO's deep-kernel GP, :class:`Surrogate`,
on request).

A pure package: it takes arrays and returns arrays or small dataclasses, and knows nothing
about studies, storages, claims or checkpoints (:mod:`optuna_fms._engine` feeds it).

- :class:`SpaceEncoder`: parameters <-> the unit cube;
- :class:`Curve`, :func:`build_training_set`: learning curves -> packed training rows;
- :class:`GPSurrogate` (ARD Matern GP with priors) and :class:`Surrogate` (deep-kernel GP):
  fit and query, each declaring what it reads (:class:`SurrogateModel`); :data:`SURROGATES`
  names them; :class:`FittedModel`: one fit and its data;
- :mod:`~optuna_fms._surrogate.acquisition`: expected improvement and the decisions made
  with it;
- :class:`WeightBank`: featurised checkpoints the rows refer to by index.
"""

from optuna_fms._surrogate._data import Curve
from optuna_fms._surrogate._data import build_training_set
from optuna_fms._surrogate._diagnostics import Diagnostics
from optuna_fms._surrogate._encoding import SpaceEncoder
from optuna_fms._surrogate._fitted import FittedModel
from optuna_fms._surrogate._fitted import ModelContext
from optuna_fms._surrogate._fitted import SurrogateKind
from optuna_fms._surrogate._fitted import SurrogateModel
from optuna_fms._surrogate._gp import GPSurrogate
from optuna_fms._surrogate._gp import Trend
from optuna_fms._surrogate._model import RowLayout
from optuna_fms._surrogate._models import SURROGATES
from optuna_fms._surrogate._models import surrogate_class
from optuna_fms._surrogate._surrogate import Surrogate
from optuna_fms._surrogate._surrogate import SurrogateFitError
from optuna_fms._surrogate._weights import WeightBank


__all__ = [
    "SURROGATES",
    "Curve",
    "Diagnostics",
    "FittedModel",
    "GPSurrogate",
    "ModelContext",
    "RowLayout",
    "SpaceEncoder",
    "Surrogate",
    "SurrogateFitError",
    "SurrogateKind",
    "SurrogateModel",
    "Trend",
    "WeightBank",
    "build_training_set",
    "surrogate_class",
]
