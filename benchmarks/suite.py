"""The hub suite: every method on every hub, and defaults chosen leave one hub out.

``run`` replays each hub with each method and seed (:func:`optuna_fms.bench.run_many`, the
same replay as ``optuna-fms bench``) and saves the runs to ``<save-dir>/<hub>.json`` after
each hub. ``report`` prints, per hub, regret against epochs spent, Kendall's tau of the
forecast at 100 epochs beside the hub's best single-hyperparameter predictor,
recommendation regret (``optuna_fms.recommend`` beside the best last observed score) and
the allocation table (configurations started, share of one-epoch trials, share of epochs
on the hub's top 10 % configurations, epochs until the first full-budget trial); then the
suite summary and the leave-one-hub-out choice of the allocation rule:

- a candidate's *score* on a hub is the mean over the regret marks (50, 100, 200 and 500
  epochs, those within the budget) of log(regret / TPE + Hyperband's regret), each regret
  floored at 1e-3 (a regret at or below it is a tie: the hub's best configuration, up to
  noise, was found);
- for each hub, the rule with the lowest total score on the *other* hubs is the
  leave-one-out default, and its numbers on the held-out hub are reported.

    python benchmarks/suite.py run --hubs arch,zoo,tabular,crossing,zoo-noisy,finetune \\
        --methods fms-rungs,fms-one-step,fms-final,fms-random-horizon,tpe-hyperband,\\
tpe-median,random,gp --seeds 10 --workers 2 --save-dir benchmarks/results/suite
    python benchmarks/suite.py report --save-dir benchmarks/results/suite
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
import sys
import time

import numpy as np

from optuna_fms.bench._cli import resolve_hub
from optuna_fms.bench._hub import Hub
from optuna_fms.bench._methods import ALLOCATION_RULES
from optuna_fms.bench._metrics import at_budget
from optuna_fms.bench._metrics import best_reference
from optuna_fms.bench._metrics import fmt_mean_se
from optuna_fms.bench._metrics import mean_se
from optuna_fms.bench._metrics import reference_predictors
from optuna_fms.bench._replay import RunResult
from optuna_fms.bench._replay import run_many


MARKS = (50, 100, 200, 500)
BASELINE = "tpe-hyperband"
FLOOR = 1e-3
CANDIDATES = ("fms", *(f"fms-{rule}" for rule in ALLOCATION_RULES))
"""The methods a default is chosen among: the library's defaults (``fms``: 10 startup trials
and the ``one-step-promoting`` rule) and FMS with each allocation rule and 5 startup trials."""


def _budget(hub: Hub, budget: int) -> int:
    """``budget`` epochs, or 30 % of the hub's full grid cost if that is less."""
    return int(min(budget, 0.3 * hub.n_configs * hub.n_epochs))


