"""A fitted surrogate together with the data and layout it was fitted on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from typing import Protocol

import numpy as np

from optuna_fms._surrogate._data import TrainingSet
from optuna_fms._surrogate._data import pack_rows
from optuna_fms._surrogate._model import RowLayout


SurrogateKind = Literal["gp", "deep-kernel"]
"""``"gp"``: ARD Matern GP with priors (:class:`~optuna_fms._surrogate._gp.GPSurrogate`);
``"deep-kernel"``: DyHPO's deep-kernel GP (:class:`~optuna_fms._surrogate.Surrogate`)."""


class SurrogateModel(Protocol):
    """What the engine needs of a surrogate: fit, condition on new rows, predict."""

    def fit(self, layout: RowLayout, rows: np.ndarray, y: np.ndarray) -> None: ...

    def condition(self, rows: np.ndarray, y: np.ndarray) -> None: ...

    def predict(
        self, rows: np.ndarray, *, decide: bool = False
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class FittedModel:
    """The surrogate's view of one fit: it answers queries in the kind of rows it saw.

    Parameters
    ----------
    layout:
        Column layout of the packed rows.
    max_steps:
        The full budget in steps; budgets are read as fractions of it.
    data:
        The training set (its standardiser maps objective values to the model's units).
    surrogate:
        The fitted GP.

    Examples
    --------
    >>> import numpy as np
    >>> from optuna_fms._surrogate._data import Curve, build_training_set
    >>> from optuna_fms._surrogate._surrogate import Surrogate
    >>> lay = RowLayout(x_dim=1, curve_len=3)
    >>> curves = [Curve(i, {}, np.arange(4), np.linspace(0, v, 4), np.array([v]))
    ...           for i, v in enumerate([0.2, 0.5, 0.9])]
    >>> data = build_training_set(curves, lay, 4, 64, np.random.RandomState(0))
    >>> s = Surrogate(seed=0, n_scratch_epochs=10)
    >>> s.fit(lay, data.rows, data.y)
    >>> model = FittedModel(lay, 4, data, s)
    >>> mean, std = model.predict(np.array([[0.7]]), np.array([4.0]), [np.zeros(0)])
    >>> mean.shape, bool(std[0] > 0)
    ((1,), True)
    """

    layout: RowLayout
    max_steps: int
    data: TrainingSet
    surrogate: SurrogateModel

    def predict(
        self,
        x: np.ndarray,
        budgets: np.ndarray,
        histories: Sequence[np.ndarray],
        ckpts: np.ndarray | None = None,
        *,
        decide: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std (standardised units) at ``budgets`` given the curves so far.

        ``histories[i]`` is the curve observed before ``budgets[i]`` and ``ckpts[i]`` the
        weight-bank index of the weights that row reads (``-1``: none). ``decide=True`` asks
        for the posterior that decisions read (the acquisition's), which a surrogate may
        condition differently from its forecasts.
        """
        rows = pack_rows(
            self.layout, x, budgets, histories, self.max_steps, self.data.scale, ckpts
        )
        return self.surrogate.predict(rows, decide=decide)

    def to_objective(self, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std from standardised to "higher is better" objective units."""
        scale = self.data.scale
        return mean * scale.std + scale.mean, std * scale.std
