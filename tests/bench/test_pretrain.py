"""``optuna-fms pretrain-metanet`` on the tiny hub: it learns, writes a loadable file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import optuna_fms
from optuna_fms.bench import Hub
from optuna_fms.bench._pretrain import _evaluate
from optuna_fms.bench._pretrain import _hub_examples
from optuna_fms.bench._pretrain import main_pretrain
from optuna_fms.bench._pretrain import pretrain_metanetwork
from optuna_fms.metanet import PretrainedMetanetwork


pytestmark = pytest.mark.usefixtures("one_thread")


def test_pretraining_learns_to_rank_the_hubs_runs(tiny_dir: Path) -> None:
    hub = Hub.load(tiny_dir)
    net = pretrain_metanetwork(
        [hub], epochs=60, n_runs=12, checkpoint_epochs=(0, 5), seed=0, batch_size=4
    )
    ex = _hub_examples(hub, 12, [0, 5], np.random.default_rng(0))
    torch.manual_seed(0)
    untrained = _evaluate(PretrainedMetanetwork(), ex)
    trained = _evaluate(net, ex)
    # Kendall's tau of the predicted against the true final-score quantile of each run's
    # checkpoints (24 of them) and of the start weights' mean over their runs (3 starts).
    assert trained["tau_runs"] > 0.5 and trained["tau_runs"] > untrained["tau_runs"] + 0.3
    assert trained["tau_starts"] == pytest.approx(1.0)
    info = net.info
    assert info["hubs"] == ["tiny"] and info["n_examples"] == {"tiny": 3 + 12 * 2}
    assert info["fit"]["tiny"] == pytest.approx(trained)
    assert len(info["reference_prediction"]) == 2


def test_command_writes_a_file_the_sampler_loads(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "net.safetensors"
    argv = ["--hubs", str(tiny_dir), "--out", str(out), "--epochs", "2", "--runs", "4"]
    assert main_pretrain(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bytes"] == out.stat().st_size and summary["hubs"] == ["tiny"]
    net = PretrainedMetanetwork.load(out)
    assert net.info["command"] == "optuna-fms pretrain-metanet " + " ".join(argv)
    sampler = optuna_fms.FMSSampler(weights="gmn", metanetwork=out)
    assert sampler.engine.bank.metanetwork is not None
    with pytest.raises(ValueError, match="pretrain-metanet"):
        optuna_fms.FMSSampler(weights="gmn", metanetwork=tmp_path / "missing.safetensors")
