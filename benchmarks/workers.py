"""Throughput and per-trial overhead with 1, 2, 4 and 8 worker processes.

For each storage (SQLite, PostgreSQL when ``OPTUNA_FMS_POSTGRES_URL`` is set, a journal file)
and each worker count, the same tiny training objective (a 4-8-1 MLP, momentum SGD, a
checkpoint per epoch through a FileSystemArtifactStore) runs ``--trials`` trials in a fresh
study, once with FMSSampler + FMSPruner (freeze-thaw on) and once with TPESampler +
MedianPruner (the baseline; same objective, same checkpoints). Workers are processes forked
from a server that imported torch once, so interpreter start-up is not counted.

Columns: ``trials/min`` over the span from the first trial's start to the last trial's end;
``s/trial wall`` and ``s/trial CPU``: the time spent inside the sampler's and the pruner's
methods (``before_trial``, ``infer_relative_search_space``, ``sample_relative``,
``sample_independent``, ``after_trial``, ``prune``), summed over the workers and divided by
the number of trials. Wall time includes waiting for the storage (locks, round trips) and,
with more workers than cores, for the CPU; CPU time is the calling thread's own.

Usage::

    python benchmarks/workers.py                          # 60 trials per run
    python benchmarks/workers.py --trials 40 --workers 1 2 --storages journal
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
from pathlib import Path
import tempfile
import time
from typing import Any

import optuna
from optuna.trial import TrialState
import torch

import optuna_fms


_STEPS = 4
_SPENT = {"wall": 0.0, "cpu": 0.0}


def _timed(cls: type) -> type:
    """A subclass of a sampler or pruner class that adds the time spent in its methods to
    ``_SPENT``."""
    names = [
        n
        for n in (
            "before_trial",
            "infer_relative_search_space",
            "sample_relative",
            "sample_independent",
            "after_trial",
            "prune",
        )
        if hasattr(cls, n)
    ]

    def wrap(name: str) -> Any:
        method = getattr(cls, name)

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return method(self, *args, **kwargs)
            finally:
                _SPENT["wall"] += time.perf_counter() - wall
                _SPENT["cpu"] += time.thread_time() - cpu

        return timed

    return type("Timed" + cls.__name__, (cls,), {n: wrap(n) for n in names})


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 4, generator=g)
    return x, (x[:, :1] * 2 - x[:, 1:2]).tanh()


def _objective(trial: optuna.Trial, store: Any) -> float:
    lr = trial.suggest_float("lr", 1e-3, 0.5, log=True)
    width = trial.suggest_int("width", 4, 16)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    start = optuna_fms.resume(trial, model, opt, artifact_store=store)
    x, y = _data()
    loss = math.nan
    for epoch in range(start, _STEPS):
        for batch in torch.randperm(64, generator=torch.Generator().manual_seed(epoch)).split(32):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x[batch]), y[batch]).backward()
            opt.step()
        with torch.no_grad():
            loss = torch.nn.functional.mse_loss(model(x), y).item()
        optuna_fms.save_checkpoint(trial, model.state_dict(), epoch, artifact_store=store)
        trial.report(loss, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loss


def _storage(spec: str) -> optuna.storages.BaseStorage:
    if spec.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(spec[len("journal:") :])
        return optuna.storages.JournalStorage(backend)
    return optuna.storages.RDBStorage(spec)


def _worker(
    spec: str, name: str, method: str, artifacts: str, seed: int, n_trials: int, out: str
) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    store = optuna.artifacts.FileSystemArtifactStore(artifacts)
    if method == "fms":
        sampler = _timed(optuna_fms.FMSSampler)(
            seed=seed, n_startup_trials=4, artifact_store=store, n_candidates=64
        )
        pruner = _timed(optuna_fms.FMSPruner)(max_steps=_STEPS, n_startup_trials=4)
    else:
        sampler = _timed(optuna.samplers.TPESampler)(seed=seed, n_startup_trials=4)
        pruner = _timed(optuna.pruners.MedianPruner)(n_startup_trials=4)
    study = optuna.load_study(
        study_name=name, storage=_storage(spec), sampler=sampler, pruner=pruner
    )
    done = optuna.study.MaxTrialsCallback(
        n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)
    )
    study.optimize(lambda t: _objective(t, store), callbacks=[done])
    Path(out).write_text(f"{_SPENT['wall']} {_SPENT['cpu']}")


def _run(spec: str, method: str, n_workers: int, n_trials: int, tmp: Path) -> dict[str, float]:
    name = f"workers-{method}-{n_workers}-{time.time_ns()}"
    storage = _storage(spec)
    optuna.create_study(study_name=name, storage=storage)
    artifacts = tmp / name
    artifacts.mkdir()
    ctx = multiprocessing.get_context("forkserver")
    outs = [tmp / f"{name}-{i}.txt" for i in range(n_workers)]
    procs = [
        ctx.Process(
            target=_worker,
            args=(spec, name, method, str(artifacts), i, n_trials, str(out)),
        )
        for i, out in enumerate(outs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a worker failed ({p.exitcode})")
    trials = optuna.load_study(study_name=name, storage=storage).trials
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    span = (max(ends) - min(starts)).total_seconds()
    spent = [tuple(map(float, o.read_text().split())) for o in outs]
    return {
        "trials": len(trials),
        "per_min": 60 * len(trials) / span,
        "wall": sum(s[0] for s in spent) / len(trials),
        "cpu": sum(s[1] for s in spent) / len(trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=60, help="finished trials per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--storages", nargs="+", default=["sqlite", "postgresql", "journal"], help="which storages"
    )
    args = parser.parse_args()
    multiprocessing.get_context("forkserver").set_forkserver_preload(["optuna_fms", "torch"])
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        specs = {
            "sqlite": f"sqlite:///{tmp / 'bench.db'}",
            "journal": f"journal:{tmp / 'bench.log'}",
        }
        url = os.environ.get("OPTUNA_FMS_POSTGRES_URL")
        if url:
            specs["postgresql"] = url
        print(f"{args.trials} trials per run, {os.cpu_count()} CPUs, optuna {optuna.__version__}")
        print(
            "| storage | workers | FMS trials/min | TPE+Median trials/min | FMS s/trial wall "
            "| TPE+Median s/trial wall | FMS s/trial CPU | TPE+Median s/trial CPU |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for kind in args.storages:
            if kind not in specs:
                print(f"| {kind} | skipped: OPTUNA_FMS_POSTGRES_URL is not set | | | | | | |")
                continue
            for n in args.workers:
                fms = _run(specs[kind], "fms", n, args.trials, tmp)
                tpe = _run(specs[kind], "tpe", n, args.trials, tmp)
                print(
                    f"| {kind} | {n} | {fms['per_min']:.0f} | {tpe['per_min']:.0f} "
                    f"| {fms['wall']:.3f} | {tpe['wall']:.3f} | {fms['cpu']:.3f} "
                    f"| {tpe['cpu']:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
