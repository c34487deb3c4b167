"""What DashboardReport adds to the wall time of an FMS run (the demo's objective).

Runs the demo study (small MLPs on scikit-learn's digits, FMSSampler + FMSPruner, checkpoints,
SQLite storage) with and without ``DashboardReport(every=10)``, same seed, interleaved, a few
repeats, and reports the median wall-time ratio and the time spent inside the callback
itself (the direct cost, which is not subject to run-to-run noise)::

    python benchmarks/dashboard_cost.py --epochs 200 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import optuna

import optuna_fms
from optuna_fms._dashboard import DashboardReport
from optuna_fms._demo import MAX_EPOCHS
from optuna_fms._demo import _load_digits
from optuna_fms._demo import make_objective


class _Timed:
    """Wraps a callback and adds up the time spent in it."""

    def __init__(self, callback: DashboardReport) -> None:
        self.callback = callback
        self.seconds = 0.0
        self.writes = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        start = time.perf_counter()
        self.callback(study, trial)
        self.seconds += time.perf_counter() - start

    def final(self, study: optuna.Study) -> None:
        start = time.perf_counter()
        self.callback.write(study)
        self.seconds += time.perf_counter() - start


def run(epochs: int, seed: int, report: bool, every: int) -> tuple[float, float, int]:
    """One demo run; returns (wall seconds, seconds inside the callback, trials)."""
    with tempfile.TemporaryDirectory(prefix="fms-dash-") as tmp:
        store = optuna.artifacts.FileSystemArtifactStore(tmp)
        study = optuna.create_study(
            storage=f"sqlite:///{tmp}/fms.db",
            direction="maximize",
            sampler=optuna_fms.FMSSampler(seed=seed, artifact_store=store),
            pruner=optuna_fms.FMSPruner(max_steps=MAX_EPOCHS, min_steps=2),
        )
        objective = make_objective(_load_digits(seed))
        callbacks: list = [optuna_fms.EpochBudget(epochs)]
        timed = _Timed(DashboardReport(every=every)) if report else None
        if timed is not None:
            callbacks.append(timed)
        start = time.perf_counter()
        study.optimize(objective, callbacks=callbacks)
        if timed is not None:
            timed.final(study)
        wall = time.perf_counter() - start
        return wall, timed.seconds if timed else 0.0, len(study.trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    without, with_, inside = [], [], []
    for r in range(args.repeats):
        for report in (False, True) if r % 2 == 0 else (True, False):
            wall, cost, n = run(args.epochs, args.seed, report, args.every)
            (with_ if report else without).append(wall)
            if report:
                inside.append(cost / wall)
            print(
                f"repeat {r} {'with' if report else 'without'} report: {wall:.1f} s, "
                f"{n} trials, {cost:.3f} s in the callback",
                flush=True,
            )
    ratio = statistics.median(with_) / statistics.median(without)
    print(
        f"\nmedian wall time: without {statistics.median(without):.1f} s, "
        f"with {statistics.median(with_):.1f} s, ratio {ratio:.3f}"
    )
    print(f"time inside DashboardReport: median {100 * statistics.median(inside):.2f}% of wall")


if __name__ == "__main__":
    main()
