"""Pausing, claiming and continuing trials from their checkpoints (freeze-thaw)."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path
import subprocess
import sys

import optuna
from optuna.trial import TrialState
import pytest
import torch
import workers
from wsgi import call_wsgi

import optuna_fms
from optuna_fms import _attrs
from optuna_fms._engine import Decision


class _PauseTrialZero(optuna_fms.FMSPruner):
    """Pauses trial 0 at step 3 through the real pause path, and nothing else."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.number == 0 and trial.last_step == 3:
            self._pause(study, trial)
            return True
        return False


class _ContinueWhenPossible(optuna_fms.FMSSampler):
    """Continues any open claim instead of asking the surrogate (the mechanism under test)."""

    def _decide(self, study: optuna.Study) -> Decision | None:
        claims = self.engine.freeze_thaw(study).open_claims()
        if not claims:
            return None
        parent = study._storage.get_trial(claims[0].user_attrs["trial_id"])
        return Decision(fresh={}, ei=0.0, claim=claims[0], parent=parent)


def _study(tmp_path: Path, sampler_cls=_ContinueWhenPossible, pruner=None) -> optuna.Study:
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    return optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'fms.db'}",
        sampler=sampler_cls(seed=0, artifact_store=store, n_startup_trials=0),
        pruner=pruner or _PauseTrialZero(max_steps=workers.STEPS),
    )


def test_continued_trial_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    study = _study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(workers.train_objective, n_trials=2)
    paused, continued = study.trials
    assert paused.state == TrialState.PRUNED
    assert paused.user_attrs[_attrs.PAUSED]["step"] == 3
    assert continued.user_attrs[_attrs.CONTINUES] == {
        "trial": 0,
        "trial_id": paused._trial_id,
        "step": 3,
        "claim": paused.user_attrs[_attrs.PAUSED]["claim"],
    }
    assert continued.params == {"lr": 0.05}

    study.enqueue_trial({"lr": 0.05})
    study.optimize(workers.train_objective, n_trials=1)
    straight = study.trials[-1]
    assert _attrs.CONTINUES not in straight.user_attrs

    assert continued.intermediate_values == straight.intermediate_values
    assert continued.value == straight.value
    store = study.sampler.artifact_store
    a = optuna_fms.load_checkpoint(continued, workers.STEPS - 1, artifact_store=store)
    b = optuna_fms.load_checkpoint(straight, workers.STEPS - 1, artifact_store=store)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # Continuations count only their new epochs.
    assert optuna_fms.epochs_spent(study.trials) == 4 + 4 + workers.STEPS


def test_a_claim_is_taken_once(tmp_path: Path) -> None:
    study = _study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(workers.train_objective, n_trials=3)
    continues = [t.user_attrs.get(_attrs.CONTINUES) for t in study.trials]
    assert continues[1] is not None and continues[2] is None


