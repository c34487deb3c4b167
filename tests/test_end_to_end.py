"""End to end: FMSSampler + FMSPruner against RandomSampler at equal epochs spent."""

from __future__ import annotations

import numpy as np
import optuna
from synthetic import MAX_STEPS
from synthetic import best_so_far
from synthetic import make_objective

from optuna_fms import FMSPruner
from optuna_fms import FMSSampler


BUDGET = 200  # epochs: ten full-budget trials
SEEDS = range(5)


def _regret(sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner, seed: int):
    epochs: list[int] = []

    def stop(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if len(epochs) >= BUDGET:
            study.stop()

    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(make_objective(epochs, noise=0.01, seed=seed), n_trials=500, callbacks=[stop])
    return 1.0 - best_so_far(study)


def test_fms_beats_random_search_at_equal_epochs() -> None:
    fms, rnd = [], []
    for seed in SEEDS:
        fms.append(
            _regret(
                FMSSampler(seed=seed, n_startup_trials=5, n_candidates=256),
                FMSPruner(max_steps=MAX_STEPS, n_startup_trials=5),
                seed,
            )
        )
        rnd.append(
            _regret(optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner(), seed)
        )
    diff = np.array(rnd) - np.array(fms)
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    # FMS must win on average by more than two standard errors of the paired difference.
    assert diff.mean() > 2 * se, (fms, rnd)
    assert np.mean(fms) < 0.5 * np.mean(rnd), (fms, rnd)
