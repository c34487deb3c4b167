"""``optuna-fms bench``: replay a hub with several methods; regret, Kendall's tau, overhead."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import json
import math
from pathlib import Path
import sys
import time

import numpy as np

from optuna_fms.bench._methods import METHODS
from optuna_fms.bench._metrics import REGRET_BUDGETS
from optuna_fms.bench._metrics import TAU_BUDGETS
from optuna_fms.bench._metrics import at_budget
from optuna_fms.bench._metrics import best_reference
from optuna_fms.bench._metrics import fmt_mean_se
from optuna_fms.bench._metrics import mean_curve
from optuna_fms.bench._metrics import mean_se
from optuna_fms.bench._metrics import reference_predictors
from optuna_fms.bench._replay import RunResult
from optuna_fms.bench._replay import run_many


NAMED_HUBS = ("zoo", "zoo-mnist", "zoo-noisy", "arch", "tabular", "crossing", "finetune", "tiny")


def resolve_hub(spec: str) -> Path:
    """A hub directory from a path or a name (``./hubs/<name>``, then the build cache;
    the tiny hub is built there when missing)."""
    from optuna_fms.bench._build import DEFAULT_OUT
    from optuna_fms.bench._hub import INDEX_FILE

    path = Path(spec).expanduser()
    if (path / INDEX_FILE).exists():
        return path
    if spec in NAMED_HUBS:
        for base in (Path("hubs"), Path(DEFAULT_OUT).expanduser()):
            if (base / spec / INDEX_FILE).exists():
                return base / spec
        if spec == "tiny":
            from optuna_fms.bench._build import build_hub

            return build_hub("tiny", Path(DEFAULT_OUT).expanduser(), workers=1, progress=False)
    raise SystemExit(
        f"No hub at {spec!r}: build one with `optuna-fms build-hub --hub {spec}` "
        f"(into {DEFAULT_OUT}) or pass the hub directory."
    )


def _fmt_seconds(values: Sequence[float]) -> str:
    return fmt_mean_se(values, digits=1) if values else "n/a"


def _status(results: Sequence[RunResult], m: str) -> tuple[list[RunResult], str | None]:
    """The successful runs of method ``m`` and, when there is none, why."""
    method = METHODS.get(m)
    reason = method.unavailable() if method is not None else None
    runs = [r for r in results if r.method == m and r.error is None]
    failed = [r for r in results if r.method == m and r.error is not None]
    if runs:
        return runs, None
    return runs, "not yet" if reason else ("failed" if failed else "not run")


def _seeds_cell(results: Sequence[RunResult], m: str, runs: Sequence[RunResult]) -> str:
    failed = sum(1 for r in results if r.method == m and r.error is not None)
    return str(len(runs)) + (f" ({failed} failed)" if failed else "")


def _curve_cell(runs: Sequence[RunResult], curve: str, b: int) -> str:
    if all(r.budget < b for r in runs):
        return "—"  # the method was run with a smaller budget
    return fmt_mean_se([at_budget(getattr(r, curve), b) for r in runs])


def _map_cell(runs: Sequence[RunResult], key: str, b: int, digits: int = 2) -> str:
    if not any(b in getattr(r, key) for r in runs):
        return "n/a"
    vals = [getattr(r, key).get(b, math.nan) for r in runs]
    cell = fmt_mean_se(vals, digits=digits)
    n = mean_se(vals)[2]
    if n < len(runs):
        cell += f" ({len(runs) - n} n/a)"
    return cell


def _markdown(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table(
    results: Sequence[RunResult],
    methods: Sequence[str],
    budget: int,
    *,
    regret_budgets: Sequence[int] = REGRET_BUDGETS,
) -> str:
    """Markdown table of regret against epochs spent and cost: mean ± standard error over
    seeds, one row per method. Regret is in the hub's higher-is-better units (accuracy, or
    validation loss on a minimised hub, where it is ``best observed loss - best final loss``)."""
    rb = [b for b in regret_budgets if b <= budget]
    head = (
        ["method", "seeds", "budget"]
        + [f"regret @{b}" for b in rb]
        + ["sampler s", "pruner s", "wall s", "trials (continued)", "configs"]
    )
    rows = []
    for m in methods:
        runs, why = _status(results, m)
        if why is not None:
            rows.append([m, "0"] + [why] * (len(head) - 2))
            continue
        cells = [m, _seeds_cell(results, m, runs)]
        cells.append("/".join(str(b) for b in sorted({r.budget for r in runs})))
        cells += [_curve_cell(runs, "regret", b) for b in rb]
        cells.append(_fmt_seconds([r.sampler_seconds for r in runs]))
        cells.append(_fmt_seconds([r.pruner_seconds for r in runs]))
        cells.append(_fmt_seconds([r.wall_seconds for r in runs]))
        trials = np.mean([r.n_trials for r in runs])
        cont = np.mean([r.n_continued for r in runs])
        cells.append(f"{trials:.0f} ({cont:.0f})")
        cells.append(f"{np.mean([r.n_configs for r in runs]):.0f}")
        rows.append(cells)
    return _markdown(head, rows)


def recommendation_table(
    results: Sequence[RunResult],
    methods: Sequence[str],
    budget: int,
    *,
    regret_budgets: Sequence[int] = REGRET_BUDGETS,
) -> str:
    """Markdown table of incumbent regret, recommendation regret and (for methods with a
    surrogate) the regret of the forecast's recommendation, at each budget."""
    rb = [b for b in regret_budgets if b <= budget]
    head = (
        ["method"]
        + [f"inc. regret @{b}" for b in rb]
        + [f"rec. regret @{b}" for b in rb]
        + [f"forecast rec. regret @{b}" for b in rb]
    )
    rows = []
    for m in methods:
        runs, why = _status(results, m)
        if why is not None:
            rows.append([m] + [why] * (len(head) - 1))
            continue
        cells = [m]
        cells += [_curve_cell(runs, "incumbent_regret", b) for b in rb]
        cells += [_curve_cell(runs, "recommendation_regret", b) for b in rb]
        for b in rb:
            vals = [
                r.best_final_score - r.forecast_recommended_final[b]
                if b in r.forecast_recommended_final
                else math.nan
                for r in runs
            ]
            has = any(b in r.forecast_recommended_final for r in runs)
            cells.append(fmt_mean_se(vals) if has else "n/a")
        rows.append(cells)
    return _markdown(head, rows)