def _run(args: argparse.Namespace) -> None:
    out = Path(args.save_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")
    for name in args.hubs.split(","):
        path = resolve_hub(name)
        hub = Hub.load(path)
        budget = _budget(hub, args.budget)
        file = out / f"{hub.name}.json"
        old = (
            [RunResult.from_dict(d) for d in json.loads(file.read_text())] if file.exists() else []
        )
        done = {(r.method, r.seed) for r in old if r.error is None}
        keep = [r for r in old if (r.method, r.seed) in done]
        t0 = time.perf_counter()
        new: list[RunResult] = []
        for m in methods:  # only the (method, seed) pairs not saved yet
            seeds = [s for s in range(args.first_seed, args.seeds) if (m, s) not in done]
            if seeds:
                new += run_many(path, [m], seeds, budget, workers=args.workers)
                file.write_text(json.dumps([r.to_dict() for r in keep + new]))
        print(
            f"# {hub.name}: {len(new)} runs in {time.perf_counter() - t0:.0f} s (budget {budget})",
            file=sys.stderr,
            flush=True,
        )


def _carry(curve: np.ndarray, b: int) -> float:
    """``curve`` after ``b`` epochs; a run that stopped earlier (its search exhausted a finite
    space) keeps its last value: the user has nothing more to spend."""
    return at_budget(curve, min(b, len(curve))) if len(curve) else math.nan


def _regret(r: RunResult, b: int) -> float:
    return _carry(r.regret, b)


def _same_seeds(base: list[RunResult], runs: list[RunResult]) -> list[RunResult]:
    """The baseline's runs on the seeds ``runs`` has: a candidate with 5 seeds is compared
    with the baseline's first 5, not with the mean of all its seeds."""
    seeds = {r.seed for r in runs}
    return [r for r in base if r.seed in seeds]


def _score(runs: list[RunResult], base: list[RunResult], marks: list[int]) -> float:
    base = _same_seeds(base, runs)
    logs = []
    for b in marks:
        mine = np.nanmean([_regret(r, b) for r in runs])
        theirs = np.nanmean([_regret(r, b) for r in base])
        logs.append(math.log(max(mine, FLOOR) / max(theirs, FLOOR)))
    return float(np.mean(logs))


def _targets(
    hub: str,
    method: str,
    runs: list[RunResult],
    base: list[RunResult],
    marks: list[int],
    single: float | None,
    base_name: str = BASELINE,
) -> str:
    """One row of the targets table: ``method`` against ``base`` on ``hub`` (same seeds)."""
    base = _same_seeds(base, runs)
    cells = [hub, method, base_name]
    for b in MARKS:
        if b not in marks:
            cells.append("-")
            continue
        mine = max(float(np.nanmean([_regret(r, b) for r in runs])), FLOOR)
        theirs = max(float(np.nanmean([_regret(r, b) for r in base])), FLOOR)
        cells.append(f"{mine / theirs:.2f}")
    tau = float(np.nanmean([r.tau.get(100, math.nan) for r in runs]))
    cells.append(f"{tau - single:+.2f}" if single is not None and np.isfinite(tau) else "-")
    ok = 0
    for b in marks:
        fc = np.nanmean(
            [r.best_final_score - r.forecast_recommended_final.get(b, math.nan) for r in runs]
        )
        lo = np.nanmean([_carry(r.recommendation_regret, b) for r in runs])
        ok += bool(np.isfinite(fc) and fc <= lo + 1e-9)
    cells.append(f"{ok}/{len(marks)}" if runs[0].forecast_recommended_final else "-")
    return "| " + " | ".join(cells) + " |"


def _alloc_cell(runs: list[RunResult], key: str, digits: int = 2) -> str:
    return fmt_mean_se([r.allocation.get(key, math.nan) for r in runs], digits=digits)


def _report(args: argparse.Namespace) -> None:
    results: dict[str, list[RunResult]] = {}
    for file in sorted(Path(args.save_dir).glob("*.json")):
        runs = [RunResult.from_dict(d) for d in json.loads(file.read_text())]
        runs = [r for r in runs if r.error is None and r.seed < args.seeds]
        if runs:
            results[runs[0].hub] = runs
    ratios: dict[str, dict[str, float]] = {}
    scores: dict[str, dict[str, float]] = {}
    targets: list[str] = []
    single: dict[str, float] = {}
    for hub_name, runs in results.items():
        budget = max(r.budget for r in runs)
        marks = [b for b in MARKS if b <= budget]
        methods = list(dict.fromkeys(r.method for r in runs))
        by = {m: [r for r in runs if r.method == m] for m in methods}
        try:
            taus = reference_predictors(Hub.load(resolve_hub(hub_name)))
            ref_name, ref_tau = best_reference(
                {k: v for k, v in taus.items() if "epoch" not in k and "after" not in k}
            )
            single[hub_name] = abs(ref_tau)
            ref = f"best single hyperparameter: {ref_name} {ref_tau:.2f}; " + ", ".join(
                f"{k} {v:.2f}" for k, v in taus.items()
            )
        except (SystemExit, FileNotFoundError, ValueError):
            ref = "hub not built here: reference predictors not computed"
        print(f"\n### {hub_name} (budget {budget} epochs)\n")
        print(f"Reference predictors (Kendall's tau with the final score): {ref}\n")
        head = ["method", "seeds"] + [f"regret @{b}" for b in marks] + ["tau @100 (all)"]
        head += [f"rec. regret @{b} (forecast / last observed)" for b in (100, budget)]
        head += ["started", "one-epoch trials", "epochs on top 10 %", "epochs to first full"]
        head += ["sampler + pruner s"]
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for m in methods:
            rs = by[m]
            cells = [m, str(len(rs))] + [fmt_mean_se([_regret(r, b) for r in rs]) for b in marks]
            cells.append(fmt_mean_se([r.tau.get(100, math.nan) for r in rs], digits=2))
            for b in (100, budget):
                fc = fmt_mean_se(
                    [
                        r.best_final_score - r.forecast_recommended_final.get(b, math.nan)
                        for r in rs
                    ]
                )
                lo = fmt_mean_se([_carry(r.recommendation_regret, b) for r in rs])
                cells.append(f"{fc} / {lo}")
            cells += [
                _alloc_cell(rs, "started", 0),
                _alloc_cell(rs, "one_epoch_share"),
                _alloc_cell(rs, "top_epoch_share"),
                _alloc_cell(rs, "epochs_to_full", 0),
                fmt_mean_se([r.sampler_seconds + r.pruner_seconds for r in rs], digits=1),
            ]
            print("| " + " | ".join(cells) + " |")
        if BASELINE in by:
            base = by[BASELINE]
            for m in methods:
                if m in CANDIDATES or m == "fms":
                    targets.append(_targets(hub_name, m, by[m], base, marks, single.get(hub_name)))
            for m in methods:
                # Without checkpoints a pause is a prune: the fair baseline is TPE + Median.
                plain = m.removesuffix("-no-checkpoints")
                if m != plain and (plain in CANDIDATES or plain == "fms") and "tpe-median" in by:
                    targets.append(
                        _targets(hub_name, m, by[m], by["tpe-median"], marks, None, "tpe-median")
                    )
            for m in methods:
                if m in CANDIDATES:
                    scores.setdefault(m, {})[hub_name] = _score(by[m], base, marks)
                    r200 = mean_se([_regret(r, min(200, budget)) for r in by[m]])[0]
                    same = _same_seeds(base, by[m])
                    b200 = mean_se([_regret(r, min(200, budget)) for r in same])[0]
                    ratios.setdefault(m, {})[hub_name] = max(r200, FLOOR) / max(b200, FLOOR)
    if not scores:
        return
    print(
        "\n### Targets: regret ratio to the baseline at each mark (floored at 1e-3; target <= 1.5 "
        "at 50, <= 1 after), tau @100 minus the best single hyperparameter's, marks where "
        "recommend() is at or below the best last observed score's regret\n"
    )
    print(
        "| hub | method | baseline | "
        + " | ".join(f"ratio @{b}" for b in MARKS)
        + " | tau @100 - single | recommend <= last observed |"
    )
    print("|" + "---|" * (len(MARKS) + 5))
    for row in targets:
        print(row)
    hubs = sorted(results)
    print("\n### Suite summary: regret ratio to TPE + Hyperband at 200 epochs (floored at 1e-3)\n")
    print("| method | " + " | ".join(hubs) + " | geometric mean | score (lower is better) |")
    print("|" + "---|" * (len(hubs) + 3))
    for m in scores:
        vals = [ratios[m].get(h, math.nan) for h in hubs]
        geo = math.exp(np.nanmean(np.log(vals)))
        total = sum(scores[m].get(h, math.nan) for h in hubs)
        print(f"| {m} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {geo:.2f} | {total:.2f} |")
    print("\n### Leave one hub out: the rule chosen on the other hubs, on the held-out one\n")
    print(
        "| held-out hub | chosen on the others | its regret ratio @200 there | best rule there |"
    )
    print("|---|---|---|---|")
    for h in hubs:
        others = {m: sum(v for k, v in s.items() if k != h) for m, s in scores.items() if h in s}
        if not others:
            continue
        chosen = min(others, key=lambda m: others[m])
        best_here = min((m for m in scores if h in scores[m]), key=lambda m: scores[m][h])
        print(f"| {h} | {chosen} | {ratios[chosen][h]:.2f} | {best_here} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--hubs", default="arch,zoo,tabular,crossing,zoo-noisy,finetune")
    run.add_argument(
        "--methods",
        default="fms-rungs,fms-one-step,fms-final,fms-random-horizon,tpe-hyperband,"
        "tpe-median,random,gp",
    )
    run.add_argument("--seeds", type=int, default=10, help="seeds first-seed .. seeds - 1")
    run.add_argument("--first-seed", type=int, default=0)
    run.add_argument("--budget", type=int, default=500)
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--save-dir", default="benchmarks/results/suite")
    report = sub.add_parser("report")
    report.add_argument("--save-dir", default="benchmarks/results/suite")
    report.add_argument(
        "--seeds",
        type=int,
        default=10**9,
        help="report only seeds below this (the leave-one-hub-out choice needs the same seeds "
        "for every candidate)",
    )
    args = parser.parse_args(argv)
    (_run if args.command == "run" else _report)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
