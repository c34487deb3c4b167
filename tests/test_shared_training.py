"""Workers share their GP trainings through the study instead of each training its own.

Each "worker" here is its own FMSSampler + FMSPruner (own engine, own surrogate, nothing shared
in memory) on one SQLite study, as separate processes would be.
"""

from __future__ import annotations

import math
from pathlib import Path
import time
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
import pytest

from optuna_fms import FMSPruner
from optuna_fms import FMSSampler
from optuna_fms import _attrs
from optuna_fms import _engine
from optuna_fms._engine import _shared_training
from optuna_fms._surrogate import GPSurrogate


_STEPS = 6


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_float("y", 0.0, 1.0)
    value = 0.0
    for step in range(_STEPS):
        value = (1 - (x - 0.3) ** 2 - 0.5 * (y - 0.6) ** 2) * (1 - math.exp(-0.6 * (step + 1)))
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def _worker(storage: str | BaseStorage, name: str, seed: int) -> optuna.Study:
    return optuna.load_study(
        study_name=name,
        storage=storage,
        # retrain_growth=0: a training for every own new observation, the strictest schedule.
        sampler=FMSSampler(seed=seed, n_startup_trials=4, n_candidates=32, retrain_growth=0.0),
        pruner=FMSPruner(max_steps=_STEPS, n_startup_trials=4, pause_startup=False),
    )


def _surrogate(study: optuna.Study) -> GPSurrogate:
    engine = _engine.engine_of(study)
    assert engine is not None
    surrogate = engine.surrogate(study)
    assert isinstance(surrogate, GPSurrogate)
    return surrogate


def _n_fits(study: optuna.Study) -> int:
    engine = _engine.engine_of(study)
    assert engine is not None
    surrogate = engine.surrogate(study)
    return 0 if surrogate is None else surrogate._n_fits


def _system_attrs(study: optuna.Study) -> dict[str, Any]:
    return study._storage.get_study_system_attrs(study._study_id)


def _new_study(tmp_path: Path, n_trials: int = 10) -> tuple[str, str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'fms.db'}"
    optuna.create_study(study_name="s", storage=url, direction="maximize")
    study = _worker(url, "s", seed=0)
    study.optimize(_objective, n_trials=n_trials)
    return url, "s", study


def test_a_new_worker_conditions_on_the_stored_training(tmp_path: Path) -> None:
    url, name, first = _new_study(tmp_path)
    stored = _attrs.read_gp_training(_system_attrs(first))
    assert stored is not None and stored.n_trained > 0
    assert stored.gp == _surrogate(first).hyperparameters()

    second = _worker(url, name, seed=1)
    engine, fit = _engine.fitted(second)
    # No training of its own: the hyperparameters are the first worker's, on all the data.
    assert _n_fits(second) == 0
    assert _surrogate(second).hyperparameters() == stored.gp
    assert fit.n_trained == stored.n_trained
    assert fit.n_observations == _engine.count_observations(second.trials)
    forecast = engine.forecaster.forecast_final(second, fit)
    assert np.isfinite(forecast.mean).all() and np.isfinite(forecast.std).all()
    # It decides with them, and trains (warm) once its own trials bring new observations.
    second.optimize(_objective, n_trials=3)
    assert all(t.state.is_finished() for t in second.trials)


def test_trainings_per_trial_do_not_grow_with_the_workers(tmp_path: Path) -> None:
    """Four workers taking turns train about as often as one worker for the same trials;
    without sharing, each trained for the others' observations too (and once cold)."""
    totals = {}
    for n_workers in (1, 4):
        url = f"sqlite:///{tmp_path / f'{n_workers}.db'}"
        optuna.create_study(study_name="s", storage=url, direction="maximize")
        workers = [_worker(url, "s", seed=i) for i in range(n_workers)]
        for i in range(24):
            workers[i % n_workers].optimize(_objective, n_trials=1)
        totals[n_workers] = sum(_n_fits(w) for w in workers)
    assert totals[1] > 0
    assert totals[4] <= totals[1] + 2, totals


def test_a_worker_does_not_train_for_other_workers_observations(tmp_path: Path) -> None:
    url, name, first = _new_study(tmp_path, n_trials=8)
    second = _worker(url, name, seed=1)
    second.optimize(_objective, n_trials=1)
    _, before = _engine.fitted(second)  # trains if its own trial brought new observations
    fits = _n_fits(second)
    # Another worker adds a few observations (less than half as many again).
    first.optimize(_objective, n_trials=1)
    _, fit = _engine.fitted(second)
    assert fit.n_observations > before.n_observations
    assert fit.n_observations < 1.5 * before.n_trained
    assert _n_fits(second) == fits  # conditioned on them, not trained
    assert fit.n_observations == _engine.count_observations(second.trials)
    # Its own new observations make it train.
    second.optimize(_objective, n_trials=1)
    _engine.fitted(second)
    assert _n_fits(second) == fits + 1


def _valid_record(study: optuna.Study) -> dict[str, Any]:
    record = _system_attrs(study)[_attrs.GP_TRAINING]
    assert _attrs.read_gp_training(_system_attrs(study)) is not None
    return record