def tau_table(
    results: Sequence[RunResult],
    methods: Sequence[str],
    budget: int,
    *,
    tau_budgets: Sequence[int] = TAU_BUDGETS,
) -> str:
    """Markdown table of Kendall's tau of each surrogate's forecast of the final score, over
    all configurations, those observed and those not, at each budget. Methods without a
    surrogate are left out."""
    tb = [b for b in tau_budgets if b <= budget]
    head = ["method", "configurations"] + [f"tau @{b}" for b in tb]
    rows = []
    for m in methods:
        runs, why = _status(results, m)
        if why is not None or not any(r.tau for r in runs):
            continue
        for key, label in (
            ("tau", "all"),
            ("tau_observed", "observed"),
            ("tau_last_observed", "observed: their last observed score (reference)"),
            ("tau_unseen", "unseen"),
        ):
            if key == "tau_last_observed" and not any(r.tau_last_observed for r in runs):
                continue
            cells = [_map_cell(runs, key, b) for b in tb]
            if key == "tau_observed":  # how many configurations the split holds, when recorded
                for i, b in enumerate(tb):
                    n = [r.n_observed[b] for r in runs if b in r.n_observed]
                    if n:
                        cells[i] += f" (n = {np.mean(n):.0f})"
            rows.append([m, label] + cells)
    return _markdown(head, rows)


def reference_table(hub_path: str | Path) -> str:
    """Markdown table of the reference predictors' Kendall's tau on a hub (computed from the
    hub alone, see :func:`optuna_fms.bench._metrics.reference_predictors`)."""
    from optuna_fms.bench._hub import Hub

    taus = reference_predictors(Hub.load(hub_path))
    best, _ = best_reference(taus)
    rows = [[name + (" (best)" if name == best else ""), f"{t:.3f}"] for name, t in taus.items()]
    return _markdown(["reference predictor", "tau (all configurations)"], rows)


