"""The surrogate models by name: what ``FMSSampler(surrogate=...)`` accepts as a string.

A model is a class with the class attributes and methods of
:class:`~optuna_fms._surrogate.SurrogateModel` (what it reads, how an engine builds it); the
engine asks those, never the model's name. A new model is one class, passed as
``FMSSampler(surrogate=TheClass)`` or named here.

Examples
--------
>>> sorted(SURROGATES)
['deep-kernel', 'gp']
>>> surrogate_class("gp").reads_curves, surrogate_class("deep-kernel").reads_curves
(False, True)
"""

from __future__ import annotations

from optuna_fms._surrogate._fitted import SurrogateModel
from optuna_fms._surrogate._gp import GPSurrogate
from optuna_fms._surrogate._surrogate import Surrogate


SURROGATES: dict[str, type[SurrogateModel]] = {"gp": GPSurrogate, "deep-kernel": Surrogate}
"""Model name -> class (the string shortcuts of ``FMSSampler(surrogate=...)``)."""


def surrogate_class(surrogate: str | type[SurrogateModel]) -> type[SurrogateModel]:
    """The model class named ``surrogate``, or ``surrogate`` itself when it is a class."""
    if not isinstance(surrogate, str):
        return surrogate
    try:
        return SURROGATES[surrogate]
    except KeyError:
        raise ValueError(
            f"surrogate must be one of {tuple(SURROGATES)} or a model class, got {surrogate!r}."
        ) from None
