"""Where a method's proposals go: per seed, the regret and how often each value of one
hyperparameter was started after the random startup trials.

A diagnostic for a bad seed: it replays the hub as ``benchmarks/suite.py`` does (without the
tau measurements, which refresh the surrogate at 50 and 100 epochs and so can change later
decisions) and counts the values of ``--param`` among the trials after the first
``--skip`` (the startup trials), beside the same count for the hub's 10 best configurations.

    python benchmarks/proposals.py --hub finetune --method fms-no-checkpoints --seeds 0,1,2,4,9
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import optuna

from optuna_fms.bench._cli import resolve_hub
from optuna_fms.bench._hub import Hub
from optuna_fms.bench._replay import CONFIG_ATTR
from optuna_fms.bench._replay import run_replay


def _counts(hub: Hub, configs: list[int], param: str) -> dict[object, int]:
    return dict(sorted(Counter(hub.hyperparameters(c)[param] for c in configs).items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hub", default="finetune")
    p.add_argument("--method", default="fms-no-checkpoints")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--budget", type=int, default=200)
    p.add_argument("--param", default="lr")
    p.add_argument("--skip", type=int, default=10, help="startup trials left out")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    hub = Hub.load(resolve_hub(args.hub))
    best = [int(c) for c in np.argsort(-hub.final_scores())[:10]]
    print(
        f"hub {hub.name}, {args.method}, {args.budget} epochs; {args.param} of the 10 best "
        f"configurations: {_counts(hub, best, args.param)}\n"
    )
    print(f"| seed | regret @{args.budget} | trials after the startup | {args.param} started |")
    print("|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        storage = optuna.storages.InMemoryStorage()
        r = run_replay(hub, args.method, seed, args.budget, storage=storage, tau_budgets=())
        name = next(n for n in optuna.get_all_study_names(storage) if ":fms-" not in n)
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        configs = [t.user_attrs[CONFIG_ATTR] for t in trials if CONFIG_ATTR in t.user_attrs]
        after = configs[args.skip :]
        regret = hub.best_final_score - r.best_observed[args.budget - 1]
        print(f"| {seed} | {regret:.3f} | {len(after)} | {_counts(hub, after, args.param)} |")


if __name__ == "__main__":
    main()
