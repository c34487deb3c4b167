"""optuna_fms/_engine/: trials read into curves, the fit schedule, the shared-training
protocol and the three decisions (run this first when changing the engine; the protocol
between several workers is in test_shared_training.py)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.search_space import IntersectionSearchSpace
from optuna.trial import TrialState
import pytest
from synthetic import add_curve
from synthetic import make_objective

import optuna_fms
from optuna_fms import FMSPruner
from optuna_fms import FMSSampler
from optuna_fms import _attrs
from optuna_fms._engine import Decision
from optuna_fms._engine import Engine
from optuna_fms._engine import SharedTraining
from optuna_fms._engine import StepForecast
from optuna_fms._engine import count_observations
from optuna_fms._engine import longest_curves
from optuna_fms._engine._curves import collect_curves
from optuna_fms._engine._curves import unfinished
from optuna_fms._engine._records import StudyState
from optuna_fms._surrogate import GPSurrogate
from optuna_fms._surrogate import SpaceEncoder
from optuna_fms._surrogate._surrogate import Surrogate
from optuna_fms._surrogate.allocation import OneStepEI


SPACE = {"x": FloatDistribution(0, 1)}


def _add(study: optuna.Study, x: float, curve: list[float], **kwargs) -> None:
    """A trial of ``x`` that reported ``curve`` (complete unless ``state`` says otherwise)."""
    add_curve(study, {"x": x}, SPACE, curve, **kwargs)


def _studied(n: int, steps: int = 3, direction: str = "maximize") -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for i in range(n):
        x = (i + 0.5) / n
        _add(study, x, [x * (s + 1) / steps for s in range(steps)])
    return study


def _n_fits(engine: Engine, study: optuna.Study) -> int:
    surrogate = engine.surrogate(study)
    assert surrogate is not None
    return surrogate._n_fits


# ---------------------------------------------------------------------- curves
def test_curves_are_read_in_higher_is_better_units_within_the_budget() -> None:
    study = optuna.create_study(direction="minimize")
    _add(study, 0.2, [0.5, 0.4, 0.3, 0.2, 0.1])  # steps 3 and 4 lie beyond the budget
    _add(study, 0.4, [], value=0.7)  # a complete trial without reports: one point
    _add(study, 0.6, [0.9], state=TrialState.FAIL)
    study.enqueue_trial({"x": 0.8})  # WAITING
    trials = study.get_trials(deepcopy=False)
    state = StudyState(study._storage, IntersectionSearchSpace())
    curves = collect_curves(state, trials, SpaceEncoder(SPACE), 3, -1.0)
    assert [c.params["x"] for c in curves] == [0.2, 0.4]
    np.testing.assert_allclose(curves[0].values, [-0.5, -0.4, -0.3])
    assert curves[1].steps.tolist() == [2] and curves[1].values.tolist() == [-0.7]
    assert count_observations(trials) == 5 + 1 + 1
    # A finished trial's curve is kept, until its checkpoint records change.
    again = collect_curves(state, trials, SpaceEncoder(SPACE), 3, -1.0)
    assert again[0] is curves[0]
    changed = copy.deepcopy(trials[0])
    changed.set_user_attr(_attrs.CHECKPOINTS, {"1": "artifact"})
    third = collect_curves(state, [changed, *trials[1:]], SpaceEncoder(SPACE), 3, -1.0)
    assert third[0] is not curves[0] and third[0].checkpoints
    assert third[1] is curves[1]


def test_the_longest_curve_of_each_configuration_and_what_can_only_restart() -> None:
    study = optuna.create_study(direction="maximize")
    _add(study, 0.3, [0.1, 0.2], state=TrialState.PRUNED)
    _add(study, 0.3, [0.1, 0.2, 0.3], state=TrialState.PRUNED)
    _add(study, 0.7, [0.5], state=TrialState.PRUNED)
    _add(study, 0.9, [0.5, 0.6, 0.7, 0.8])
    engine = Engine(seed=0, max_steps=4)
    fit = engine.refresh(study, eager=True)
    assert fit is not None
    longest = {c.params["x"]: len(c.steps) for c in longest_curves(fit)}
    assert longest == {0.3: 3, 0.7: 1, 0.9: 4}
    # Pruned short of the budget without a checkpoint, none complete: only from scratch.
    assert unfinished(study.get_trials(), 4) == {(("x", 0.3),), (("x", 0.7),)}


# ---------------------------------------------------------------------- the fit schedule
def test_the_pruner_conditions_and_the_sampler_trains_for_its_own_trials() -> None:
    study = _studied(6, steps=4)  # 24 observations
    engine = Engine(seed=0, max_steps=4)
    fit = engine.refresh(study, eager=True)
    assert fit is not None and fit.n_trained == fit.n_observations == 24
    assert _n_fits(engine, study) == 1
    _add(study, 0.05, [0.1, 0.2, 0.3, 0.4])  # another worker's trial
    for eager in (False, True):  # conditioned on, by the pruner and by the sampler
        fit = engine.refresh(study, eager=eager)
        assert fit is not None and (fit.n_observations, fit.n_trained) == (28, 24)
    assert _n_fits(engine, study) == 1
    _add(study, 0.95, [0.1, 0.2, 0.3, 0.4])
    engine.own_trial(study, study.trials[-1]._trial_id)  # this process's trial
    fit = engine.refresh(study, eager=False)
    assert fit is not None and fit.n_trained == 24  # the pruner does not train for it
    fit = engine.refresh(study, eager=True)
    assert fit is not None and fit.n_trained == 32 and _n_fits(engine, study) == 2


def test_retrain_growth_conditions_between_trainings() -> None:
    every = _fms()
    every_study = _optimize(every, n_trials=14)
    sparse = _fms(retrain_growth=0.5)
    study = _optimize(sparse, n_trials=14)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert 0 < _n_fits(sparse.engine, study) < _n_fits(every.engine, every_study)
    fit = sparse.engine.current_fit(study)
    assert fit is not None and fit.n_trained <= fit.n_observations


def test_the_deep_kernels_rows_do_not_grow_with_max_steps() -> None:
    # The same 12 curves of 20 steps; only the full budget differs.
    shapes = {}
    for max_steps in (20, 200, 20_000, 2 * 10**9):
        study = optuna.create_study(direction="maximize")
        for i in range(12):
            x = (i + 0.5) / 12
            _add(study, x, [x * (s + 1) / 20 for s in range(20)])
        engine = Engine(seed=0, max_steps=max_steps, surrogate="deep-kernel")
        engine._surrogate_kwargs.update(n_scratch_epochs=5)
        fit = engine.refresh(study, eager=True)
        assert fit is not None
        surrogate = fit.model.surrogate
        assert isinstance(surrogate, Surrogate) and surrogate._model is not None
        (train_x,) = surrogate._model.train_inputs
        assert train_x.shape == fit.model.data.rows.shape
        shapes[max_steps] = (fit.model.data.rows.shape, fit.model.layout.curve_len)
    n_rows = {rows for (rows, _), _ in shapes.values()}
    assert len(n_rows) == 1  # as many rows whatever the budget
    # Up to MAX_CURVE_COLUMNS curve columns (the latest values): as wide for every budget
    # beyond it.
    assert shapes[20][1] == 19


def _fms(**kwargs) -> FMSSampler:
    return FMSSampler(seed=0, n_startup_trials=4, n_candidates=64, **kwargs)


def _optimize(sampler: FMSSampler, n_trials: int) -> optuna.Study:
    pruner = FMSPruner(max_steps=20, n_startup_trials=4, pause_startup=False)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(make_objective([]), n_trials=n_trials)
    return study


# ---------------------------------------------------------------------- shared trainings
def test_a_training_is_published_announced_and_read_back_by_its_space_and_budget() -> None:
    study = _studied(4)
    engine = Engine(seed=0, max_steps=3)
    fit = engine.refresh(study, eager=True)
    assert fit is not None
    attrs = study._storage.get_study_system_attrs(study._study_id)
    other = SharedTraining()
    published = other.latest(attrs, fit.encoder, 3)
    assert published is not None and published.n_trained == fit.n_trained
    assert other.latest(attrs, fit.encoder, 4) is None  # another budget
    assert other.latest(attrs, SpaceEncoder({"y": SPACE["x"]}), 3) is None  # another space
    mine = engine.schedule.shared
    mine.announce(study, fit.encoder, 3, n_observations=10**6)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert other.elsewhere(attrs, fit.encoder, 3) and not mine.elsewhere(attrs, fit.encoder, 3)
    assert pickle.loads(pickle.dumps(mine)).token != mine.token  # a copy is another worker
    # A new worker adopts the published hyperparameters instead of training.
    late = Engine(seed=1, max_steps=3)
    late_fit = late.refresh(study, eager=True)
    assert late_fit is not None and late_fit.n_trained == fit.n_trained
    assert _n_fits(late, study) == 0


# ---------------------------------------------------------------------- decisions
def test_next_trial_and_fresh_params_decide_on_a_fit_brought_up_to_date() -> None:
    engine = Engine(seed=0, max_steps=3)
    empty = optuna.create_study(direction="maximize")
    assert engine.next_trial(empty) is None  # no fit yet
    study = _studied(4)
    decision = engine.next_trial(study)
    assert isinstance(decision, Decision) and decision.claim is None
    assert decision.fresh is not None and 0 <= decision.fresh["x"] <= 1
    params = engine.fresh_params(study, SPACE)
    assert params is not None and set(params) == {"x"}
    assert engine.fresh_params(study, {"y": SPACE["x"]}) is None  # not the fitted space


def test_keeps_running_gives_the_pruners_decision_and_forecast() -> None:
    study = _studied(5, steps=6)
    engine = Engine(seed=0, max_steps=6)
    trial = study.ask(SPACE)
    for step in range(2):
        trial.report(trial.params["x"] * (step + 1) / 6, step)
    frozen = study._storage.get_trial(trial._trial_id)
    forecast = engine.keeps_running(study, frozen, 1)
    assert isinstance(forecast, StepForecast) and isinstance(forecast.keeps, bool)
    assert np.isfinite([forecast.mean, forecast.std]).all() and forecast.std > 0
    outside = copy.deepcopy(frozen)
    outside.params = {"x": 2.0}
    assert engine.keeps_running(study, outside, 1) is None


class _Fixed:
    """An allocation rule whose pruner decision is fixed (the sampler's is OneStepEI's)."""

    name = "fixed"
    cacheable = True

    def __init__(self, keeps: bool) -> None:
        self.keeps, self.asked = keeps, 0

    def choose(self, view, fresh, paused):
        return OneStepEI().choose(view, fresh, paused)

    def alternative(self, view, fresh, paused) -> float:
        return 0.0

    def keeps_running(self, view, running, alternative, tolerance) -> bool:
        self.asked += 1
        return self.keeps


def test_a_pause_that_would_be_final_is_decided_by_the_stops_alone() -> None:
    """Without a checkpoint at its step a pause is a stop: the pruner's stop rule decides,
    not the allocation rule (which weighs a pause that can be taken up again)."""
    study = _studied(5, steps=6)
    rule = _Fixed(keeps=True)
    engine = Engine(seed=0, max_steps=6, allocation=rule)
    trial = study.ask(SPACE)
    for step in range(2):
        trial.report(trial.params["x"] * (step + 1) / 6, step)
    frozen = study._storage.get_trial(trial._trial_id)  # no checkpoint: not continuable
    stop = engine.keeps_running(study, frozen, 1, stops=_Fixed(keeps=False))
    assert stop is not None and stop.keeps is False and rule.asked == 0
    keep = engine.keeps_running(study, frozen, 1, stops=_Fixed(keeps=True))
    assert keep is not None and keep.keeps is True and rule.asked == 0
    # With its checkpoint saved the pause could be continued: the allocation rule decides.
    study._storage.set_trial_user_attr(trial._trial_id, _attrs.CHECKPOINTS, {"1": "a"})
    frozen = study._storage.get_trial(trial._trial_id)
    kept = engine.keeps_running(study, frozen, 1, stops=_Fixed(keeps=False))
    assert kept is not None and kept.keeps is True and rule.asked == 1


def test_exhausted_once_every_configuration_of_a_finite_space_ran() -> None:
    space = {"c": CategoricalDistribution(["a", "b"])}
    study = optuna.create_study()
    engine = Engine(seed=0, max_steps=2)
    for c in ("a", "b"):
        assert not engine.exhausted(study)
        trial = optuna.trial.create_trial(
            params={"c": c}, distributions=space, value=0.5, intermediate_values={0: 1, 1: 0.5}
        )
        study.add_trial(trial)
    assert engine.exhausted(study)
    assert not Engine(seed=0, max_steps=2, rerun=True).exhausted(study)
    # A random configuration is one not tried yet while one is left.
    three = {"c": CategoricalDistribution(["a", "b", "z"])}
    assert engine.random_params(three, [{"c": "a"}, {"c": "b"}]) == {"c": "z"}


# ---------------------------------------------------------------------- models
class _ConstantMeanGP(GPSurrogate):
    """A third surrogate: the GP with a constant prior mean, taking no sampler keyword."""

    name = "constant-mean-gp"
    sampler_options: dict[str, str] = {}

    def __init__(self, **kwargs) -> None:
        super().__init__(trend="constant", **kwargs)


def test_a_third_surrogate_is_one_class_passed_to_the_sampler() -> None:
    study = optuna.create_study(
        direction="maximize",
        sampler=FMSSampler(seed=0, n_startup_trials=3, surrogate=_ConstantMeanGP),
        pruner=FMSPruner(max_steps=4, n_startup_trials=3),
    )
    study.optimize(lambda t: _report(t, t.suggest_float("x", 0, 1)), n_trials=6)
    assert isinstance(study.sampler.engine.surrogate(study), _ConstantMeanGP)
    diagnostics = optuna_fms.diagnose(study)
    assert diagnostics.surrogate == "constant-mean-gp" and diagnostics.trend == {}
    with pytest.raises(ValueError, match="surrogate must be one of"):
        FMSSampler(surrogate="constant-mean-gp")  # type: ignore[arg-type]


def _report(trial: optuna.Trial, x: float) -> float:
    for step in range(4):
        trial.report(x * (step + 1) / 4, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return x
