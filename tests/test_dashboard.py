"""DashboardReport: FMS figure, note, attributes and checkpoints via optuna-dashboard's API.

The study is built through the same attribute contract FMSSampler/FMSPruner write
(``fms:paused``, ``fms:forecast``, ``fms:continues``, real checkpoints and a real
:func:`optuna_fms.resume`), without the surrogate, so that it is small and deterministic.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
import sys
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState
import pytest
import torch
from wsgi import call_wsgi

from optuna_fms import _attrs
from optuna_fms._checkpoint import save_checkpoint
from optuna_fms._dashboard import GRAPH_OBJECT_ID
from optuna_fms._dashboard import DashboardReport
from optuna_fms._resume import resume


STEPS = 8


def _curve(q: float, step: int) -> float:
    return q * (1 - math.exp(-0.5 * (step + 1)))


def make_study(tmp_path: Path) -> tuple[optuna.storages.BaseStorage, FileSystemArtifactStore, Any]:
    """An FMS-shaped study: complete, paused, paused-then-continued, and running trials.

    - trial 0: q=0.9, complete after 8 steps;
    - trial 1: q=0.8, paused at step 3 with a checkpoint and a forecast;
    - trial 2: q=0.3, paused at step 2 (its checkpoint too), never continued;
    - trial 3: continues trial 1 from step 3 (resume() copies the curve), complete;
    - trial 4: q=0.6, running at step 4 with a forecast.
    """
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'fms.db'}")
    study = optuna.create_study(
        storage=storage,
        study_name="fms-dashboard",
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    model = torch.nn.Linear(2, 1)

    def run(q: float, stop: int, start: int = 0) -> optuna.Trial:
        trial = study.ask()
        trial.suggest_float("q", 0.0, 1.0)
        if start:
            assert resume(trial, model, artifact_store=store) == start
        for step in range(start, stop + 1):
            save_checkpoint(trial, model, step=step, artifact_store=store)
            trial.report(_curve(q, step), step)
        return trial

    study.enqueue_trial({"q": 0.9})
    study.tell(run(0.9, STEPS - 1), _curve(0.9, STEPS - 1))
    for q, step, mean in ((0.8, 3, 0.78), (0.3, 2, 0.31)):
        study.enqueue_trial({"q": q})
        trial = run(q, step)
        trial.set_user_attr(_attrs.FORECAST, {"step": step, "mean": mean, "std": 0.04})
        trial.set_user_attr(_attrs.PAUSED, {"step": step, "claim": 100 + step})
        study.tell(trial, state=TrialState.PRUNED)
    parent = study.trials[1]
    study.enqueue_trial(
        parent.params,
        user_attrs={_attrs.CONTINUES: {"trial": 1, "trial_id": parent._trial_id, "step": 3}},
    )
    study.tell(run(0.8, STEPS - 1, start=4), _curve(0.8, STEPS - 1))
    study.enqueue_trial({"q": 0.6})
    running = run(0.6, 4)
    running.set_user_attr(_attrs.FORECAST, {"step": 4, "mean": 0.58, "std": 0.1})
    return storage, store, study


def _traces(figure: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in figure["data"]}


def test_study_api_returns_figure_note_attributes_and_checkpoints(tmp_path: Path) -> None:
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    storage, store, study = make_study(tmp_path)
    assert DashboardReport(top=3).write(study)

    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    status, body = call_wsgi(app, f"/api/studies/{study._study_id}", "after=0")
    assert status.startswith("200"), body[:300]
    detail = json.loads(body)

    # The figure: one plotly graph object under a fixed id, overwritten on each write.
    graphs = {g["id"]: g["graph_object"] for g in detail["plotly_graph_objects"]}
    assert list(graphs) == [GRAPH_OBJECT_ID]
    traces = _traces(json.loads(graphs[GRAPH_OBJECT_ID]))
    # Trial 3 continues trial 1: one joined curve, parent's steps 0..3 then the child's 4..7.
    joined = traces["trial 1→3"]
    assert joined["x"] == list(range(STEPS))
    assert joined["text"] == ["trial 1"] * 4 + ["trial 3"] * 4
    assert joined["y"][3] == pytest.approx(_curve(0.8, 3), rel=1e-4)
    # Leading configurations in colour (top=3 by best value), the rest in one grey trace.
    assert {"trial 0", "trial 1→3", "trial 4"} <= set(traces)
    assert traces["other configurations (1)"]["text"][0] == "trial 2"
    # Pauses marked: trial 1 (continued later) and trial 2 (not).
    assert traces["paused, then continued"]["text"] == [
        "trial 1 paused at step 3, continued by trial 3"
    ]
    assert traces["paused"]["text"] == ["trial 2 paused at step 2"]
    # Forecast band of the running leader, from its last value to mean ± 2 std at the end.
    band = traces["forecast ±2σ (trial 4)"]
    assert band["fill"] == "toself"
    assert band["x"] == [4, STEPS - 1, STEPS - 1, 4]
    assert band["y"][1:3] == pytest.approx([0.58 + 0.2, 0.58 - 0.2])
    assert traces["trial 4 forecast"]["error_y"]["array"] == [pytest.approx(0.2)]
    # A complete chain has no band (its final value is known).
    assert "forecast ±2σ (trial 3)" not in traces

    # The note: what FMS did.
    note = detail["note"]["body"]
    assert note.startswith("## Forecasting Model Search")
    assert "| Trials started | 5 (4 fresh configurations, 1 continuations) |" in note
    assert "| Paused | 2 (1 continued later, 1 continuable now) |" in note
    # Epochs: 8 + 4 + 3 + 4 (trial 3's own) + 5 (running) = 24 of 4 x 8 = 32.
    assert "| Epochs trained | 24 |" in note
    assert "| Epochs saved | 8 (25%) |" in note
    assert "| 1 | 3 | 3 | complete |" in note

    # Per trial: FMS's user attributes and the checkpoints as artifacts.
    trials = {t["number"]: t for t in detail["trials"]}
    attrs = {
        n: {
            a["key"]: json.loads(a["value"]) for a in t["user_attrs"] if a["key"] != _attrs.RESUMED
        }
        for n, t in trials.items()
    }
    assert attrs[1][_attrs.PAUSED]["step"] == 3
    assert attrs[1][_attrs.FORECAST] == {"step": 3, "mean": 0.78, "std": 0.04}
    assert attrs[3][_attrs.CONTINUES]["trial"] == 1
    assert set(attrs[1][_attrs.CHECKPOINTS]) == {"2", "3"}  # keep_last=2
    names = {a["filename"] for a in trials[1]["artifacts"]}
    assert "trial-1-step-3.safetensors" in names
    names = {a["filename"] for a in trials[3]["artifacts"]}
    assert "trial-3-step-7.safetensors" in names


def test_rewrite_replaces_figure_and_bumps_note(tmp_path: Path) -> None:
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    storage, _, study = make_study(tmp_path)
    report = DashboardReport(top=1)
    report.write(study)
    report.write(study)
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    attrs = storage.get_study_system_attrs(study._study_id)
    graphs = get_plotly_graph_objects(attrs)
    assert list(graphs) == [GRAPH_OBJECT_ID]
    assert json.loads(graphs[GRAPH_OBJECT_ID]) == report.figure(study)
    assert attrs["dashboard:note_ver"] == 2
    assert optuna_dashboard.get_note(study) == report.note(study)


def test_callback_writes_every_n_trials(tmp_path: Path) -> None:
    pytest.importorskip("optuna_dashboard")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite3'}")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1, 1)
        for step in range(3):
            trial.report(x * x + 1 / (step + 1), step)
        return x * x

    study.optimize(objective, n_trials=7, callbacks=[DashboardReport(every=3)])
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs["dashboard:note_ver"] == 2  # After trials 2 and 5.
    assert any(k.startswith(f"dashboard:plot_data:{GRAPH_OBJECT_ID}:") for k in attrs)


def test_without_optuna_dashboard_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, study = make_study(tmp_path)
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import raises ImportError
    report = DashboardReport(every=1)
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        assert report.write(study) is False
        report(study, study.trials[0])
    assert sum("optuna-dashboard is not installed" in r.message for r in caplog.records) == 1
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert not [k for k in attrs if k.startswith("dashboard:")]
    # The figure and note are still available as plain data.
    assert report.figure(study)["data"]
    assert "Trials started" in report.note(study)


def test_minimize_empty_and_odd_trials() -> None:
    study = optuna.create_study()
    report = DashboardReport()
    assert report.figure(study)["data"] == []
    assert "| Trials started | 0 " in report.note(study)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.5},
            distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            value=1.0,
            intermediate_values={0: 3.0, 1: float("nan"), 2: 1.0},
        )
    )
    # A continuation whose parent is gone from the study, not resumed: drawn on its own.
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.PRUNED,
            intermediate_values={0: 2.0},
            user_attrs={_attrs.CONTINUES: {"trial": 99, "trial_id": 999, "step": 5}},
        )
    )
    figure = report.figure(study)
    json.dumps(figure, allow_nan=False)  # NaN is written as null, plotly's gap.
    traces = _traces(figure)
    assert traces["trial 1"]["y"] == [3.0, None, 1.0]
    assert list(traces) == ["trial 1", "trial 2"]  # minimize: lowest value (1.0) first.
    assert "minimize" in figure["layout"]["yaxis"]["title"]["text"]


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        DashboardReport(every=0)
    with pytest.raises(ValueError):
        DashboardReport(top=-1)


def test_an_absurd_forecast_is_left_out_of_the_figure() -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for step in range(2):
        trial.report(0.5, step)
    trial.set_user_attr(_attrs.FORECAST, {"step": 1, "mean": 0.5, "std": 1e308})
    figure = DashboardReport(max_steps=5).figure(study)
    json.dumps(figure, allow_nan=False)  # raised OverflowError-born infinities before
    assert not any("forecast" in str(trace.get("name", "")) for trace in figure["data"])
