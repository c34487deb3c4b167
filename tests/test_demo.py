"""The demo's summary of a study (the main job's last output)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from optuna.trial import create_trial
import pytest
from wsgi import call_wsgi

from optuna_fms import _attrs
from optuna_fms._demo import MAX_EPOCHS
from optuna_fms._demo import run_demo
from optuna_fms._demo import summarize


def _study(states: list[TrialState]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i, state in enumerate(states):
        steps = MAX_EPOCHS if state == TrialState.COMPLETE else 2
        curve = {s: 0.1 * i + 0.01 * s for s in range(steps)}
        study.add_trial(
            create_trial(
                params={"lr": 0.1 * (i + 1)},
                distributions={"lr": FloatDistribution(0.01, 1.0)},
                intermediate_values=curve,
                value=curve[steps - 1] if state == TrialState.COMPLETE else None,
                state=state,
            )
        )
    return study


def test_a_study_of_paused_trials_only_is_summarised() -> None:
    # Every trial paused: there is no best complete trial (study.best_trial raises).
    text = summarize(_study([TrialState.PRUNED] * 3), "sqlite:///x.db", "artifacts")
    assert f"No trial ran all {MAX_EPOCHS} epochs" in text
    assert "Best validation accuracy" not in text
    assert "optuna-dashboard sqlite:///x.db --artifact-dir artifacts" in text


def test_the_best_complete_trial_is_summarised() -> None:
    study = _study([TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED])
    text = summarize(study, "sqlite:///x.db", "artifacts")
    assert f"Best validation accuracy: {study.best_value:.4f} (trial 1)" in text


def test_the_demos_storage_lists_its_studies(tmp_path: Path) -> None:
    # After the main job (a short run of it), Optuna's own study listing, the one
    # optuna-dashboard's study list and `optuna studies` call, works on its storage: the
    # companion study that holds the pauses' claims is a valid Optuna study.
    url = f"sqlite:///{tmp_path / 'fms.db'}"
    study = run_demo(
        storage=url, artifact_dir=str(tmp_path / "artifacts"), epochs=30, progress=False
    )
    assert any(_attrs.read_pause(t.user_attrs) for t in study.trials), "the demo paused nothing"
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert names == {"fms-digits", "fms-digits:fms-claims"}
    dashboard = pytest.importorskip("optuna_dashboard")
    status, body = call_wsgi(dashboard.wsgi(optuna.storages.RDBStorage(url)), "/api/studies")
    assert status.startswith("200"), body[:300]
    assert {s["study_name"] for s in json.loads(body)["study_summaries"]} == names
