"""Regret at equal epochs on the synthetic learning-curve objective of the test suite.

The same objective as ``tests/test_end_to_end.py`` (``tests/synthetic.py``): two float
parameters, saturating curves whose speed varies, 20 steps, a budget of 200 epochs (ten
full-budget trials). Regret = 1 - best true final score among configurations touched.

    python benchmarks/synthetic_regret.py --seeds 10
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys
import time

import numpy as np
import optuna

import optuna_fms


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import MAX_STEPS  # noqa: E402
from synthetic import best_so_far  # noqa: E402
from synthetic import make_objective  # noqa: E402


def _methods(seed: int):
    return {
        "RandomSampler (full budget)": (
            optuna.samplers.RandomSampler(seed=seed),
            optuna.pruners.NopPruner(),
        ),
        "TPESampler + MedianPruner": (
            optuna.samplers.TPESampler(seed=seed),
            optuna.pruners.MedianPruner(),
        ),
        "FMSSampler + FMSPruner": (
            optuna_fms.FMSSampler(seed=seed, n_startup_trials=5),
            optuna_fms.FMSPruner(max_steps=MAX_STEPS, n_startup_trials=5),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=200)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    results: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        for name, (sampler, pruner) in _methods(seed).items():
            epochs: list[int] = []

            def stop(
                study: optuna.Study, trial: optuna.trial.FrozenTrial, epochs: list = epochs
            ) -> None:
                if len(epochs) >= args.budget:
                    study.stop()

            study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
            t0 = time.perf_counter()
            study.optimize(
                make_objective(epochs, noise=0.01, seed=seed), n_trials=10_000, callbacks=[stop]
            )
            seconds.setdefault(name, []).append(time.perf_counter() - t0)
            results.setdefault(name, []).append(1.0 - best_so_far(study))
    print(f"{args.seeds} seeds, {args.budget} epochs each; mean ± standard error\n")
    print("| method | regret | wins vs random | wall s per run |")
    print("|---|---|---|---|")
    rnd = np.array(results["RandomSampler (full budget)"])
    for name, regrets in results.items():
        r = np.array(regrets)
        wins = int((r < rnd).sum())
        se = r.std(ddof=1) / np.sqrt(len(r))
        print(
            f"| {name} | {r.mean():.4f} ± {se:.4f} | {wins}/{len(r)} "
            f"| {np.mean(seconds[name]):.1f} |"
        )


if __name__ == "__main__":
    main()
