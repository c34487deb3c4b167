from __future__ import annotations

from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
import pytest
import torch


pl = pytest.importorskip("lightning.pytorch")

from optuna_fms import _attrs  # noqa: E402
from optuna_fms._checkpoint import read_checkpoint  # noqa: E402
from optuna_fms.integration.lightning import FMSCallback  # noqa: E402


class _MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class _PruneFrom(optuna.pruners.BasePruner):
    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return (trial.last_step or 0) >= self.step


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _run(tmp_path: Path, pruner: optuna.pruners.BasePruner):  # type: ignore[no-untyped-def]
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    store = FileSystemArtifactStore(tmp_path / "artifacts")
    study = optuna.create_study(
        direction="maximize", storage=f"sqlite:///{tmp_path / 'db.sqlite3'}", pruner=pruner
    )
    seen: dict[str, object] = {}

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(0)
        model = _MLP()
        trainer = pl.Trainer(
            max_epochs=3,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[FMSCallback(trial, "val_acc", artifact_store=store)],
        )
        seen["model"], seen["trainer"] = model, trainer
        trainer.fit(model, _loader(), _loader())
        return float(trainer.callback_metrics["val_acc"])

    study.optimize(objective, n_trials=1)
    return study, store, seen


def test_reports_and_checkpoints_each_epoch(tmp_path: Path) -> None:
    study, store, seen = _run(tmp_path, optuna.pruners.NopPruner())
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [0, 1, 2]  # Sanity check not reported.
    assert sorted(trial.user_attrs[_attrs.CHECKPOINTS]) == ["1", "2"]  # keep_last=2

    ckpt = read_checkpoint(trial, artifact_store=store)
    tensors, opt_state, meta = ckpt.tensors, ckpt.optimizer_state, ckpt.metadata
    assert meta["step"] == 2 and meta["structure"] is not None
    fresh = _MLP()
    fresh.load_state_dict(tensors)
    for a, b in zip(seen["model"].state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    opt = fresh.configure_optimizers()
    opt.load_state_dict(opt_state)
    trained_opt = seen["trainer"].optimizers[0].state_dict()
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], trained_opt["state"][0]["exp_avg"])


def test_pruning_stops_training(tmp_path: Path) -> None:
    study, store, seen = _run(tmp_path, _PruneFrom(1))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [0, 1]
    assert seen["trainer"].current_epoch == 1  # Epoch 2 never ran.
    # The checkpoint the paused trial would resume from exists.
    assert trial.user_attrs[_attrs.CHECKPOINTS].keys() == {"0", "1"}
    assert read_checkpoint(trial, artifact_store=store).metadata["step"] == 1
