from __future__ import annotations

import json
from pathlib import Path
import warnings

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore
import pytest
import torch


transformers = pytest.importorskip("transformers")

from extras import cpu_training_args  # noqa: E402
from extras import tiny_bert_config  # noqa: E402

from optuna_fms import _attrs  # noqa: E402
from optuna_fms._checkpoint import read_checkpoint  # noqa: E402
from optuna_fms.integration.transformers import FMSTrainerCallback  # noqa: E402
from optuna_fms.integration.transformers import _epoch_index  # noqa: E402


class _PruneFrom(optuna.pruners.BasePruner):
    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return (trial.last_step or 0) >= self.step


class _Data(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 50, (16, 8), generator=g)
        self.labels = (self.ids[:, 0] > 25).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": self.labels[i],
        }


def _model() -> torch.nn.Module:
    config = tiny_bert_config(num_labels=2)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def _accuracy(pred) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}


def _run(tmp_path: Path, pruner: optuna.pruners.BasePruner):  # type: ignore[no-untyped-def]
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    store = FileSystemArtifactStore(tmp_path / "artifacts")
    study = optuna.create_study(
        direction="maximize", storage=f"sqlite:///{tmp_path / 'db.sqlite3'}", pruner=pruner
    )
    seen: dict[str, object] = {}

    def objective(trial: optuna.Trial) -> float:
        args = cpu_training_args(
            str(tmp_path / "out"),
            num_train_epochs=3,
            per_device_eval_batch_size=16,
            learning_rate=1e-3,
        )
        callback = FMSTrainerCallback(trial, metric="eval_accuracy", artifact_store=store)
        model = _model()
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=_Data(),
            eval_dataset=_Data(),
            compute_metrics=_accuracy,
            callbacks=[callback],
        )
        seen["model"], seen["trainer"] = model, trainer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        callback.check_pruned()
        evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
        return float(evals[-1]["eval_accuracy"])

    study.optimize(objective, n_trials=1)
    return study, store, seen


def test_reports_and_checkpoints_each_epoch(tmp_path: Path) -> None:
    study, store, seen = _run(tmp_path, optuna.pruners.NopPruner())
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [0, 1, 2]
    assert sorted(trial.user_attrs[_attrs.CHECKPOINTS]) == ["1", "2"]

    ckpt = read_checkpoint(trial, artifact_store=store)
    tensors, opt_state, meta = ckpt.tensors, ckpt.optimizer_state, ckpt.metadata
    assert meta["step"] == 2 and opt_state is not None
    fresh = _model()
    fresh.load_state_dict(tensors)
    for (k, a), b in zip(seen["model"].state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    trained_opt = seen["trainer"].optimizer.state_dict()
    assert opt_state["param_groups"][0]["lr"] == trained_opt["param_groups"][0]["lr"]
    assert torch.equal(opt_state["state"][0]["exp_avg"], trained_opt["state"][0]["exp_avg"])
    # The Trainer's own state, for FMSTrainer to continue from: scheduler, step, random states.
    hf = ckpt.extra_state["transformers"]
    assert hf["scheduler"] == seen["trainer"].lr_scheduler.state_dict()
    state = json.loads(hf["trainer_state"])
    assert state["global_step"] == 6 and state["epoch"] == pytest.approx(3.0)
    assert [h["eval_accuracy"] for h in state["log_history"] if "eval_accuracy" in h] == [
        trial.intermediate_values[s] for s in range(3)
    ]
    assert hf["rng"]["cpu"].dtype == torch.uint8 and len(hf["rng"]["python"][1]) == 625

    # An evaluation after training (the trial is finished) is ignored by the callback.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        seen["trainer"].evaluate()
    assert study.trials[0].user_attrs == trial.user_attrs


def test_pruning_stops_training(tmp_path: Path) -> None:
    study, store, seen = _run(tmp_path, _PruneFrom(1))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [0, 1]
    assert seen["trainer"].state.epoch == pytest.approx(2.0)  # The third epoch never ran.
    assert trial.user_attrs[_attrs.CHECKPOINTS].keys() == {"0", "1"}


def test_epoch_index() -> None:
    assert [_epoch_index(e) for e in (0.5, 1.0, 1.0000001, 1.5, 2.0, 3.0)] == [0, 0, 0, 1, 1, 2]