def test_objective_without_resume_turns_continuation_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def no_resume(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-3, 0.5, log=True)
        for step in range(workers.STEPS):
            optuna_fms.save_checkpoint(trial, {"w": torch.ones(2) * step}, step=step)
            trial.report(float(step), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 1.0

    study = _study(tmp_path)
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        study.optimize(no_resume, n_trials=3)
    assert study.trials[1].user_attrs.get(_attrs.CONTINUES) is not None
    warnings = [r for r in caplog.records if "never called optuna_fms.resume" in r.message]
    assert len(warnings) == 1
    assert study._storage.get_study_system_attrs(study._study_id)[_attrs.CONTINUATION_OFF]
    assert _attrs.CONTINUES not in study.trials[2].user_attrs


def test_pause_without_checkpoint_is_not_continuable(tmp_path: Path) -> None:
    def no_ckpt(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-3, 0.5, log=True)
        for step in range(workers.STEPS):
            trial.report(float(step), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 1.0

    study = _study(tmp_path)
    study.optimize(no_ckpt, n_trials=2)
    assert "claim" not in study.trials[0].user_attrs[_attrs.PAUSED]
    assert _attrs.CONTINUES not in study.trials[1].user_attrs


def test_surrogate_decisions_continue_paused_trials(tmp_path: Path) -> None:
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_fms.FMSSampler(
            seed=1,
            n_startup_trials=3,
            artifact_store=optuna.artifacts.FileSystemArtifactStore(str(store_dir)),
            n_candidates=64,
            n_scratch_epochs=100,
            n_warm_epochs=20,
        ),
        pruner=optuna_fms.FMSPruner(max_steps=workers.STEPS, n_startup_trials=3, tolerance=1.0),
    )
    study.optimize(workers.curve_objective, n_trials=25)
    children = [t for t in study.trials if _attrs.CONTINUES in t.user_attrs]
    assert children, "no paused trial was ever continued"
    parents = [c.user_attrs[_attrs.CONTINUES]["trial"] for c in children]
    assert len(parents) == len(set(parents))
    for child in children:
        parent = study.trials[child.user_attrs[_attrs.CONTINUES]["trial"]]
        assert child.user_attrs[_attrs.RESUMED]
        assert child.params == parent.params
        for step, value in parent.intermediate_values.items():
            assert child.intermediate_values[step] == value


def test_parallel_workers_never_continue_a_trial_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fms.db'}"
    optuna.create_study(study_name="par", storage=url, direction="maximize")
    (tmp_path / "artifacts").mkdir()
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=workers.run_worker,
            args=(url, "par", str(tmp_path / "artifacts"), 8, seed),
        )
        for seed in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    study = optuna.load_study(study_name="par", storage=url)
    assert len(study.trials) == 32
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    parents = [
        t.user_attrs[_attrs.CONTINUES]["trial"]
        for t in study.trials
        if _attrs.CONTINUES in t.user_attrs
    ]
    assert len(parents) == len(set(parents))
    assert parents
    # A finished claim is PRUNED, not a COMPLETE trial without a value: Optuna's own listing
    # of the storage's studies (what the dashboard and `optuna studies` call) still works.
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(url)}
    claims = summaries["par:fms-claims"]
    assert claims.best_trial is None and claims.n_trials >= len(parents)
    assert summaries["par"].best_trial is not None
    # The same listing through optuna-dashboard's study list and Optuna's CLI.
    dashboard = pytest.importorskip("optuna_dashboard")
    status, body = call_wsgi(dashboard.wsgi(optuna.storages.RDBStorage(url)), "/api/studies")
    assert status.startswith("200"), body[:300]
    assert {"par", "par:fms-claims"} <= {
        s["study_name"] for s in json.loads(body)["study_summaries"]
    }
    cli = Path(sys.executable).with_name("optuna")
    listed = subprocess.run(
        [str(cli), "studies", "--storage", url, "-f", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert {"par", "par:fms-claims"} <= {s["name"] for s in json.loads(listed.stdout)}


def test_unreadable_parent_checkpoint_trains_from_scratch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = _study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(workers.train_objective, n_trials=1)
    artifact_id = study.trials[0].user_attrs[_attrs.CHECKPOINTS]["3"]
    (tmp_path / "artifacts" / artifact_id).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        study.optimize(workers.train_objective, n_trials=1)
    child = study.trials[1]
    assert child.state == TrialState.COMPLETE
    assert "trial 0, step 3" in child.user_attrs[_attrs.RESUME_FAILED]
    assert sorted(child.intermediate_values) == list(range(workers.STEPS))
    assert any("cannot continue paused trial 0" in r.message for r in caplog.records)
    assert not study._storage.get_study_system_attrs(study._study_id).get(_attrs.CONTINUATION_OFF)


def test_copy_study_keeps_the_lineage(tmp_path: Path) -> None:
    # optuna.copy_study gives the trials new storage ids (here shifted by another study's
    # trials); the continuation links name the parent by id and by number.
    from optuna_fms._freeze_thaw import Lineage

    study = _study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(workers.train_objective, n_trials=2)
    destination = f"sqlite:///{tmp_path / 'copy.db'}"
    other = optuna.create_study(storage=destination, study_name="other")
    for _ in range(3):
        other.add_trial(optuna.trial.create_trial(value=0.0))
    optuna.copy_study(
        from_study_name=study.study_name,
        from_storage=study._storage,
        to_storage=destination,
        to_study_name="copy",
    )
    copy = optuna.load_study(study_name="copy", storage=destination)
    assert copy.trials[0]._trial_id != study.trials[0]._trial_id
    lineage = Lineage(copy.trials)
    assert [[t.number for t in chain] for chain in lineage.chains()] == [[0, 1]]
    assert lineage.superseded() == {copy.trials[0]._trial_id}
    assert optuna_fms.epochs_spent(copy.trials) == optuna_fms.epochs_spent(study.trials)


def _save_after_should_prune(trial: optuna.Trial) -> float:
    """:func:`workers.train_objective` with the checkpoint saved after ``should_prune``."""
    model, opt = workers.train_model(trial)
    start = optuna_fms.resume(trial, model, opt)
    loss = float("nan")
    for epoch in range(start, workers.STEPS):
        loss = workers.train_epoch(model, opt, epoch)
        trial.report(loss, epoch)
        paused = trial.should_prune()
        optuna_fms.save_checkpoint(trial, model, step=epoch, optimizer=opt)
        if paused:
            raise optuna.TrialPruned()
    return loss


def test_a_checkpoint_saved_after_should_prune_makes_the_pause_continuable(
    tmp_path: Path,
) -> None:
    # Issue 22, item 8: the pause found no checkpoint at its step and opened no claim; the
    # checkpoint saved right after was never continued from (9 of 9 pauses).
    study = _study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(_save_after_should_prune, n_trials=2)
    paused, continued = study.trials
    assert paused.state == TrialState.PRUNED
    pause = paused.user_attrs[_attrs.PAUSED]
    assert pause["step"] == 3 and pause["claim"] is not None
    assert continued.user_attrs[_attrs.CONTINUES]["trial"] == 0
    assert continued.user_attrs[_attrs.RESUMED]
    assert study.sampler.engine.freeze_thaw(study).open_claims() == []

    study.enqueue_trial({"lr": 0.05})
    study.optimize(_save_after_should_prune, n_trials=1)
    straight = study.trials[-1]
    assert _attrs.CONTINUES not in straight.user_attrs
    assert continued.intermediate_values == straight.intermediate_values
    store = study.sampler.artifact_store
    a = optuna_fms.load_checkpoint(continued, workers.STEPS - 1, artifact_store=store)
    b = optuna_fms.load_checkpoint(straight, workers.STEPS - 1, artifact_store=store)
    for key in a:
        assert torch.equal(a[key], b[key])


def test_a_checkpoint_at_another_step_opens_no_claim(tmp_path: Path) -> None:
    # Only the step the pause was decided at makes it continuable.
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-3, 0.5, log=True)
        for epoch in range(workers.STEPS):
            trial.report(0.5, epoch)
            paused = trial.should_prune()
            optuna_fms.save_checkpoint(trial, {"w": torch.zeros(2)}, step=max(epoch - 1, 0))
            if paused:
                raise optuna.TrialPruned()
        return 0.5

    study = _study(tmp_path)
    study.optimize(objective, n_trials=1)
    assert study.trials[0].user_attrs[_attrs.PAUSED] == {"step": 3}  # no claim


def test_the_claims_study_says_what_it_is_and_gc_claims_removes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from optuna_fms._cli import main

    url = f"sqlite:///{tmp_path / 'fms.db'}"
    study = _study(tmp_path)
    study.enqueue_trial({"lr": 0.05})
    study.optimize(workers.train_objective, n_trials=1)
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(url)}
    companion = summaries[f"{study.study_name}:fms-claims"]
    assert companion.user_attrs[_attrs.CLAIMS_OF] == study.study_name
    assert "gc-claims" in companion.user_attrs["fms:description"]
    gc = ["gc-claims", "--storage", url, "--study", study.study_name]
    # Trial 0 is paused with a checkpoint: its claim is open, and nothing is deleted.
    assert main(gc) == 1
    assert "1 paused trial(s)" in capsys.readouterr().err
    study.optimize(workers.train_objective, n_trials=1)
    assert _attrs.read_continuation(study.trials[1].user_attrs) is not None
    assert main(gc) == 0
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == [study.study_name]
    assert len(optuna.load_study(study_name=study.study_name, storage=url).trials) == 2
    assert main(gc) == 0  # Nothing left to remove.
