"""Optuna's reusable sampler contract suite, run against FMSSampler."""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase
from optuna.testing.pytest_samplers import RelativeSamplerTestCase
from optuna.testing.pytest_samplers import SingleOnlySamplerTestCase
from optuna.testing.pytest_samplers import parametrize_suggest_method
from optuna.trial import Trial
from optuna.trial import TrialState
import pytest

from optuna_fms import FMSSampler


class TestFMSSampler(BasicSamplerTestCase, RelativeSamplerTestCase, SingleOnlySamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        # A small startup and short fits so that the surrogate path runs inside the suite.
        return lambda: FMSSampler(
            n_startup_trials=4, n_candidates=32, n_scratch_epochs=15, n_warm_epochs=5
        )

    @parametrize_suggest_method("x")
    def test_single_parameter_objective(
        self, sampler: Callable[[], BaseSampler], suggest_method_x: Callable[[Trial], float]
    ) -> None:
        # Optuna's version asks for 10 trials of any space. FMSSampler, like GridSampler,
        # stops a finite space once every configuration has run (the categorical of 3 values
        # here): it must then have run each exactly once, and every other space 10 times.
        study = optuna.create_study(sampler=sampler())
        study.optimize(suggest_method_x, n_trials=10)
        xs = [t.params["x"] for t in study.trials]
        assert all(t.state == TrialState.COMPLETE for t in study.trials)
        if isinstance(study.trials[0].distributions["x"], CategoricalDistribution):
            assert sorted(xs) == [0, 1, 2]
        else:
            assert len(xs) == 10
        assert len(set(xs)) == len(xs)
