"""The fit schedule: when the surrogate is trained, conditioned, or kept as it is.

:meth:`FitSchedule.refresh` reads a study's trials into curves and training rows and
brings the engine's fit of the study up to date, training the surrogate's hyperparameters
only when the rules below call for it (and sharing GP trainings with other workers through
:class:`~optuna_fms._engine._shared_training.SharedTraining`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from optuna.study import Study

from optuna_fms._engine._curves import collect_curves
from optuna_fms._engine._curves import count_observations
from optuna_fms._engine._records import Fit
from optuna_fms._engine._records import StudyState
from optuna_fms._engine._shared_training import SharedTraining
from optuna_fms._engine._shared_training import adopt
from optuna_fms._surrogate import FittedModel
from optuna_fms._surrogate import RowLayout
from optuna_fms._surrogate import SpaceEncoder
from optuna_fms._surrogate import SurrogateFitError
from optuna_fms._surrogate import build_training_set


if TYPE_CHECKING:
    from optuna_fms._engine._engine import Engine


_logger = logging.getLogger("optuna_fms")
_LAZY_GROWTH = 0.5
"""Every refresh trains again once the observations grew by this fraction since the last
training (the sampler's own ``retrain_growth`` applies to its own trials' observations)."""


class FitSchedule:
    """Keeps an engine's fit of each study current, training as rarely as the rules allow.

    Parameters
    ----------
    engine:
        The engine whose studies, model and weight inputs are fitted.
    rng:
        The engine's random generator (row subsampling).
    max_train_rows:
        Cap on the training rows.
    retrain_growth:
        The sampler trains again for its own trials' new observations once the data grew
        by this fraction since the last training.

    Examples
    --------
    >>> import optuna
    >>> from optuna_fms._engine import Engine
    >>> study = optuna.create_study()
    >>> engine = Engine(seed=0, max_steps=2)
    >>> engine.schedule.refresh(study, eager=True) is None  # no curves yet
    True
    """

    def __init__(
        self,
        engine: Engine,
        rng: np.random.RandomState,
        *,
        max_train_rows: int,
        retrain_growth: float,
    ) -> None:
        self._engine = engine
        self._rng = rng
        self._max_train_rows = max_train_rows
        self._retrain_growth = retrain_growth
        self.shared = SharedTraining()
        """This worker's side of the shared-training protocol."""
        self._warned_failure = False

    def refresh(self, study: Study, *, eager: bool) -> Fit | None:
        """Return a fit that is current enough; ``None`` while the surrogate cannot be fitted.

        The GP's hyperparameters (and the deep kernel's feature extractor) are *trained* when
        this process's own trials (:meth:`Engine.own_trial
        <optuna_fms._engine.Engine.own_trial>`) brought new observations and the data grew by
        ``retrain_growth`` since the last training, and by any caller once the data grew by
        half (and at the first fit or when the search space or budget changed); in between,
        the trained model is *conditioned* on all current data, an exact GP update that costs
        one Cholesky factorisation. Other callers than the sampler (``eager=False``: the
        pruner) train only by the second rule, so that ``should_prune`` stays cheap. The deep
        kernel reads trials' newest values through their curves, so for it the pruner even
        keeps the last fit until then; the ``"gp"`` model reads observations only as training
        rows, so it is conditioned on them.

        Workers share their GP trainings through the study (:data:`_attrs.GP_TRAINING
        <optuna_fms._attrs.GP_TRAINING>`): after training, a process stores the
        hyperparameters and the number of observations they were fitted on; a process whose
        last training is older (or that has none yet) conditions a GP with those
        hyperparameters on its data instead of training, and trains from them when it must.
        Other workers' observations alone never make a process train below the half-growth
        rule: with one worker as with eight, the study trains about once per own new
        observation. A missing, foreign (other search space or budget) or malformed record is
        ignored.
        """
        engine = self._engine
        state = engine.state(study)
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        max_steps = engine.max_steps(study, trials)
        n_obs = count_observations(trials)
        space = engine.search_space(study)
        own = count_observations([t for t in trials if t._trial_id in state.own])
        fit = state.fit
        same = (
            fit is not None
            and fit.encoder.search_space == dict(sorted(space.items()))
            and fit.max_steps == max_steps
        )
        previous = fit if same else None
        if previous is not None and self._current_enough(previous, eager, own, n_obs):
            # The same observations, but attributes may be newer (a pause recorded after
            # the report the fit read): decisions read the trials as they are.
            previous.trials.update(
                (t._trial_id, t) for t in trials if t._trial_id in previous.trials
            )
            return previous
        encoder = SpaceEncoder(space)
        if engine.warm is not None:
            engine.warm.fit(space)
        # Only a model that reads the curve (the deep kernel) gets it; for the GP the rows stay
        # narrow whatever the budget (a report at step 10**9 must not allocate rows that wide).
        curve_len = max(0, max_steps - 1) if engine.model.reads_curves else 0
        layout = RowLayout(encoder.dim, curve_len, encoder.groups, encoder.names, max_steps)
        curves = collect_curves(state, trials, encoder, max_steps, engine.sign(study))
        if len(curves) < 2:
            return None
        by_key = {t._trial_id: t for t in trials}
        row_weights = None
        inputs = engine.weight_inputs
        if inputs.bank is not None:
            row_weights = lambda c, b: inputs.index(c, b, by_key[c.key])  # noqa: E731

        data = build_training_set(
            curves, layout, max_steps, self._max_train_rows, self._rng, row_weights
        )
        if state.surrogate is None:
            state.surrogate = engine.new_surrogate()
        model = FittedModel(layout, max_steps, data, state.surrogate)
        try:
            n_trained, trained = self._train_or_condition(
                study, model, encoder, n_obs, previous, eager, own
            )
        except SurrogateFitError as err:
            self.failed(state, err)
            return None
        if not trained and previous is not None:
            # Conditioning is not training: the own observations that make the sampler
            # train again are counted from the last training (or adopted one).
            own = previous.n_own
        state.fit = Fit(
            encoder=encoder,
            model=model,
            curves=curves,
            trials={c.key: by_key[c.key] for c in curves},
            n_observations=n_obs,
            n_trained=n_trained,
            n_own=own,
        )
        return state.fit

    def _current_enough(self, fit: Fit, eager: bool, own: int, n_obs: int) -> bool:
        """Whether ``fit`` (of the same space and budget) serves as it is: no new
        observations and no training due for the sampler's own trials, or (a model that
        reads curves, for the pruner) data grown by less than half."""
        stale_ok = not eager and self._engine.model.reads_curves
        # The pruner may have conditioned on every observation already; the sampler
        # still trains for its own trials' new ones.
        own_due = self._own_training_due(eager, own, fit, n_obs, fit.n_trained)
        current = n_obs == fit.n_observations and not own_due
        return current or (stale_ok and n_obs < 1.5 * fit.n_observations)

    def _train_or_condition(
        self,
        study: Study,
        model: FittedModel,
        encoder: SpaceEncoder,
        n_obs: int,
        previous: Fit | None,
        eager: bool,
        own: int,
    ) -> tuple[int, bool]:
        """Train ``model``'s surrogate, adopt another worker's training or condition it on
        ``model.data``; return the observations it was trained on and whether it was trained
        (or a training adopted) now. Raises :class:`SurrogateFitError` if training fails."""
        surrogate, layout, data, max_steps = (
            model.surrogate,
            model.layout,
            model.data,
            model.max_steps,
        )
        n_trained = previous.n_trained if previous is not None else None
        shared_training = self.shared
        shares = self._engine.model.shares_training
        shared_attrs = study._storage.get_study_system_attrs(study._study_id) if shares else {}
        shared = shared_training.latest(shared_attrs, encoder, max_steps) if shares else None
        busy = shared_training.elsewhere(shared_attrs, encoder, max_steps)
        # Another worker's newer training: condition on its hyperparameters instead
        # of training (a new worker does not start cold).
        adopted, rejected = adopt(surrogate, layout, data.rows, data.y, shared, n_trained, n_obs)
        if not adopted and n_trained is None and busy:
            # No model yet, and another worker is training one: wait for it rather
            # than train the same GP from scratch (as costly in time, and in CPU).
            shared = shared_training.await_published(study, encoder, max_steps, shared)
            adopted, rejected = adopt(surrogate, layout, data.rows, data.y, shared, None, n_obs)
        if adopted and shared is not None:
            n_trained = shared.n_trained
        if n_trained is None:
            retrain = True
        else:
            # The sampler trains for new observations of this process's own trials
            # only; other workers' observations are conditioned on (they train for
            # theirs, and share it), so the trainings per trial do not grow with the
            # workers. Everyone trains once the data grew by half.
            retrain = n_obs >= (1 + _LAZY_GROWTH) * n_trained or self._own_training_due(
                eager, own, previous, n_obs, n_trained
            )
        if retrain and n_trained is not None and busy:
            # Another worker is training on newer data: keep the current model
            # (conditioned) until it publishes, instead of the same training twice.
            retrain = False
        if not retrain and not adopted:
            try:
                surrogate.condition(data.rows, data.y)
            except SurrogateFitError:
                retrain = True
        if retrain:
            if shares:
                shared_training.announce(study, encoder, max_steps, n_obs)
            surrogate.fit(layout, data.rows, data.y)
            n_trained = n_obs
            shared_training.publish(study, encoder, max_steps, n_obs, surrogate, replace=rejected)
        assert n_trained is not None
        return n_trained, retrain or adopted

    def _own_training_due(
        self, eager: bool, own: int, previous: Fit | None, n_obs: int, n_trained: int
    ) -> bool:
        """Whether the sampler (``eager``) trains for its own trials' observations: ``own``
        grew since the training of ``previous`` and the data by ``retrain_growth`` since
        ``n_trained`` observations."""
        return (
            eager
            and previous is not None
            and own > previous.n_own
            and n_obs >= (1 + self._retrain_growth) * n_trained
        )

    def failed(self, state: StudyState, err: Exception) -> None:
        """Forget the fit (the next refresh fits again) and warn once per engine."""
        state.fit = None
        if not self._warned_failure:
            self._warned_failure = True
            _logger.warning(
                "FMS surrogate failed (%s); sampling at random and not pruning until a later "
                "fit succeeds.",
                err,
            )
