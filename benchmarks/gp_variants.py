"""Variants of the FMS sampler on a hub, replayed online (the sampler's own allocation).

The same replay as ``optuna-fms bench`` (:func:`optuna_fms.bench.run_replay`), for sampler
settings that are not registered methods: each variant is ``label=JSON`` with keyword
arguments of :class:`optuna_fms.FMSSampler` (e.g. ``gp_trend``; ``"start_weights": true``
for the hub's start weights; ``"gp": {...}`` for the GP surrogate's own keyword arguments).
The pruner is the ``fms-gp`` method's, with ``"pruner": {...}`` keyword arguments of
:class:`optuna_fms.FMSPruner`. Prints Kendall's tau (all, observed beside their last
observed score, unseen) and regret at each tau budget and at the end, and sampler + pruner
seconds,
mean ± s.e. over seeds.

    python benchmarks/gp_variants.py --hub zoo --budget 100 --seeds 6 \\
        'constant={"gp_trend": "constant"}' 'linear={"gp_trend": "linear"}' 'default='
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import json
import multiprocessing
import os
import tempfile
from typing import Any

import numpy as np


def _run(job: tuple[str, int, int, str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    hub_path, budget, seed, label, options = job
    import optuna
    import torch

    import optuna_fms
    from optuna_fms.bench import Hub
    from optuna_fms.bench._replay import run_replay

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    hub = Hub.load(hub_path)
    with tempfile.TemporaryDirectory(prefix="fms-variant-") as tmp:
        store = optuna.artifacts.FileSystemArtifactStore(tmp)
        kwargs: dict[str, Any] = dict(
            seed=seed, artifact_store=store, warn_independent_sampling=False
        )
        options = dict(options)
        if options.pop("start_weights", False):
            # JSON cannot carry a function: ``"start_weights": true`` means the hub's.
            from optuna_fms.bench._methods import start_weights_fn

            options["start_weights"] = start_weights_fn(hub)
        # ``"gp": {...}``: keyword arguments of the GP surrogate that FMSSampler does not
        # expose (e.g. ``min_noise``), for experiments.
        gp = options.pop("gp", {})
        # ``"pruner": {...}``: keyword arguments of FMSPruner (e.g. ``tolerance``).
        pruner_kwargs = options.pop("pruner", {})
        sampler = optuna_fms.FMSSampler(**{**kwargs, **options})
        sampler.engine._surrogate_kwargs.update(gp)
        pruner = optuna_fms.FMSPruner(max_steps=hub.n_epochs, seed=seed, **pruner_kwargs)
        result = run_replay(
            hub, label, seed, budget, sampler_pruner=(sampler, pruner), workdir=tmp
        )
    return label, result.to_dict()


def _at(run: dict[str, Any], key: str, budget: int) -> float:
    values = run[key]
    return float(values.get(str(budget), values.get(budget, float("nan"))))


def cell(values: list[float]) -> str:
    """``mean ± standard error`` of the finite values (empty if none)."""
    a = np.array([v for v in values if v == v], dtype=float)
    if len(a) == 0:
        return ""
    se = a.std(ddof=1) / np.sqrt(len(a)) if len(a) > 1 else 0.0
    digits = 0 if abs(a.mean()) >= 10 else 2
    return f"{a.mean():.{digits}f} ± {se:.{digits}f}"


def parser(description: str, seeds: int) -> argparse.ArgumentParser:
    """The command line of a variants script: ``label=JSON`` variants and the hub to run."""
    out = argparse.ArgumentParser(description=description)
    out.add_argument("variants", nargs="+", help="label=JSON keyword arguments")
    out.add_argument("--hub", default="zoo")
    out.add_argument("--hub-dir", default="~/.cache/optuna-fms/hubs")
    out.add_argument("--budget", type=int, default=100)
    out.add_argument("--seeds", type=int, default=seeds)
    out.add_argument("--workers", type=int, default=2)
    return out


def parse_variants(specs: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``label=JSON`` -> ``(label, keyword arguments)``."""
    out = []
    for spec in specs:
        label, _, options = spec.partition("=")
        out.append((label, json.loads(options) if options else {}))
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0], seeds=6).parse_args()
    hub_path = os.path.expanduser(f"{args.hub_dir}/{args.hub}")
    variants = parse_variants(args.variants)
    jobs = [
        (hub_path, args.budget, seed, label, options)
        for seed in range(args.seeds)
        for label, options in variants
    ]
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        results = list(pool.map(_run, jobs))
    by_label: dict[str, list[dict[str, Any]]] = {}
    for label, r in results:
        by_label.setdefault(label, []).append(r)
    print(f"hub {args.hub}, {args.budget} epochs, {args.seeds} seeds, mean ± s.e.\n")
    print(
        "| variant | epochs | tau all | tau observed | their last score | tau unseen"
        " | configurations observed |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, runs in by_label.items():
        for b in sorted({int(k) for r in runs for k in r["tau"]}):
            keys = ("tau", "tau_observed", "tau_last_observed", "tau_unseen", "n_observed")
            cells = [cell([_at(r, key, b) for r in runs]) for key in keys]
            print(f"| {label} | {b} | " + " | ".join(cells) + " |")
    budgets = sorted({int(k) for runs in by_label.values() for r in runs for k in r["tau"]})
    budgets = sorted(set(budgets) | {args.budget})
    print(
        "\n| variant | " + " | ".join(f"regret @{b}" for b in budgets) + " | sampler + pruner s |"
    )
    print("|---|" + "---|" * len(budgets) + "---|")
    for label, runs in by_label.items():
        regrets = [
            cell([r["best_final_score"] - max(r["best_observed"][:b]) for r in runs])
            for b in budgets
        ]
        seconds = [r["sampler_seconds"] + r["pruner_seconds"] for r in runs]
        print(f"| {label} | " + " | ".join(regrets) + f" | {cell(seconds)} |")


if __name__ == "__main__":
    main()
