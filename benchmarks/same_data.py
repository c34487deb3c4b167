"""GP variants forecasting from the same online study: the model without its allocation.

``gp_variants.py`` replays each variant online, so a variant changes both the model and the
data the sampler collects. This script separates the two: for each seed it replays the
library's default (``fms-gp``: FMSSampler + FMSPruner) on a hub until ``--budget`` epochs
are spent, keeps that study in SQLite, and then lets every variant fit on exactly that study
and forecast every configuration's final score through :func:`optuna_fms.forecast`.
Kendall's tau over all configurations, the observed ones (beside their own last observed
score) and the others, mean ± s.e. over seeds.

A variant is ``label=JSON`` with keyword arguments of
:class:`optuna_fms._surrogate.GPSurrogate` (``min_noise``, ``trend``, ``ignore``), plus
``"query_budget": k`` to rank by the forecast at ``k`` steps instead of the full budget
(a diagnostic: how much the extrapolation along the budget adds or loses).

    python benchmarks/same_data.py --hub arch --seeds 8 'default=' \\
        'noise 0.1={"min_noise": 0.1}' 'at one step={"query_budget": 1}'

Studies are cached in ``--cache`` (``<hub>_<seed>_<budget>.db``) and reused when present:
delete them after changing the library's defaults.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
import json
import os
from pathlib import Path
import tempfile
from typing import Any

from gp_variants import cell
from gp_variants import parse_variants
from gp_variants import parser
import numpy as np


def _replay(job: tuple[str, int, int, str]) -> str:
    hub_path, seed, budget, path = job
    import optuna
    import torch

    from optuna_fms.bench import Hub
    from optuna_fms.bench._replay import run_replay

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if not os.path.exists(path):
        tmp = path + ".tmp"
        if os.path.exists(tmp):
            os.remove(tmp)
        run_replay(
            Hub.load(hub_path), "fms-gp", seed, budget, tau_budgets=(), storage=f"sqlite:///{tmp}"
        )
        os.replace(tmp, path)
    return path


def _load(path: str) -> Any:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    name = storage.get_all_studies()[0].study_name
    return optuna.load_study(study_name=name, storage=storage)


def _score(
    hub: Any, study: Any, seed: int, options: dict[str, Any], seen: np.ndarray
) -> list[float]:
    import optuna_fms
    from optuna_fms.bench._metrics import kendall_tau

    options = dict(options)
    query_budget = options.pop("query_budget", None)
    sampler = optuna_fms.FMSSampler(seed=seed, max_steps=hub.n_epochs, surrogate="gp")
    engine = sampler.engine
    engine._surrogate_kwargs = dict(options)  # GPSurrogate keywords FMSSampler does not take
    engine.refresh(study, eager=True)
    surrogate = engine.surrogate(study)
    if query_budget is not None and surrogate is not None:
        predict = surrogate.predict
        budget_column = engine.current_fit(study).model.layout.budget

        def at_budget(rows: np.ndarray) -> Any:
            rows = rows.copy()
            rows[:, budget_column] = query_budget / hub.n_epochs
            return predict(rows)

        surrogate.predict = at_budget  # type: ignore[method-assign]
    forecasts = optuna_fms.forecast(study, list(hub.configs), sampler=sampler)
    # Forecasts are in the objective's units; the hub's scores are higher-is-better.
    sign = 1.0 if study.direction.name == "MAXIMIZE" else -1.0
    pred = sign * np.array([f.mean for f in forecasts])
    final = hub.final_scores()
    return [
        kendall_tau(pred, final),
        kendall_tau(pred[seen], final[seen]),
        kendall_tau(pred[~seen], final[~seen]),
    ]


def _observed(hub: Any, study: Any) -> tuple[np.ndarray, float]:
    """Which configurations the study observed, and Kendall's tau of their own last observed
    score (the furthest step of any of their trials) against their final score."""
    from optuna_fms.bench._metrics import kendall_tau

    index = {json.dumps(c, sort_keys=True): i for i, c in enumerate(hub.configs)}
    last: dict[int, tuple[int, float]] = {}
    for t in study.get_trials(deepcopy=False):
        if not t.intermediate_values:
            continue
        c = index[json.dumps(t.params, sort_keys=True)]
        step = max(t.intermediate_values)
        if c not in last or step >= last[c][0]:
            last[c] = (step, t.intermediate_values[step])
    ids = sorted(last)
    seen = np.zeros(hub.n_configs, dtype=bool)
    seen[ids] = True
    sign = 1.0 if study.direction.name == "MAXIMIZE" else -1.0  # to higher-is-better
    tau = kendall_tau(sign * np.array([last[c][1] for c in ids]), hub.final_scores()[ids])
    return seen, tau


def _main_effects_references(hub: Any) -> list[tuple[str, float]]:
    """What the first epochs can tell: a main-effects (additive, one-hot) least-squares model
    of the score after ``k`` epochs, fitted on *every* configuration, ranked against the final
    score; and the score after ``k`` epochs itself."""
    from optuna_fms.bench._metrics import kendall_tau

    columns = [np.ones(hub.n_configs)]
    for name in hub.search_space:
        values = sorted({str(c[name]) for c in hub.configs})
        columns += [np.array([str(c[name]) == v for c in hub.configs], float) for v in values[1:]]
    design = np.column_stack(columns)
    final = hub.final_scores()
    out = []
    for k in (1, 3, hub.n_epochs):
        y = hub.scores[:, k - 1]
        beta = np.linalg.lstsq(design, y, rcond=None)[0]
        name = f"main effects of the score after {k} epochs"
        out.append((name, kendall_tau(design @ beta, final)))
        if k < hub.n_epochs:
            out.append((f"score after {k} epochs", kendall_tau(y, final)))
    return out


def main() -> None:
    command = parser(__doc__.splitlines()[0], seeds=8)
    command.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "fms-same-data"))
    args = command.parse_args()

    import optuna

    from optuna_fms.bench import Hub

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    hub_path = os.path.expanduser(f"{args.hub_dir}/{args.hub}")
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    jobs = [
        (hub_path, s, args.budget, f"{args.cache}/{args.hub}_{s}_{args.budget}.db")
        for s in range(args.seeds)
    ]
    with ProcessPoolExecutor(args.workers) as pool:
        paths = list(pool.map(_replay, jobs))
    hub = Hub.load(hub_path)
    variants = parse_variants(args.variants)
    taus: dict[str, list[list[float]]] = {label: [] for label, _ in variants}
    last = []
    for seed, path in enumerate(paths):
        study = _load(path)
        seen, last_tau = _observed(hub, study)
        last.append(last_tau)
        for label, options in variants:
            taus[label].append(_score(hub, study, seed, options, seen))

    print(f"hub {hub.name}, the default's studies at {args.budget} epochs, {args.seeds} seeds\n")
    print("| variant | tau all | tau observed | their last score | tau unseen |")
    print("|---|---|---|---|---|")
    for label, _ in variants:
        a = np.array(taus[label])
        columns = [cell(list(a[:, 0])), cell(list(a[:, 1])), cell(last), cell(list(a[:, 2]))]
        print(f"| {label} | " + " | ".join(columns) + " |")
    print("\n| reference over all configurations (every one trained) | tau |\n|---|---|")
    for name, tau in _main_effects_references(hub):
        print(f"| {name} | {tau:.3f} |")


if __name__ == "__main__":
    main()