def plot(results: Sequence[RunResult], methods: Sequence[str], hub: str, path: Path) -> Path:
    """Regret, incumbent regret and recommendation regret against epochs spent, mean ± s.e.
    over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "regret": "regret (best final score - best observed score)",
        "incumbent_regret": "incumbent regret (config with the best observed score)",
        "recommendation_regret": "recommendation regret (best last observed score)",
    }
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for ax, (curve, title) in zip(axes, panels.items()):
        for m in methods:
            runs = [r for r in results if r.method == m and r.error is None and r.best_observed]
            if not runs:
                continue
            curves = [getattr(r, curve) for r in runs]
            mean, se = mean_curve(curves)
            e = np.arange(1, len(mean) + 1)
            (line,) = ax.plot(e, mean, label=f"{m} ({len(runs)})", lw=1.6)
            ax.fill_between(e, mean - se, mean + se, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=0.005, linscale=0.5)
        ax.set_xlim(10, None)
        ax.set_xlabel("epochs spent")
        ax.axhline(0.0, color="grey", lw=0.6)
        ax.grid(alpha=0.3, which="both")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel(f"{hub} hub: regret (higher-is-better score)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``optuna-fms bench``."""
    parser = argparse.ArgumentParser(
        prog="optuna-fms bench",
        description="Replay a benchmark hub with several HPO methods (real Optuna studies) and "
        "report regret against epochs spent, Kendall's tau of the surrogate and the time "
        "spent in samplers and pruners. See docs/benchmarks.md.",
    )
    parser.add_argument(
        "--hub", default="tiny", help=f"{', '.join(NAMED_HUBS)} or a hub directory"
    )
    parser.add_argument(
        "--methods",
        default="random,tpe-hyperband,tpe-median,gp,dyhpo,fms-stats,fms-gmn",
        help=f"comma-separated, from: {', '.join(METHODS)}",
    )
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=500, help="epochs spent per run")
    parser.add_argument("--workers", type=int, default=1, help="processes, one thread each")
    parser.add_argument("--out", default=None, help="write <out>/images/bench_<hub>_regret.png")
    parser.add_argument("--save", default=None, help="write every run's result to this JSON")
    parser.add_argument(
        "--load",
        action="append",
        default=[],
        help="read results saved with --save (repeatable) and add them to the table; with "
        "--seeds 0 nothing is run",
    )
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")

    results: list[RunResult] = []
    for f in args.load:
        results.extend(RunResult.from_dict(d) for d in json.loads(Path(f).read_text()))
    hub_name = results[0].hub if results else args.hub
    if len({r.hub for r in results}) > 1:
        parser.error(f"--load files mix hubs {sorted({r.hub for r in results})}")

    hub_path: Path | None = None
    runnable = [m for m in methods if METHODS[m].unavailable() is None]
    for m in methods:
        reason = METHODS[m].unavailable()
        if reason:
            print(f"# {m}: not yet ({reason})", file=sys.stderr)
    if args.seeds > 0 and runnable:
        hub_path = resolve_hub(args.hub)
        from optuna_fms.bench._hub import Hub

        hub_name = Hub.load(hub_path).name
        if results and results[0].hub != hub_name:
            parser.error(f"--load results are for hub {results[0].hub!r}, not {hub_name!r}")
        t0 = time.perf_counter()
        done: list[RunResult] = []

        def progress(r: RunResult) -> None:
            status = "FAILED" if r.error else f"regret@end {r.regret[-1]:+.4f}"
            print(
                f"# {r.method:<14} seed {r.seed:<3} {status}  wall {r.wall_seconds:6.1f}s  "
                f"[{time.perf_counter() - t0:6.0f}s]",
                file=sys.stderr,
                flush=True,
            )
            if r.error:
                print(r.error, file=sys.stderr)
            done.append(r)
            if args.save:  # after every run, so an interrupted benchmark keeps what it did
                Path(args.save).write_text(json.dumps([x.to_dict() for x in results + done]))

        seeds = range(args.first_seed, args.first_seed + args.seeds)
        new = run_many(
            hub_path, runnable, seeds, args.budget, workers=args.workers, progress=progress
        )
        results.extend(new)
        if args.save:
            Path(args.save).write_text(json.dumps([r.to_dict() for r in results]))
        print(f"# {len(new)} runs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    budget = max((r.budget for r in results), default=args.budget)
    shown = methods + [m for m in dict.fromkeys(r.method for r in results) if m not in methods]
    print(f"{hub_name} hub, budget {budget} epochs (mean ± s.e. over seeds)\n")
    print(table(results, shown, budget))
    print()
    print(recommendation_table(results, shown, budget))
    print()
    print(tau_table(results, shown, budget))
    if hub_path is None and hub_name in NAMED_HUBS:
        try:
            hub_path = resolve_hub(hub_name)
        except SystemExit:
            hub_path = None
    if hub_path is not None:
        print()
        print(reference_table(hub_path))
    if args.out:
        png = plot(results, shown, hub_name, Path(args.out) / "images" / f"bench_{hub_name}.png")
        print(f"\n# plot: {png}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0
