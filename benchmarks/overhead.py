"""Time per ``ask`` and per ``should_prune`` of FMS against Optuna's samplers and pruners.

Each study is pre-filled with N random trials of 20 steps on a synthetic learning-curve
objective (identical for all methods), then K more trials run with the method under test;
we time every ``study.ask()`` and every ``trial.should_prune()`` of those K trials.

    python benchmarks/overhead.py            # N = 10, 50, 200; K = 20
    python benchmarks/overhead.py --sizes 10 --measured 5
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import optuna
from optuna.distributions import FloatDistribution

import optuna_fms


STEPS = 20
SPACE = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1), "z": FloatDistribution(0, 1)}


def _curve(p: dict[str, float], step: int) -> float:
    final = math.exp(-4 * ((p["x"] - 0.3) ** 2 + (p["y"] - 0.7) ** 2)) + 0.1 * p["z"]
    return final * (1 - math.exp(-(0.15 + 0.35 * (1 - p["y"])) * (step + 1)))


def _prefill(study: optuna.Study, n: int, seed: int) -> None:
    rng = np.random.RandomState(seed)
    for _ in range(n):
        params = {k: float(rng.rand()) for k in SPACE}
        values = {s: _curve(params, s) for s in range(STEPS)}
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=SPACE,
                value=values[STEPS - 1],
                intermediate_values=values,
            )
        )


def _methods(seed: int):
    return {
        "FMSSampler + FMSPruner": lambda: (
            optuna_fms.FMSSampler(seed=seed),
            optuna_fms.FMSPruner(max_steps=STEPS),
        ),
        "TPESampler + MedianPruner": lambda: (
            optuna.samplers.TPESampler(seed=seed),
            optuna.pruners.MedianPruner(),
        ),
        "GPSampler (no pruner)": lambda: (
            optuna.samplers.GPSampler(seed=seed),
            optuna.pruners.NopPruner(),
        ),
    }


def _measure(factory, n: int, k: int, seed: int) -> tuple[list[float], list[float]]:
    sampler, pruner = factory()
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    _prefill(study, n, seed)
    asks, prunes = [], []
    for _ in range(k):
        t0 = time.perf_counter()
        trial = study.ask(SPACE)
        asks.append(time.perf_counter() - t0)
        state, value = optuna.trial.TrialState.COMPLETE, None
        for step in range(STEPS):
            value = _curve(trial.params, step)
            trial.report(value, step)
            t0 = time.perf_counter()
            pruned = trial.should_prune()
            prunes.append(time.perf_counter() - t0)
            if pruned:
                state = optuna.trial.TrialState.PRUNED
                break
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state)
    return asks, prunes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--measured", type=int, default=20, help="K: timed trials per cell")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"K = {args.measured} timed trials of {STEPS} steps after N pre-filled trials; ms.\n")
    print(
        "| method | N | ask median | ask p95 | ask first | should_prune median "
        "| should_prune p95 | ask median / TPE |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        tpe_median = None
        rows = []
        for name, factory in _methods(args.seed).items():
            asks, prunes = _measure(factory, n, args.measured, args.seed)
            a, p = np.array(asks) * 1e3, np.array(prunes) * 1e3
            if name.startswith("TPE"):
                tpe_median = float(np.median(a))
            rows.append((name, a, p))
        for name, a, p in rows:
            ratio = np.median(a) / tpe_median if tpe_median else float("nan")
            print(
                f"| {name} | {n} | {np.median(a):.1f} | {np.percentile(a, 95):.1f} | {a[0]:.1f} "
                f"| {np.median(p):.2f} | {np.percentile(p, 95):.2f} | {ratio:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
