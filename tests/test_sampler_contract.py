"""Optuna's reusable sampler contract suite, run against FMSSampler."""

from __future__ import annotations

from collections.abc import Callable

from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase
from optuna.testing.pytest_samplers import RelativeSamplerTestCase
from optuna.testing.pytest_samplers import SingleOnlySamplerTestCase
import pytest

from optuna_fms import FMSSampler


class TestFMSSampler(BasicSamplerTestCase, RelativeSamplerTestCase, SingleOnlySamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        # A small startup and short fits so that the surrogate path runs inside the suite.
        return lambda: FMSSampler(
            n_startup_trials=4, n_candidates=32, n_scratch_epochs=15, n_warm_epochs=5
        )
