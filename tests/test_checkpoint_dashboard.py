"""Checkpoints show up on optuna-dashboard's trial page and download through its artifact route."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
import pytest
from safetensors.torch import load as load_safetensors_bytes
import torch
from wsgi import call_wsgi

from optuna_fms import _attrs
from optuna_fms._checkpoint import save_checkpoint


optuna_dashboard = pytest.importorskip("optuna_dashboard")


def test_checkpoints_listed_and_downloadable(tmp_path: Path) -> None:
    (tmp_path / "artifacts").mkdir()
    store = FileSystemArtifactStore(tmp_path / "artifacts")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    study = optuna.create_study(storage=storage, study_name="ckpt")
    trial = study.ask()
    model = torch.nn.Linear(3, 2)
    ids = [save_checkpoint(trial, model, step=s, artifact_store=store) for s in range(3)]
    trial.report(0.5, 2)
    study.tell(trial, 0.5)
    kept = {"1": ids[1], "2": ids[2]}  # keep_last=2 removed step 0.
    assert study.trials[0].user_attrs[_attrs.CHECKPOINTS] == kept

    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    status, body = call_wsgi(app, f"/api/studies/{study._study_id}", "after=0")
    assert status.startswith("200"), body[:200]
    trials = json.loads(body)["trials"]
    listed = {a["artifact_id"]: a for a in trials[0]["artifacts"]}
    # The removed checkpoint is hidden; the kept ones are listed with their file names.
    assert set(listed) == {ids[1], ids[2]}
    assert listed[ids[2]]["filename"] == "trial-0-step-2.safetensors"
    # The step -> artifact map is visible as a user attribute on the trial page.
    user_attrs = {a["key"]: a["value"] for a in trials[0]["user_attrs"]}
    assert ast.literal_eval(user_attrs[_attrs.CHECKPOINTS]) == kept

    trial_id = trials[0]["trial_id"]
    status, body = call_wsgi(app, f"/artifacts/{study._study_id}/{trial_id}/{ids[2]}")
    assert status.startswith("200")
    tensors = load_safetensors_bytes(body)
    assert torch.equal(tensors["weight"], model.weight.detach())
    # A removed checkpoint is not served.
    status, _ = call_wsgi(app, f"/artifacts/{study._study_id}/{trial_id}/{ids[0]}")
    assert status.startswith("404")
