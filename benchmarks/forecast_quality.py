"""Forecast quality of the surrogates on the same study states, offline (no optimiser loop).

For each hub and seed, a study is filled with real learning curves from the hub under a fixed
allocation of epochs, then every surrogate forecasts every configuration's final score through
the public ``optuna_fms.forecast`` (the path the benchmark and users take). Kendall's tau over
all configurations, over the observed ones and over the others, beside the reference
predictors measured on the same configurations: the best single hyperparameter (over all) and
the observed configurations' own last observed value (over the observed ones).

Allocations (each ~100 epochs on a 30-epoch hub):
- ``sh``: successive halving: 27 random configurations for 1 epoch, the best 9 to 3, the best
  3 to 9, the best one to the end;
- ``start``: 5 random configurations for 20 epochs each (a random startup);
- ``dyhpo``: 40 random configurations for 1 epoch each, then the best 10 to 6 epochs.

    python benchmarks/forecast_quality.py --hub zoo --seeds 5
    python benchmarks/forecast_quality.py --hub arch --seeds 5 --models gp deep-kernel
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import optuna

import optuna_fms
from optuna_fms.bench import Hub
from optuna_fms.bench._methods import start_weights_fn
from optuna_fms.bench._metrics import kendall_tau


def _allocation(hub: Hub, scheme: str, rng: np.random.RandomState) -> dict[int, int]:
    """Config id -> epochs observed."""
    n = hub.n_epochs
    order = rng.permutation(hub.n_configs)
    if scheme == "start":
        return {int(c): min(20, n) for c in order[:5]}
    if scheme == "dyhpo":
        alloc = {int(c): 1 for c in order[:40]}
        best = sorted(alloc, key=lambda c: -hub.scores[c, 0])[:10]
        alloc.update({c: min(6, n) for c in best})
        return alloc
    if scheme == "sh":
        alloc = {int(c): 1 for c in order[:27]}
        for keep, epochs in ((9, 3), (3, 9), (1, n)):
            best = sorted(alloc, key=lambda c: -hub.scores[c, alloc[c] - 1])[:keep]
            alloc.update({c: min(epochs, n) for c in best})
        return alloc
    raise ValueError(scheme)


def _study(hub: Hub, alloc: dict[int, int]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for c, epochs in alloc.items():
        values = {e: float(hub.scores[c, e]) for e in range(epochs)}
        done = epochs == hub.n_epochs
        study.add_trial(
            optuna.trial.create_trial(
                params=hub.configs[c],
                distributions=hub.search_space,
                state=optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.PRUNED,
                value=values[epochs - 1] if done else None,
                intermediate_values=values,
            )
        )
    return study


def _sampler(
    hub: Hub, model: str, weights: str | None, seed: int, options: dict[str, Any]
) -> optuna_fms.FMSSampler:
    """An FMSSampler whose surrogate forecasts the study (not used to sample), with model
    settings the sampler does not take (``options``) set on its engine."""
    kwargs: dict[str, Any] = {}
    if weights is not None:
        kwargs = dict(weights=weights, start_weights=start_weights_fn(hub))
    sampler = optuna_fms.FMSSampler(
        seed=seed,
        max_steps=hub.n_epochs,
        surrogate=model,  # type: ignore[arg-type]
        warn_independent_sampling=False,
        **kwargs,
    )
    sampler.engine._surrogate_kwargs = dict(options)
    return sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", default="zoo")
    parser.add_argument("--hub-dir", default="~/.cache/optuna-fms/hubs")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--schemes", nargs="+", default=["start", "sh", "dyhpo"])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["gp", "gp+stats", "deep-kernel"],
        help="model[+weights][:json options], e.g. 'gp:{\"min_noise\": 1e-3}'",
    )
    args = parser.parse_args()
    hub = Hub.load(f"{args.hub_dir}/{args.hub}")
    final = hub.final_scores()
    best_param = max(
        hub.ordered, key=lambda p: abs(kendall_tau([c[p] for c in hub.configs], final))
    )
    param_values = np.array([c[best_param] for c in hub.configs], dtype=float)
    param_sign = np.sign(kendall_tau(param_values, final))
    rows: dict[tuple[str, str], list[list[float]]] = {}
    for scheme in args.schemes:
        for seed in range(args.seeds):
            alloc = _allocation(hub, scheme, np.random.RandomState(seed))
            seen = np.zeros(hub.n_configs, dtype=bool)
            seen[list(alloc)] = True
            last = np.full(hub.n_configs, np.nan)
            for c, e in alloc.items():
                last[c] = hub.scores[c, e - 1]
            ref = [
                param_sign * kendall_tau(param_values, final),
                kendall_tau(last[seen], final[seen]),
            ]
            rows.setdefault((scheme, f"{best_param} (ref)"), []).append(
                [ref[0], np.nan, np.nan, 0.0]
            )
            rows.setdefault((scheme, "last observed (ref)"), []).append(
                [np.nan, ref[1], np.nan, 0.0]
            )
            for name in args.models:
                spec, _, options = name.partition(":")
                model, _, weights = spec.partition("+")
                sampler = _sampler(
                    hub, model, weights or None, seed, json.loads(options) if options else {}
                )
                study = _study(hub, alloc)
                t0 = time.perf_counter()
                try:
                    forecasts = optuna_fms.forecast(study, hub.configs, sampler=sampler)
                    pred = np.array([f.mean for f in forecasts])
                    taus = [
                        kendall_tau(pred, final),
                        kendall_tau(pred[seen], final[seen]),
                        kendall_tau(pred[~seen], final[~seen]),
                    ]
                except optuna_fms.SurrogateFitError:
                    taus = [np.nan] * 3
                rows.setdefault((scheme, name), []).append([*taus, time.perf_counter() - t0])
    print(f"hub {hub.name}: {hub.n_configs} configurations x {hub.n_epochs} epochs; ")
    print(f"{args.seeds} seeds, mean ± s.e.; best single hyperparameter: {best_param}\n")
    print("| allocation | predictor | tau all | tau observed | tau unseen | fit+forecast s |")
    print("|---|---|---|---|---|---|")
    for (scheme, name), vals in rows.items():
        a = np.array(vals, dtype=float)
        cells = []
        for j in range(4):
            col = a[:, j]
            col = col[np.isfinite(col)]
            if len(col) == 0:
                cells.append("")
                continue
            se = col.std(ddof=1) / np.sqrt(len(col)) if len(col) > 1 else 0.0
            cells.append(f"{col.mean():.2f} ± {se:.2f}" if j < 3 else f"{col.mean():.1f}")
        print(f"| {scheme} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
