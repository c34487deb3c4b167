"""Tests of samplers/fms, loaded the way OptunaHub loads it.

Optuna's reusable sampler tests (``optuna.testing.pytest_samplers``) run against the loaded
``FMSSampler``, and a short study checks that the loaded sampler and pruner pause trials and
continue them from their checkpoints. The registry root is found from this file's location,
so the tests run from any working directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import BasicSamplerTestCase
from optuna.testing.pytest_samplers import parametrize_suggest_method
from optuna.testing.pytest_samplers import RelativeSamplerTestCase
from optuna.testing.pytest_samplers import SingleOnlySamplerTestCase
from optuna.trial import Trial
from optuna.trial import TrialState
import optunahub
import pytest
import torch


REGISTRY_ROOT = Path(__file__).resolve().parents[3]
fms = optunahub.load_local_module(package="samplers/fms", registry_root=str(REGISTRY_ROOT))


# FMSSampler models a single objective: the multi-objective tests of the suite
# (MultiObjectiveSamplerTestCase) do not apply, and SingleOnlySamplerTestCase checks instead
# that a multi-objective study is refused with a ValueError.
class TestFMSSampler(BasicSamplerTestCase, RelativeSamplerTestCase, SingleOnlySamplerTestCase):
    @pytest.fixture
    def sampler(self) -> Callable[[], BaseSampler]:
        # Few startup trials and candidates, so that the suite's short studies reach the
        # surrogate and stay fast.
        return lambda: fms.FMSSampler(n_startup_trials=4, n_candidates=32)

    @parametrize_suggest_method("x")
    def test_single_parameter_objective(
        self, sampler: Callable[[], BaseSampler], suggest_method_x: Callable[[Trial], float]
    ) -> None:
        # The suite's version expects 10 trials whatever the space. FMSSampler runs each
        # configuration of a finite space once and then stops the study (it would only repeat
        # a configuration), so the categorical of 3 values gives 3 distinct trials; every
        # other space here has at least 10 values and gives 10 distinct trials.
        study = optuna.create_study(sampler=sampler())
        study.optimize(suggest_method_x, n_trials=10)
        xs = [t.params["x"] for t in study.trials]
        assert all(t.state == TrialState.COMPLETE for t in study.trials)
        if isinstance(study.trials[0].distributions["x"], CategoricalDistribution):
            assert sorted(xs) == [0, 1, 2]
        else:
            assert len(xs) == 10
        assert len(set(xs)) == len(xs)


def test_sampler_and_pruner_pause_and_continue(tmp_path: Path) -> None:
    steps = 6
    # (first step, the model's bias after resume) of each trial.
    starts: list[tuple[int, float]] = []

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        model = torch.nn.Linear(1, 1)
        torch.nn.init.zeros_(model.bias)
        start = fms.resume(trial, model)
        starts.append((start, model.bias.item()))
        value = 0.0
        for step in range(start, steps):
            with torch.no_grad():
                model.bias.add_(1.0)  # The bias counts the steps trained.
            value = (1.0 - (x - 0.7) ** 2) * (1.0 - 0.5**step)
            fms.save_checkpoint(trial, model, step=step)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study = optuna.create_study(
        direction="maximize",
        sampler=fms.FMSSampler(
            seed=0,
            n_startup_trials=3,
            n_candidates=32,
            artifact_store=optuna.artifacts.FileSystemArtifactStore(str(tmp_path)),
        ),
        pruner=fms.FMSPruner(max_steps=steps, n_startup_trials=3),
    )
    study.optimize(objective, callbacks=[fms.EpochBudget(20)])

    paused = [t for t in study.trials if "fms:paused" in t.user_attrs]
    continued = [t for t in study.trials if "fms:continues" in t.user_attrs]
    assert paused and all(t.state == TrialState.PRUNED for t in paused)
    assert continued
    # A continuation starts after its parent's pause, from the parent's weights there.
    assert sorted(start for start, _ in starts if start > 0) == sorted(
        t.user_attrs["fms:continues"]["step"] + 1 for t in continued
    )
    assert all(bias == start for start, bias in starts)
    assert fms.epochs_spent(study.trials) >= 20
    assert set(fms.recommend(study).params) == {"x"}
