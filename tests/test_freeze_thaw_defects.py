"""Regression tests for freeze-thaw under threads, repeated checks, retries and failures."""

from __future__ import annotations

from pathlib import Path
import threading

import optuna
from optuna.trial import TrialState
import torch
import workers

import optuna_fms
from optuna_fms.metanet import describe_module


def _fms_study(tmp_path: Path, storage=None, seed: int = 0) -> optuna.Study:
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        direction="maximize",
        storage=storage,
        sampler=optuna_fms.FMSSampler(
            seed=seed,
            n_startup_trials=3,
            artifact_store=optuna.artifacts.FileSystemArtifactStore(str(store_dir)),
            n_candidates=64,
            n_scratch_epochs=60,
            n_warm_epochs=10,
        ),
        pruner=optuna_fms.FMSPruner(max_steps=workers.STEPS, n_startup_trials=3, tolerance=1.0),
    )


# ------------------------------------------------------------------------ 0: tracing in threads
def test_structure_tracing_does_not_leak_into_other_threads() -> None:
    traced = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    other = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    original_call = torch.nn.Module.__call__
    x = torch.randn(5, 3)
    expected = other(x)
    stop = threading.Event()
    errors: list[BaseException] = []
    traces: list[str] = []

    def trace() -> None:
        try:
            while not stop.is_set():
                traces.append(describe_module(traced)["trace"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    tracers = [threading.Thread(target=trace) for _ in range(2)]
    for t in tracers:
        t.start()
    try:
        for _ in range(3000):
            assert torch.equal(other(x), expected)
    finally:
        stop.set()
        for t in tracers:
            t.join()
    assert not errors
    assert traces and set(traces) == {"fx"}
    # Nothing stays patched after the traces.
    assert torch.nn.Module.__call__ is original_call
    assert torch.equal(other(x), expected)


def test_threads_with_checkpoints_and_freeze_thaw(tmp_path: Path) -> None:
    for run in range(5):
        study = _fms_study(tmp_path / str(run), seed=run)
        study.optimize(workers.train_objective, n_trials=16, n_jobs=4)
        states = [t.state for t in study.trials]
        assert len(states) == 16
        assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states