def _malformed(record: dict[str, Any], n_observations: int) -> list[Any]:
    gp = record["gp"]
    huge = {k: [1e308] * len(v) for k, v in gp["values"].items()}
    nan = {k: [math.nan] * len(v) for k, v in gp["values"].items()}
    first_name = next(iter(gp["values"]))
    variants: list[Any] = [
        "not a record",
        None,
        [1, 2, 3],
        {**record, "n_trained": "ten"},
        {**record, "max_steps": 1000},
        {**record, "space": {"x": record["space"]["x"]}},  # another study's search space
        {**record, "gp": {}},
        {**record, "gp": {**gp, "settings": {**gp["settings"], "trend": "constant"}}},
        # Another GP's settings (a variant's noise floor) never stand in for this one's.
        {**record, "gp": {**gp, "settings": {**gp["settings"], "min_noise": 0.5}}},
        {**record, "gp": {**gp, "settings": {**gp["settings"], "ignore": ["x"]}}},
        {**record, "gp": {**gp, "names": ["a", "b"]}},
        {**record, "gp": {**gp, "values": {**gp["values"], first_name: [1.0] * 99}}},
        {**record, "gp": {**gp, "values": {**gp["values"], first_name: ["x"]}}},
        {**record, "gp": {**gp, "values": {**gp["values"], "bogus": [1.0]}}},
        {**record, "gp": {**gp, "values": huge}},
        {**record, "gp": {**gp, "values": nan}},
        # Valid hyperparameters that claim more observations than the study has.
        {**record, "n_trained": 10 * n_observations},
    ]
    # Well-formed, finite, and nonsensical: values no fit on this data reaches (issue 22,
    # item 5: such a record, adopted, turned tau from 0.93 into -0.25 with std 0).
    for nonsense in (
        lambda name, v: 8.0,
        lambda name, v: -8.0,
        lambda name, v: -8.0 if "lengthscale" in name else v,
        lambda name, v: 30.0 if "trend" in name else v,
    ):
        values = {k: [nonsense(k, v) for v in vs] for k, vs in gp["values"].items()}
        variants.append({**record, "gp": {**gp, "values": values}})
    return variants


def test_a_missing_foreign_or_malformed_record_falls_back_to_a_cold_fit(tmp_path: Path) -> None:
    url, name, first = _new_study(tmp_path)
    record = _valid_record(first)
    storage = first._storage
    n_obs = _engine.count_observations(first.trials)
    for i, bad in enumerate(_malformed(record, n_obs)):
        storage.set_study_system_attr(first._study_id, _attrs.GP_TRAINING, bad)
        # (No announced training: the last worker's is covered by the record replaced here.)
        storage.set_study_system_attr(first._study_id, _attrs.GP_TRAINING_STARTED, None)
        worker = _worker(storage, name, seed=10 + i)
        _, fit = _engine.fitted(worker)
        assert _n_fits(worker) == 1, bad  # its own (cold) fit
        assert fit.n_observations == _engine.count_observations(worker.trials)
        # The worker's training replaced the bad record with a usable one.
        assert _attrs.read_gp_training(_system_attrs(worker)) is not None
        again = _worker(storage, name, seed=100 + i)
        _engine.fitted(again)
        assert _n_fits(again) == 0, bad
    # The study goes on.
    first.optimize(_objective, n_trials=2)
    assert all(t.state.is_finished() for t in first.trials)


def test_a_worker_without_a_model_waits_for_an_announced_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, name, first = _new_study(tmp_path)
    storage = first._storage
    record = _attrs.read_gp_training(_system_attrs(first))
    assert record is not None
    announced = {"space": record.space, "max_steps": record.max_steps, "by": "elsewhere"}
    # A training on more observations than the published one, announced long ago (its worker
    # died): ignored at once.
    stale = {**announced, "n": record.n_trained + 1, "at": time.time() - 1000}
    storage.set_study_system_attr(first._study_id, _attrs.GP_TRAINING, "lost")
    storage.set_study_system_attr(first._study_id, _attrs.GP_TRAINING_STARTED, stale)
    worker = _worker(storage, name, seed=1)
    start = time.monotonic()
    _engine.fitted(worker)
    assert _n_fits(worker) == 1 and time.monotonic() - start < 5.0
    # A fresh announcement that is never published (the published training is another
    # search space's): a new worker waits (not forever), then trains its own.
    monkeypatch.setattr(_shared_training, "_AWAIT_TRAINING_S", 0.5)
    foreign = {**_system_attrs(first)[_attrs.GP_TRAINING], "space": {"z": "{}"}}
    storage.set_study_system_attr(first._study_id, _attrs.GP_TRAINING, foreign)
    live = {**announced, "n": 10**6, "at": time.time()}
    storage.set_study_system_attr(first._study_id, _attrs.GP_TRAINING_STARTED, live)
    late = _worker(storage, name, seed=2)
    start = time.monotonic()
    _engine.fitted(late)
    assert _n_fits(late) == 1 and time.monotonic() - start >= 0.5
    # A malformed published record tells nothing: no waiting.
    storage.set_study_system_attr(first._study_id, _attrs.GP_TRAINING, "lost")
    live = {**announced, "n": 10**6, "at": time.time()}
    storage.set_study_system_attr(first._study_id, _attrs.GP_TRAINING_STARTED, live)
    monkeypatch.setattr(_shared_training, "_AWAIT_TRAINING_S", 30.0)
    other = _worker(storage, name, seed=3)
    start = time.monotonic()
    _engine.fitted(other)
    assert _n_fits(other) == 1 and time.monotonic() - start < 5.0
    # Nor for an announcement of its own (a training of this process that failed).
    mine = _worker(storage, name, seed=4)
    engine = _engine.engine_of(mine)
    assert engine is not None
    own = {**announced, "n": 10**6, "at": time.time(), "by": engine.schedule.shared.token}
    storage.set_study_system_attr(first._study_id, _attrs.GP_TRAINING_STARTED, own)
    start = time.monotonic()
    _engine.fitted(mine)
    assert time.monotonic() - start < 5.0
