"""What Kendall's tau a forecast can reach from a fixed number of epochs, whatever the search.

The suite's tau target compares the default's forecast after 100 epochs with the best single
hyperparameter (chosen with the whole grid in hand). This script asks how much the 100 epochs
can tell at all: for each hub and each allocation ``N configurations x K epochs`` (``N * K =
--budget``, the configurations drawn uniformly at random, a space-filling design no search
optimising regret would collect), it adds their first ``K`` epochs to a study as finished
trials, fits the library's surrogate (:func:`optuna_fms.forecast`, ``FMSSampler()`` defaults)
and takes Kendall's tau of its forecast of every configuration's final score. Beside it, on the
same hub: the best single hyperparameter, the best score after a few epochs of *every*
configuration (many times the budget), and the default's own tau at 100 epochs (saved suite
runs, mean over their seeds).

    python benchmarks/tau_ceiling.py --hubs crossing,zoo --budget 100 --seeds 5

Prints one markdown table per hub: allocation, tau mean ± s.e. over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import warnings

import numpy as np
import optuna
from optuna.trial import TrialState
from optuna.trial import create_trial

import optuna_fms
from optuna_fms.bench import Hub
from optuna_fms.bench._cli import resolve_hub
from optuna_fms.bench._metrics import best_reference
from optuna_fms.bench._metrics import fmt_mean_se
from optuna_fms.bench._metrics import kendall_tau
from optuna_fms.bench._metrics import reference_predictors
from optuna_fms.bench._replay import RunResult
from optuna_fms.bench._replay import predict_final_scores


def _tau(hub: Hub, n: int, k: int, seed: int) -> float:
    """Tau of the default surrogate fitted on ``n`` random configurations' first ``k`` epochs."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(hub.n_configs, size=min(n, hub.n_configs), replace=False)
    sampler = optuna_fms.FMSSampler(seed=seed, warn_independent_sampling=False)
    study = optuna.create_study(direction=hub.direction, sampler=sampler)
    full = k >= hub.n_epochs
    for c in ids:
        values = {e: float(hub.values[c, e]) for e in range(k)}
        study.add_trial(
            create_trial(
                params=hub.configs[c],
                distributions=hub.search_space,
                value=values[k - 1] if full else None,
                intermediate_values=values,
                state=TrialState.COMPLETE if full else TrialState.PRUNED,
            )
        )
    predicted = predict_final_scores(study, hub)
    return math.nan if predicted is None else kendall_tau(predicted, hub.final_scores())


def _default_tau(hub_name: str, results: Path, method: str) -> str:
    file = results / f"{hub_name}.json"
    if not file.exists():
        return "n/a"
    runs = [RunResult.from_dict(d) for d in json.loads(file.read_text())]
    taus = [r.tau.get(100, math.nan) for r in runs if r.method == method and r.error is None]
    return f"{fmt_mean_se(taus, 2)} ({len(taus)} seeds)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hubs", default="arch,crossing,tabular,zoo,zoo-noisy")
    parser.add_argument("--budget", type=int, default=100, help="epochs N * K")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--results", default="benchmarks/results/suite")
    parser.add_argument("--method", default="fms-one-step-promoting")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for name in args.hubs.split(","):
        hub = Hub.load(resolve_hub(name))
        refs = reference_predictors(hub)
        single = best_reference({k: v for k, v in refs.items() if "epoch" not in k})
        early = best_reference({k: v for k, v in refs.items() if "epoch" in k})
        print(f"\n### {hub.name} ({hub.n_configs} configurations x {hub.n_epochs} epochs)\n")
        print(f"- best single hyperparameter: {single[0]} {single[1]:.2f}")
        print(f"- every configuration's {early[0]}: {early[1]:.2f}")
        own = _default_tau(name, Path(args.results), args.method)
        print(f"- {args.method}'s forecast at 100 epochs: {own}\n")
        print(f"| allocation (random configurations x epochs, {args.budget} epochs) | tau (all) |")
        print("|---|---|")
        steps = sorted({1, 3, 10, hub.n_epochs // 2, hub.n_epochs})
        for k in (k for k in steps if k <= args.budget):
            n = args.budget // k
            taus = [_tau(hub, n, k, seed) for seed in range(args.seeds)]
            print(f"| {n} x {k} | {fmt_mean_se(taus, 2)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
