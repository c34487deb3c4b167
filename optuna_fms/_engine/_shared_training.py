"""GP trainings shared between workers through the study: announce, adopt, wait, publish.

After training, a worker stores the GP's hyperparameters and the number of observations they
were fitted on in the study's system attributes (:data:`~optuna_fms._attrs.GP_TRAINING`);
before training it announces that it does (:data:`~optuna_fms._attrs.GP_TRAINING_STARTED`).
Another worker whose own training is older conditions a GP with the published
hyperparameters on its data instead of training (*adopts* it), and a worker without any
model waits a little for an announced training rather than train the same GP twice.
:class:`~optuna_fms._engine._schedule.FitSchedule` decides when to do which.
"""

from __future__ import annotations

from collections.abc import Mapping
import logging
import time
from typing import Any
from typing import Protocol
from typing import cast
import uuid

import numpy as np
from optuna.distributions import distribution_to_json
from optuna.study import Study

from optuna_fms import _attrs
from optuna_fms._surrogate import RowLayout
from optuna_fms._surrogate import SpaceEncoder
from optuna_fms._surrogate import SurrogateFitError
from optuna_fms._surrogate import SurrogateModel


_logger = logging.getLogger("optuna_fms")
_AWAIT_TRAINING_S = 20.0
"""How long a worker without any model waits for another worker's announced training."""
_AWAIT_POLL_S = 0.05
_TRAINING_LEASE_S = 60.0
"""How long another worker's announced GP training keeps the others from training (a worker
that died while training holds the others off no longer than this)."""


class _Sharing(Protocol):
    """What a model whose trainings are shared (``shares_training``) also has."""

    def hyperparameters(self) -> dict[str, Any]: ...

    def load_hyperparameters(
        self, layout: RowLayout, rows: np.ndarray, y: np.ndarray, hyperparameters: Any
    ) -> None: ...


def space_json(encoder: SpaceEncoder) -> dict[str, str]:
    """The search space of ``encoder`` as stored in the training records."""
    return {n: distribution_to_json(d) for n, d in encoder.search_space.items()}


def _training_elsewhere(
    system_attrs: Mapping[str, Any], space: dict[str, str], max_steps: int, me: str
) -> bool:
    """Whether another worker than ``me`` announced a GP training for ``space`` and
    ``max_steps``
    (:data:`_attrs.GP_TRAINING_STARTED`) less than :data:`_TRAINING_LEASE_S` ago that is not
    published yet: no published training covers as many observations. A malformed published
    record tells nothing: then no."""
    started = _attrs.read_gp_training_started(system_attrs)
    if started is None or started.by == me:
        return False
    if started.space != space or started.max_steps != max_steps:
        return False
    if _attrs.GP_TRAINING in system_attrs:
        published = _attrs.read_gp_training(system_attrs)
        if published is None or published.n_trained >= started.n:
            return False
    return 0.0 <= time.time() - started.at < _TRAINING_LEASE_S


def adopt(
    surrogate: SurrogateModel,
    layout: RowLayout,
    rows: np.ndarray,
    y: np.ndarray,
    shared: _attrs.GPTraining | None,
    n_trained: int | None,
    n_observations: int,
) -> tuple[bool, bool]:
    """Condition ``surrogate`` (a GP) on ``rows`` with the hyperparameters of another
    worker's training ``shared`` if that is newer than its own (trained on ``n_trained``
    observations). Returns whether it did, and whether ``shared`` is unusable (malformed, or
    trained on more than the study's ``n_observations``)."""
    if shared is None or not surrogate.shares_training:
        return False, False
    if shared.n_trained > n_observations:
        return False, True
    if n_trained is not None and shared.n_trained <= n_trained:
        return False, False
    try:
        cast(_Sharing, surrogate).load_hyperparameters(layout, rows, y, shared.gp)
    except SurrogateFitError as err:
        _logger.warning("Not adopting the GP training stored in the study: %s", err)
        return False, True
    return True, False


class SharedTraining:
    """One worker's side of the shared-training protocol on the studies it fits.

    Its :attr:`token` tells this worker's announcements from other workers'; a copy
    (pickled into another process) is another worker, with a token of its own.

    Examples
    --------
    >>> import optuna
    >>> study = optuna.create_study()
    >>> encoder = SpaceEncoder({"x": optuna.distributions.FloatDistribution(0, 1)})
    >>> mine, theirs = SharedTraining(), SharedTraining()
    >>> mine.announce(study, encoder, max_steps=5, n_observations=10)
    >>> attrs = study._storage.get_study_system_attrs(study._study_id)
    >>> mine.elsewhere(attrs, encoder, 5), theirs.elsewhere(attrs, encoder, 5)
    (False, True)
    """

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.token = uuid.uuid4().hex

    def latest(
        self, system_attrs: Mapping[str, Any], encoder: SpaceEncoder, max_steps: int
    ) -> _attrs.GPTraining | None:
        """The study's latest GP training by any worker (from the study's system
        attributes), if it is for this search space and budget."""
        shared = _attrs.read_gp_training(system_attrs)
        if shared is None or shared.max_steps != max_steps:
            return None
        return shared if shared.space == space_json(encoder) else None

    def elsewhere(
        self, system_attrs: Mapping[str, Any], encoder: SpaceEncoder, max_steps: int
    ) -> bool:
        """Whether another worker is training a GP for this search space and budget now."""
        return _training_elsewhere(system_attrs, space_json(encoder), max_steps, self.token)

    def await_published(
        self,
        study: Study,
        encoder: SpaceEncoder,
        max_steps: int,
        shared: _attrs.GPTraining | None,
    ) -> _attrs.GPTraining | None:
        """Wait (at most :data:`_AWAIT_TRAINING_S`) until the GP training another worker
        announced, or any training newer than ``shared`` (the one published now), is
        published, and return it; ``None`` if none was."""
        deadline = time.monotonic() + _AWAIT_TRAINING_S
        while time.monotonic() < deadline:
            time.sleep(_AWAIT_POLL_S)
            system_attrs = study._storage.get_study_system_attrs(study._study_id)
            latest = self.latest(system_attrs, encoder, max_steps)
            newer = latest is not None and (shared is None or latest.n_trained > shared.n_trained)
            if newer or not self.elsewhere(system_attrs, encoder, max_steps):
                return latest
        return None

    def announce(
        self, study: Study, encoder: SpaceEncoder, max_steps: int, n_observations: int
    ) -> None:
        """Record in the study that this worker starts training on ``n_observations``."""
        started = _attrs.GPTrainingStarted(
            n_observations, time.time(), space_json(encoder), max_steps, self.token
        )
        study._storage.set_study_system_attr(
            study._study_id, _attrs.GP_TRAINING_STARTED, started.to_json()
        )

    def publish(
        self,
        study: Study,
        encoder: SpaceEncoder,
        max_steps: int,
        n_trained: int,
        surrogate: SurrogateModel,
        *,
        replace: bool,
    ) -> None:
        """Store the hyperparameters of a training for the other workers, unless a training
        on as many observations is already stored (and not found unusable: ``replace``)."""
        if not surrogate.shares_training:
            return
        system_attrs = study._storage.get_study_system_attrs(study._study_id)
        shared = self.latest(system_attrs, encoder, max_steps)
        if not replace and shared is not None and shared.n_trained >= n_trained:
            return
        record = _attrs.GPTraining(
            space_json(encoder), max_steps, n_trained, cast(_Sharing, surrogate).hyperparameters()
        )
        study._storage.set_study_system_attr(study._study_id, _attrs.GP_TRAINING, record.to_json())
