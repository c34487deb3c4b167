"""Warm start from a study on one hub (task) to a study on another, against a cold start.

For every seed, an *earlier* study runs ``fms-gp`` on the source hub for ``--source-budget``
epochs (its own seed; in memory). Then three studies replay the target hub with the same seed:
``--method`` (default ``fms-gp``) cold, the same method warm-started from the earlier study
(``FMSSampler(warm_start=[earlier study])``), and TPE + Hyperband. Seeds are independent: seed
``s``'s warm start reads seed ``s``'s earlier study only. Prints Kendall's tau of the forecasts
(all and unseen configurations) at the tau budgets, and regret and recommendation regret at
``--at`` epochs, mean ± s.e. over seeds.

    python benchmarks/warm_start.py --source zoo-mnist --target zoo --seeds 10
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import json
import multiprocessing
import os
import tempfile
import time
from typing import Any

import numpy as np

from optuna_fms.bench._metrics import fmt_mean_se


def _run(
    job: tuple[str, str, int, int, int, str, dict[str, Any], bool],
) -> tuple[int, dict[str, dict[str, Any]]]:
    source_path, target_path, source_budget, budget, seed, method, gp, final_only = job
    import optuna
    import torch

    from optuna_fms._warm_start import WarmStart
    from optuna_fms.bench import Hub
    from optuna_fms.bench._methods import get_method
    from optuna_fms.bench._replay import run_replay

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    source, target = Hub.load(source_path), Hub.load(target_path)
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fms-warm-") as tmp:
        storage = optuna.storages.InMemoryStorage()
        t0 = time.perf_counter()
        run_replay(source, "fms-gp", seed, source_budget, workdir=f"{tmp}/src", storage=storage)
        # The replay's study is the storage's first (FMS adds a companion claims study).
        first = min(storage.get_all_studies(), key=lambda s: s._study_id)
        earlier_study = optuna.load_study(study_name=first.study_name, storage=storage)
        out["earlier"] = {
            "seconds": time.perf_counter() - t0,
            "n_trials": len(earlier_study.trials),
        }
        for label in (method, "tpe-hyperband"):
            out[label] = run_replay(
                target, label, seed, budget, workdir=f"{tmp}/{label}"
            ).to_dict()
        store = optuna.artifacts.FileSystemArtifactStore(tmp)
        sampler, pruner = get_method(method).make(target, seed, store)
        # The method's own sampler, warm-started (what FMSSampler(warm_start=...) builds).
        sampler.engine._warm = WarmStart([earlier_study], seed=seed, final_only=final_only)
        sampler.engine._surrogate_kwargs.update(gp)  # ``--gp``: GP settings to try
        out[f"{method}-warm"] = run_replay(
            target, f"{method}-warm", seed, budget, sampler_pruner=(sampler, pruner), workdir=tmp
        ).to_dict()
    return seed, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="zoo-mnist")
    p.add_argument("--target", default="zoo")
    p.add_argument("--hub-dir", default="~/.cache/optuna-fms/hubs")
    p.add_argument("--source-budget", type=int, default=300)
    p.add_argument("--budget", type=int, default=200)
    p.add_argument("--at", type=int, nargs="+", default=[50, 100, 200])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--method", default="fms-gp", help="an FMS method of optuna-fms bench")
    p.add_argument("--gp", default="{}", help="JSON: GP keyword arguments of the warm run")
    p.add_argument("--final-only", action="store_true", help="WarmStart(final_only=True)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--save", help="write the runs as JSON")
    args = p.parse_args()
    base = os.path.expanduser(args.hub_dir)
    jobs = [
        (
            f"{base}/{args.source}",
            f"{base}/{args.target}",
            args.source_budget,
            args.budget,
            s,
            args.method,
            json.loads(args.gp),
            args.final_only,
        )
        for s in range(args.seeds)
    ]
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        results = dict(pool.map(_run, jobs))
    wall = time.perf_counter() - t0
    if args.save:
        with open(args.save, "w") as f:
            json.dump({str(k): v for k, v in results.items()}, f)
    labels = (args.method, f"{args.method}-warm", "tpe-hyperband")
    print(
        f"{args.source} ({args.source_budget} epochs of fms-gp) -> {args.target} "
        f"({args.method}), "
        f"{args.seeds} seeds, mean ± s.e. ({wall:.0f} s)\n"
    )
    at = [b for b in args.at if b <= args.budget]
    head = ["tau all", "tau unseen"]
    print("| method | epochs | " + " | ".join(head) + " | regret | rec. regret |")
    print("|---|---|" + "---|" * (len(head) + 2))
    for label in labels:
        runs = [r[label] for r in results.values()]
        for b in at:
            taus = [
                fmt_mean_se([float(r[k].get(str(b), r[k].get(b, np.nan))) for r in runs])
                if k in runs[0]
                else ""
                for k in ("tau", "tau_unseen")
            ]
            regret = fmt_mean_se(
                [r["best_final_score"] - max(r["best_observed"][:b]) for r in runs]
            )
            rec = fmt_mean_se(
                [r["best_final_score"] - r["recommended_final"][b - 1] for r in runs]
            )
            print(f"| {label} | {b} | " + " | ".join(taus) + f" | {regret} | {rec} |")


if __name__ == "__main__":
    main()
