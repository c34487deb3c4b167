"""A fitted surrogate together with the data and layout it was fitted on."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar
from typing import Literal
from typing import Protocol

import numpy as np

from optuna_fms._surrogate._data import TrainingSet
from optuna_fms._surrogate._data import pack_rows
from optuna_fms._surrogate._model import RowLayout


if TYPE_CHECKING:
    from optuna_fms._surrogate._diagnostics import Diagnostics
    from optuna_fms._surrogate._weights import WeightBank

SurrogateKind = Literal["gp", "deep-kernel"]
"""``"gp"``: ARD Matern GP with priors (:class:`~optuna_fms._surrogate._gp.GPSurrogate`);
``"deep-kernel"``: DyHPO's deep-kernel GP (:class:`~optuna_fms._surrogate.Surrogate`)."""


@dataclass(frozen=True)
class ModelContext:
    """What an engine gives a model it builds: the seed, the weight bank whose indices the
    rows hold (``None``: no weight input), the forecasts of earlier studies (``related``,
    ``None``: none) and whether a pretrained metanetwork may be trained (``fine_tune``)."""

    seed: int | None = None
    bank: WeightBank | None = None
    related: Any = None
    fine_tune: bool = False


class SurrogateModel(Protocol):
    """What the engine needs of a surrogate: what it reads, how to build it with an engine's
    settings, and fit, condition on new rows, predict.

    The class attributes say what the model reads, so that the engine asks them instead of
    the model's name: a third model is one class (passed as ``FMSSampler(surrogate=cls)``,
    or named in :data:`~optuna_fms._surrogate.SURROGATES`).
    """

    name: ClassVar[str]
    """What :func:`optuna_fms.diagnose` calls the model."""
    reads_curves: ClassVar[bool]
    """Whether a row reads the learning curve before its budget (rows as wide as the budget;
    the pruner may keep a fit until the data grew by half, since the model reads trials'
    newest values through their curves)."""
    shares_training: ClassVar[bool]
    """Whether the model's trainings are shared between workers (its hyperparameters stored
    in the study: ``hyperparameters()`` and ``load_hyperparameters(...)``)."""
    reads_related: ClassVar[bool]
    """Whether the model reads earlier studies (``warm_start``)."""
    default_retrain_growth: ClassVar[float]
    """The sampler's ``retrain_growth`` by default."""
    sampler_options: ClassVar[Mapping[str, str]]
    """The :class:`~optuna_fms.FMSSampler` keywords the model takes: sampler keyword ->
    the model's keyword."""

    @classmethod
    def build(cls, context: ModelContext, **kwargs: Any) -> SurrogateModel:
        """An unfitted model for an engine (``kwargs``: the model's own settings)."""
        ...

    def fit(self, layout: RowLayout, rows: np.ndarray, y: np.ndarray) -> None: ...

    def condition(self, rows: np.ndarray, y: np.ndarray) -> None: ...

    def predict(
        self, rows: np.ndarray, *, decide: bool = False
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def report(
        self, rows: np.ndarray, y: np.ndarray, owner: np.ndarray, n_configurations: int
    ) -> Diagnostics:
        """What the current fit of ``n_configurations`` curves learned, with its errors on
        ``rows`` (``owner``: the curve of each row, for the held-out error)."""
        ...


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
