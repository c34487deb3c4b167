"""Regression tests for freeze-thaw under threads, repeated checks, retries and failures."""

from __future__ import annotations

import collections
import functools
import logging
import math
import multiprocessing
import os
from pathlib import Path
import signal
import threading
import time

import optuna
from optuna.trial import TrialState
import pytest
import test_freeze_thaw
import torch
import workers

import optuna_fms
from optuna_fms import _attrs
from optuna_fms._freeze_thaw import _claims
from optuna_fms.metanet import describe_module


def _claims_per_parent(study: optuna.Study) -> collections.Counter:
    claims_id = _claims.claims_study_id(study._storage, study._study_id)
    claims = study._storage.get_all_trials(claims_id, deepcopy=False)
    return collections.Counter(c.user_attrs["trial_id"] for c in claims)


def _continued_parents(study: optuna.Study) -> list[int]:
    return [
        t.user_attrs[_attrs.CONTINUES]["trial"]
        for t in study.trials
        if _attrs.CONTINUES in t.user_attrs
    ]


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
class _Traced(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 2)
        self.scale = torch.nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.relu(self.a(x)) * self.scale
        return self.b(h / math.sqrt(x.size(-1)))


class _Other(torch.nn.Module):
    """Functional ops, a parameter read in ``forward`` and a container, like a trial's model."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
        self.fc = torch.nn.Linear(3, 1)
        self.w = torch.nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.relu(self.seq(x)) * self.w
        return self.fc(h + math.sqrt(2.0)) + self.fc.bias


def test_structure_tracing_does_not_leak_into_other_threads() -> None:
    traced = _Traced()
    other = _Other()
    original_call = torch.nn.Module.__call__
    original_getattr = torch.nn.Module.__getattr__
    original_sqrt = math.sqrt
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
        for _ in range(5000):
            # A torch.compile-d model raises when it sees fx's global "tracing" flag.
            assert not torch.fx._symbolic_trace.is_fx_symbolic_tracing()
            assert torch.equal(other(x), expected)
    finally:
        stop.set()
        for t in tracers:
            t.join()
    assert not errors
    assert traces and set(traces) == {"fx"}
    # Nothing stays patched after the traces, and the traced module is left as it was.
    assert torch.nn.Module.__call__ is original_call
    assert torch.nn.Module.__getattr__ is original_getattr
    assert math.sqrt is original_sqrt
    assert "forward" not in vars(traced) and not hasattr(traced, "_tensor_constant0")
    assert torch.equal(other(x), expected)


def test_threads_with_checkpoints_and_freeze_thaw(tmp_path: Path) -> None:
    for run in range(5):
        study = _fms_study(tmp_path / str(run), seed=run)
        study.optimize(workers.train_objective, n_trials=16, n_jobs=4)
        states = [t.state for t in study.trials]
        assert len(states) == 16
        assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}, states


# ------------------------------------------------------------- 1: one claim per pause
def test_asking_twice_at_a_step_opens_one_claim(tmp_path: Path) -> None:
    study = test_freeze_thaw._study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(functools.partial(workers.train_objective, checks=2), n_trials=3)
    parent = study.trials[0]
    assert parent.state == TrialState.PRUNED
    assert _claims_per_parent(study) == {parent._trial_id: 1}
    assert _continued_parents(study) == [0]
    assert _attrs.CONTINUES not in study.trials[2].user_attrs


def test_surrogate_pauses_checked_twice_are_continued_once(tmp_path: Path) -> None:
    study = _fms_study(tmp_path, seed=1)
    study.optimize(functools.partial(workers.curve_objective, checks=2), n_trials=25)
    paused = [t for t in study.trials if "claim" in t.user_attrs.get(_attrs.PAUSED, {})]
    assert paused, "nothing was paused"
    assert set(_claims_per_parent(study).values()) == {1}
    parents = _continued_parents(study)
    assert parents, "no paused trial was ever continued"
    assert len(parents) == len(set(parents))


def test_a_trial_that_goes_on_after_a_pause_withdraws_its_claim(tmp_path: Path) -> None:
    class _PauseAtThreeAndFive(optuna_fms.FMSPruner):
        def _should_pause(self, study, trial, step):
            return trial.number == 0 and step in (3, 5)

    study = test_freeze_thaw._study(tmp_path, pruner=_PauseAtThreeAndFive(max_steps=workers.STEPS))

    def ignore_first_pause(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-3, 0.5, log=True)
        for step in range(workers.STEPS):
            optuna_fms.save_checkpoint(trial, {"w": torch.ones(2) * step}, step=step)
            trial.report(float(step), step)
            if trial.should_prune() and step > 3:
                raise optuna.TrialPruned()
        return 1.0

    study.optimize(ignore_first_pause, n_trials=1)
    trial = study.trials[0]
    assert trial.user_attrs[_attrs.PAUSED]["step"] == 5
    claims_id = _claims.claims_study_id(study._storage, study._study_id)
    claims = study._storage.get_all_trials(claims_id)
    assert [c.state for c in claims] == [TrialState.FAIL, TrialState.WAITING]
    assert claims[1]._trial_id == trial.user_attrs[_attrs.PAUSED]["claim"]


# ------------------------------------------------ 2: preset trials never take a claim
def _preset_by_enqueue(study: optuna.Study) -> None:
    study.enqueue_trial({"lr": 0.3})


def _preset_by_add_trial(study: optuna.Study) -> None:
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params={"lr": 0.3},
            distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 0.5, log=True)},
        )
    )


def _preset_by_retry(study: optuna.Study) -> None:
    def fails(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-3, 0.5, log=True)
        raise RuntimeError("worker lost")

    study.enqueue_trial({"lr": 0.3})
    study.optimize(fails, n_trials=1, catch=(RuntimeError,))
    workers.retry_callback()(study, study.trials[-1])


@pytest.mark.parametrize("preset", [_preset_by_enqueue, _preset_by_add_trial, _preset_by_retry])
def test_a_trial_with_preset_parameters_does_not_continue(tmp_path: Path, preset) -> None:
    study = test_freeze_thaw._study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(workers.train_objective, n_trials=1)
    preset(study)
    study.optimize(workers.train_objective, n_trials=1)
    own = study.trials[-1]
    assert own.params == {"lr": 0.3}
    assert _attrs.CONTINUES not in own.user_attrs
    assert sorted(own.intermediate_values) == list(range(workers.STEPS))
    # The paused trial is continued with its own parameters by a trial the sampler chose.
    study.optimize(workers.train_objective, n_trials=1)
    child = study.trials[-1]
    assert child.user_attrs[_attrs.CONTINUES]["trial"] == 0
    assert child.params == {"lr": 0.05}
    assert child.user_attrs[_attrs.RESUMED]


# ------------------------------------- 3: a failed continuation releases its claim
def _fail_first_continuation(how: str):
    failed: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        continues = _attrs.CONTINUES in trial.study._storage.get_trial_user_attrs(trial._trial_id)
        if continues and not failed:
            failed.append(trial.number)
            if how == "raise":
                trial.suggest_float("lr", 1e-3, 0.5, log=True)
                raise RuntimeError("out of memory while building the model")
            # A model that does not fit the parent's checkpoint: resume raises.
            optuna_fms.resume(trial, torch.nn.Linear(3, 3))
        return workers.train_objective(trial)

    return objective


@pytest.mark.parametrize("how", ["raise", "shape mismatch"])
def test_a_failed_continuation_releases_its_claim(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    study = test_freeze_thaw._study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        study.optimize(_fail_first_continuation(how), n_trials=3, catch=(Exception,))
    paused, failed, child = study.trials
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs[_attrs.CONTINUES]["trial"] == 0
    assert not study._storage.get_study_system_attrs(study._study_id).get(_attrs.CONTINUATION_OFF)
    assert not [r for r in caplog.records if "never called" in r.message]
    # The parent stayed continuable and was continued from its checkpoint.
    assert child.user_attrs[_attrs.CONTINUES]["trial"] == 0
    assert child.user_attrs[_attrs.RESUMED]
    assert child.params == paused.params
    assert child.state == TrialState.COMPLETE
    for step, value in paused.intermediate_values.items():
        assert child.intermediate_values[step] == value


def _claim_states(study: optuna.Study) -> list[TrialState]:
    claims_id = _claims.claims_study_id(study._storage, study._study_id)
    return [c.state for c in study._storage.get_all_trials(claims_id)]


def _assert_continues_from_checkpoint(child, parent) -> None:
    link = _attrs.read_continuation(child.user_attrs)
    assert link is not None and link.trial_id == parent._trial_id
    assert child.user_attrs[_attrs.RESUMED]
    assert child.params == parent.params
    for step, value in parent.intermediate_values.items():
        assert child.intermediate_values[step] == value


def _assert_every_recorded_checkpoint_exists(study: optuna.Study, store_dir: Path) -> None:
    for t in study.trials:
        for artifact_id in _attrs.read_checkpoints(t.user_attrs).values():
            assert (store_dir / artifact_id).is_file(), (t.number, artifact_id)


def test_a_retried_continuation_continues_the_same_paused_trial(tmp_path: Path) -> None:
    study = test_freeze_thaw._study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(_fail_first_continuation("raise"), n_trials=2, catch=(Exception,))
    paused, failed = study.trials
    workers.retry_callback()(study, failed)
    study.optimize(workers.train_objective, n_trials=1)
    retry = study.trials[2]
    assert retry.system_attrs["failed_trial"] == failed.number
    # The retry takes the claim its failed original released and restores the parent.
    _assert_continues_from_checkpoint(retry, paused)
    taken = retry.user_attrs[_attrs.CONTINUES]["claim"]
    assert taken != failed.user_attrs[_attrs.CONTINUES]["claim"]
    assert retry.state == TrialState.COMPLETE
    assert _claim_states(study) == [TrialState.FAIL, TrialState.PRUNED]
    assert [t for t in study.trials if t.user_attrs.get(_attrs.RESUMED)] == [retry]


def test_a_retried_continuation_whose_pause_was_taken_trains_from_scratch(
    tmp_path: Path,
) -> None:
    study = test_freeze_thaw._study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(_fail_first_continuation("raise"), n_trials=3, catch=(Exception,))
    paused, failed, child = study.trials
    _assert_continues_from_checkpoint(child, paused)
    workers.retry_callback()(study, failed)
    study.optimize(workers.train_objective, n_trials=1)
    retry = study.trials[3]
    # The claim was taken by trial 2: the retry trains the same parameters from step 0.
    assert retry.params == paused.params
    assert _attrs.read_continuation(retry.user_attrs) is None
    assert not retry.user_attrs.get(_attrs.RESUMED)
    assert sorted(retry.intermediate_values) == list(range(workers.STEPS))
    assert [t for t in study.trials if t.user_attrs.get(_attrs.RESUMED)] == [child]


def test_repeatedly_failing_continuations_give_the_pause_up(tmp_path: Path) -> None:
    def fails_when_continued(trial: optuna.Trial) -> float:
        if _attrs.CONTINUES in trial.study._storage.get_trial_user_attrs(trial._trial_id):
            raise RuntimeError("checkpoint does not fit")
        return workers.train_objective(trial)

    study = test_freeze_thaw._study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(fails_when_continued, n_trials=5, catch=(RuntimeError,))
    states = [t.state for t in study.trials]
    assert states[1:3] == [TrialState.FAIL, TrialState.FAIL]
    assert states[3:] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert not study._storage.get_study_system_attrs(study._study_id).get(_attrs.CONTINUATION_OFF)


# -------------------------------------------- 5: one sampler serving several studies
@pytest.mark.parametrize("kind", ["sqlite", "inmemory"])
def test_one_sampler_serves_two_studies_without_mixing_claims(tmp_path: Path, kind: str) -> None:
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    sampler = test_freeze_thaw._ContinueWhenPossible(
        seed=0,
        artifact_store=optuna.artifacts.FileSystemArtifactStore(str(store_dir)),
        n_startup_trials=0,
    )
    pruner = test_freeze_thaw._PauseTrialZero(max_steps=workers.STEPS)

    def storage(name: str) -> optuna.storages.BaseStorage:
        if kind == "sqlite":
            return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / name}.db")
        return optuna.storages.InMemoryStorage()

    a = optuna.create_study(study_name="a", storage=storage("a"), sampler=sampler, pruner=pruner)
    a.enqueue_trial({"lr": 0.05})
    a.optimize(workers.train_objective, n_trials=1)
    # A second storage numbers its studies from the start again: "b" gets "a"'s id, and
    # "unrelated" the id of "a"'s claims study.
    storage_b = storage("b")
    b = optuna.create_study(study_name="b", storage=storage_b, sampler=sampler, pruner=pruner)
    unrelated = optuna.create_study(study_name="unrelated", storage=storage_b)
    assert b._study_id == a._study_id
    b.enqueue_trial({"lr": 0.2})
    b.optimize(workers.train_objective, n_trials=2)

    assert unrelated.trials == []
    paused, child = b.trials
    assert child.user_attrs[_attrs.CONTINUES]["trial_id"] == paused._trial_id
    assert child.params == {"lr": 0.2} and child.user_attrs[_attrs.RESUMED]
    assert _claims_per_parent(b) == {paused._trial_id: 1}
    # "a"'s pause is still open, in "a"'s storage.
    a_claims = _claims.open_claims(a._storage, _claims.claims_study_id(a._storage, a._study_id))
    assert [c.user_attrs["trial_id"] for c in a_claims] == [a.trials[0]._trial_id]


# ------------------- 6: a killed continuation, retries and the checkpoints they copy
@pytest.mark.parametrize("retry", [False, True], ids=["heartbeat", "heartbeat+retry"])
def test_a_killed_continuation_releases_its_claim(tmp_path: Path, retry: bool) -> None:
    url = f"sqlite:///{tmp_path / 'fms.db'}"
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    store = optuna.artifacts.FileSystemArtifactStore(str(store_dir))
    study = optuna.create_study(
        study_name="killed",
        storage=workers.heartbeat_storage(url, grace_period=2, retry=retry),
        sampler=test_freeze_thaw._ContinueWhenPossible(
            seed=0, artifact_store=store, n_startup_trials=0
        ),
        pruner=test_freeze_thaw._PauseTrialZero(max_steps=workers.STEPS),
    )
    study.enqueue_trial({"lr": 0.05})
    study.optimize(workers.train_objective, n_trials=1)
    marker = tmp_path / "stalled"
    ctx = multiprocessing.get_context("spawn")
    worker = ctx.Process(
        target=workers.continue_and_stall, args=(url, "killed", str(store_dir), str(marker))
    )
    worker.start()
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert worker.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    killed = study.trials[1]
    assert killed.state == TrialState.RUNNING
    assert _attrs.read_continuation(killed.user_attrs).trial == 0
    time.sleep(3)  # Past the grace period: the next optimize fails the killed trial.
    study.optimize(workers.train_objective, n_trials=1)
    paused, killed, child = study.trials
    assert killed.state == TrialState.FAIL
    assert child.state == TrialState.COMPLETE
    assert ("failed_trial" in child.system_attrs) == retry
    _assert_continues_from_checkpoint(child, paused)
    assert _claim_states(study) == [TrialState.FAIL, TrialState.PRUNED]
    # The killed trial's own checkpoints are kept (a retry copied their records).
    assert _attrs.read_checkpoints(killed.user_attrs)
    _assert_every_recorded_checkpoint_exists(study, store_dir)


def test_a_retry_keeps_the_failed_trials_checkpoints(tmp_path: Path) -> None:
    # Any sampler: the retry's retention must not delete the failed trial's files.
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    store = optuna.artifacts.FileSystemArtifactStore(str(store_dir))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'fms.db'}")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        for step in range(4):
            optuna_fms.save_checkpoint(
                trial, {"w": torch.full((2,), x)}, step, artifact_store=store
            )
            if trial.number == 0 and step == 2:
                raise RuntimeError("worker lost")
        return x

    study.optimize(objective, n_trials=1, catch=(RuntimeError,))
    failed = study.trials[0]
    workers.retry_callback()(study, failed)
    study.optimize(objective, n_trials=1)
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE
    kept = _attrs.read_checkpoints(failed.user_attrs)
    assert kept == _attrs.read_checkpoints(study.trials[0].user_attrs)
    assert not set(kept.values()) & set(_attrs.read_checkpoints(retry.user_attrs).values())
    _assert_every_recorded_checkpoint_exists(study, store_dir)
    # The retry reads its own checkpoints, never the failed trial's.
    ckpt = optuna_fms.read_checkpoint(retry, 2, artifact_store=store)
    assert ckpt.metadata["trial_number"] == retry.number


# ------------------- 7: an ignored pause is withdrawn, never continued while it runs
def _assert_ignored_pause_not_forked(study: optuna.Study, other: optuna.trial.FrozenTrial):
    """Trial 0 ignored its pause at step 3 and ran to the end while ``other`` was asked."""
    from optuna_fms._freeze_thaw import Lineage

    ignored = study.trials[0]
    assert ignored.state == TrialState.COMPLETE
    assert sorted(ignored.intermediate_values) == list(range(workers.STEPS))
    # No continuation started from the still-running trial: its curve stays in the data.
    assert _attrs.read_continuation(other.user_attrs) is None
    assert sorted(other.intermediate_values) == list(range(workers.STEPS))
    assert Lineage(study.trials).superseded() == set()
    # Its claim was withdrawn (by its next should_prune, or at its end), none is left open.
    assert _claim_states(study) == [TrialState.FAIL]
    assert "claim" not in ignored.user_attrs[_attrs.PAUSED]


@pytest.mark.parametrize("ask_again", [True, False], ids=["asks-again", "never-asks-again"])
def test_an_ignored_pause_is_not_continued_in_threads(tmp_path: Path, ask_again: bool) -> None:
    study = test_freeze_thaw._study(
        tmp_path, pruner=workers.PauseTrialZeroAtThree(max_steps=workers.STEPS)
    )
    paused, go = threading.Event(), threading.Event()

    def on_pause() -> bool:
        paused.set()
        assert go.wait(timeout=120)
        return ask_again

    study.enqueue_trial({"lr": 0.05})
    objective = functools.partial(workers.train_objective, ignore=on_pause)
    ignoring = threading.Thread(target=study.optimize, kwargs={"func": objective, "n_trials": 1})
    ignoring.start()
    try:
        assert paused.wait(timeout=120)
        # The claim is open while trial 0 runs on: another worker asks now.
        assert _claim_states(study) == [TrialState.WAITING]
        study.optimize(workers.train_objective, n_trials=1)
    finally:
        go.set()
        ignoring.join()
    _assert_ignored_pause_not_forked(study, study.trials[1])
    # The withdrawn pause is not continued later either.
    study.optimize(workers.train_objective, n_trials=1)
    assert _attrs.read_continuation(study.trials[2].user_attrs) is None


def test_an_ignored_pause_is_not_continued_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fms.db'}"
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    optuna.create_study(study_name="ignored", storage=url)
    paused, go = tmp_path / "paused", tmp_path / "go"
    ctx = multiprocessing.get_context("spawn")
    args = (url, "ignored", str(store_dir), str(paused), str(go), False)
    worker = ctx.Process(target=workers.ignore_pause, args=args)
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while not paused.exists():
            assert worker.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        study = optuna.load_study(
            study_name="ignored",
            storage=url,
            sampler=test_freeze_thaw._ContinueWhenPossible(
                seed=0,
                artifact_store=optuna.artifacts.FileSystemArtifactStore(str(store_dir)),
                n_startup_trials=0,
            ),
            pruner=workers.PauseTrialZeroAtThree(max_steps=workers.STEPS),
        )
        study.optimize(workers.train_objective, n_trials=1)
    finally:
        go.write_text("go")
        worker.join(timeout=120)
    assert worker.exitcode == 0
    _assert_ignored_pause_not_forked(study, study.trials[1])


# ------------------------- 8: a worker killed inside ask after taking a claim
@pytest.mark.parametrize("point", ["cas", "take", "ask"])
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_worker_killed_inside_ask_loses_no_pause(tmp_path: Path, kind: str, point: str) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'fms.db'}"
    else:
        pg = workers.postgres_url(required=True)
        assert pg is not None
        url = pg
    name = f"killed-in-ask-{time.time_ns()}"
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    study = optuna.create_study(
        study_name=name,
        storage=workers.heartbeat_storage(url, grace_period=2),
        sampler=test_freeze_thaw._ContinueWhenPossible(
            seed=0,
            artifact_store=optuna.artifacts.FileSystemArtifactStore(str(store_dir)),
            n_startup_trials=0,
        ),
        pruner=test_freeze_thaw._PauseTrialZero(max_steps=workers.STEPS),
    )
    study.enqueue_trial({"lr": 0.05})
    study.optimize(workers.train_objective, n_trials=1)
    ctx = multiprocessing.get_context("spawn")
    worker = ctx.Process(target=workers.continue_and_die, args=(url, name, str(store_dir), point))
    worker.start()
    worker.join(timeout=120)
    assert worker.exitcode == -signal.SIGKILL
    killed = study.trials[1]
    assert killed.state == TrialState.RUNNING
    claims_id = _claims.claims_study_id(study._storage, study._study_id)
    (claim,) = study._storage.get_all_trials(claims_id)
    assert claim.state == TrialState.RUNNING
    holder = claim.user_attrs.get("continued_by_id")
    assert holder == (None if point == "cas" else killed._trial_id)
    time.sleep(3)  # Past the grace period: the next worker's optimize fails the killed trial.
    study.optimize(workers.train_objective, n_trials=1)
    paused, killed, child = study.trials
    assert killed.state == TrialState.FAIL
    assert child.state == TrialState.COMPLETE
    _assert_continues_from_checkpoint(child, paused)
    assert _claim_states(study) == [TrialState.FAIL, TrialState.PRUNED]


def test_a_trial_that_did_not_stop_at_its_pause_is_never_superseded() -> None:
    # A study forked before continuations waited for the paused trial to stop: its curve,
    # longer than the continuation's copy of it, stays in the surrogate's data.
    from optuna_fms._freeze_thaw import Lineage

    study = optuna.create_study()
    parent = study.ask()
    for step in range(4):
        parent.report(1.0 / (step + 1), step)
    child = study.ask()
    child.set_user_attr(_attrs.CONTINUES, {"trial": 0, "trial_id": parent._trial_id, "step": 1})
    child.set_user_attr(_attrs.RESUMED, True)
    assert Lineage(study.trials).superseded() == set()  # The parent still runs.
    study.tell(parent, 0.25)
    study.tell(child, 0.3)
    assert Lineage(study.trials).superseded() == set()
