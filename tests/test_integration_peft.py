"""PEFT adapters as checkpoints, and ``FMSTrainer.hyperparameter_search`` with freeze-thaw.

Real ``transformers.Trainer`` runs on a tiny BERT built in code with a real peft LoRA adapter,
SQLite storage and a local artifact store: trials are paused and continued, and a continued
trial's evaluation curve is the one an uninterrupted run of its configuration gives.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import io
import os
from pathlib import Path
from typing import Any
import warnings

from extras import cpu_training_args
from extras import require
from extras import tiny_bert_config
import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState
import pytest
import torch

import optuna_fms
from optuna_fms import _attrs


EPOCHS = 3


@pytest.fixture(autouse=True)
def _needs_peft() -> Iterator[None]:
    require("transformers")
    require("peft")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Tiny models: several threads cost more than they give.
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# A tiny sequence classifier with a LoRA adapter.
# ---------------------------------------------------------------------------------------------


def _data() -> list[dict[str, Any]]:
    ids = torch.randint(1, 50, (32, 8), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": x, "labels": int(x[0] > 25)} for x in ids]


def _model_init(trial: Any) -> torch.nn.Module:
    import peft
    import transformers

    # Dropout 0.1 in the base and in LoRA: the random states matter for a continuation.
    config = tiny_bert_config()
    base = transformers.BertForSequenceClassification(config)
    if trial is None:  # The Trainer's own call when it is built.
        return base
    rank = trial.suggest_categorical("r", [2, 4])
    lora = peft.LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["query", "value"],
        lora_dropout=0.1,
        task_type="SEQ_CLS",
    )
    return peft.get_peft_model(base, lora)


def _trainer(tmp_path: Path, **kwargs: Any) -> Any:

    from optuna_fms.integration.transformers import FMSTrainer

    options: dict[str, Any] = dict(num_train_epochs=EPOCHS, learning_rate=5e-3)
    options.update(kwargs.pop("args", {}))
    kwargs.setdefault("model_init", _model_init)
    return FMSTrainer(
        args=cpu_training_args(str(tmp_path / "out"), **options),
        train_dataset=_data(),
        eval_dataset=_data(),
        **kwargs,
    )


def _search(tmp_path: Path, trainer: Any, n_trials: int, **kwargs: Any) -> optuna.Study:
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    store = FileSystemArtifactStore(tmp_path / "artifacts")
    storage = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    options: dict[str, Any] = dict(
        sampler=optuna_fms.FMSSampler(artifact_store=store, seed=0, n_startup_trials=2),
        pruner=optuna_fms.FMSPruner(max_steps=EPOCHS, n_startup_trials=2),
        storage=storage,
        study_name="lora",
    )
    options.update(kwargs)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.hyperparameter_search(
            backend="optuna", n_trials=n_trials, direction="minimize", **options
        )
    return optuna.load_study(study_name="lora", storage=storage)


def _uninterrupted_curve(tmp_path: Path, params: dict[str, Any], **kwargs: Any) -> list[float]:
    kwargs.setdefault("model_init", lambda _: _model_init(optuna.trial.FixedTrial(params)))
    trainer = _trainer(tmp_path / "reference", **kwargs)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]


# ---------------------------------------------------------------------------------------------
# hyperparameter_search with FMSSampler and FMSPruner.
# ---------------------------------------------------------------------------------------------


def test_search_pauses_and_continues_trials_exactly(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    study = _search(tmp_path, trainer, n_trials=4)
    trials = study.trials
    paused = [t for t in trials if _attrs.PAUSED in t.user_attrs]
    continued = [t for t in trials if _attrs.CONTINUES in t.user_attrs]
    assert paused and all(t.state == TrialState.PRUNED for t in paused)
    assert continued and all(t.user_attrs.get(_attrs.RESUMED) for t in continued)

    for trial in trials:  # One report per epoch, at the epoch index (not the global step).
        assert sorted(trial.intermediate_values) == list(range(len(trial.intermediate_values)))
    for child in continued:
        parent = trials[child.user_attrs[_attrs.CONTINUES]["trial"]]
        assert child.params == parent.params
        # The parent checkpointed the adapter only (plus the head the adapter trains).
        store = FileSystemArtifactStore(tmp_path / "artifacts")
        ckpt = optuna_fms.read_checkpoint(parent, artifact_store=store)
        assert ckpt.metadata["adapter"]["layers"] and ckpt.extra_state is not None
        assert all("lora_" in k or ".classifier." in k for k in ckpt.tensors), list(ckpt.tensors)

        reference = _uninterrupted_curve(tmp_path, child.params)
        assert len(reference) == EPOCHS
        if child.state == TrialState.COMPLETE:
            assert sorted(child.intermediate_values) == list(range(EPOCHS))
            assert child.value == child.intermediate_values[EPOCHS - 1]
        for step, value in child.intermediate_values.items():
            assert value == pytest.approx(reference[step], abs=1e-6, rel=0), (child.number, step)
    assert any(t.state == TrialState.COMPLETE for t in continued)


def test_full_model_paused_between_epochs_continues_exactly(tmp_path: Path) -> None:
    """No adapter (the whole model is checkpointed), evaluations every 2 of the 4 optimizer
    steps of an epoch, pauses at global step 6: the continuation starts in the middle of an
    epoch (the Trainer skips the batches already seen) and still follows the uninterrupted run."""

    def full_model(trial: Any) -> torch.nn.Module:
        return _model_init(None)  # The BERT without an adapter, whatever the trial.

    def learning_rate(trial: optuna.Trial) -> dict[str, Any]:
        return {"learning_rate": trial.suggest_categorical("learning_rate", [1e-3, 5e-3])}

    steps = {"eval_strategy": "steps", "eval_steps": 2}
    trainer = _trainer(tmp_path, model_init=full_model, step="global_step", args=steps)
    study = _search(
        tmp_path,
        trainer,
        n_trials=4,
        hp_space=learning_rate,
        pruner=optuna_fms.FMSPruner(max_steps=4 * EPOCHS, min_steps=7, n_startup_trials=2),
    )
    continued = [t for t in study.trials if t.user_attrs.get(_attrs.RESUMED)]
    assert continued
    for child in continued:
        assert child.user_attrs[_attrs.CONTINUES]["step"] % 4 != 0  # In mid-epoch.
        ckpt = optuna_fms.read_checkpoint(
            study.trials[child.user_attrs[_attrs.CONTINUES]["trial"]],
            artifact_store=FileSystemArtifactStore(tmp_path / "artifacts"),
        )
        assert ckpt.metadata["adapter"] is None and "classifier.weight" in ckpt.tensors
        args = {**steps, **child.params}
        reference = _uninterrupted_curve(tmp_path, {}, model_init=full_model, args=args)
        assert sorted(child.intermediate_values) == list(range(2, 2 * len(reference) + 1, 2))
        for step, value in child.intermediate_values.items():
            assert value == pytest.approx(reference[step // 2 - 1], abs=1e-6, rel=0), step


def test_search_without_a_completed_trial_says_why(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match="no trial completed"):
        _search(tmp_path, trainer, n_trials=2)  # Both startup trials are paused.


# ---------------------------------------------------------------------------------------------
# Misconfigurations: a ValueError that says what to change.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trainer_kwargs", "match"),
    [
        ({"args": {"eval_strategy": "no"}}, "eval_strategy='epoch'"),
        (
            {"args": {"load_best_model_at_end": True, "save_strategy": "epoch"}},
            "load_best_model_at_end=False",
        ),
        ({"args": {"eval_strategy": "steps", "eval_steps": 2}}, "step='global_step'"),
        ({"args": {"num_train_epochs": 2}}, "max_steps is 3 but the Trainer trains 2"),
        ({"metric": "eval_accuracy"}, r"metrics are \['epoch', 'eval_loss'"),
    ],
)
def test_misconfigured_search_raises(
    tmp_path: Path, trainer_kwargs: dict[str, Any], match: str
) -> None:
    trainer = _trainer(tmp_path, **trainer_kwargs)
    with pytest.raises(ValueError, match=match):
        _search(tmp_path, trainer, n_trials=1)


def test_compute_objective_and_other_backends_are_refused(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match="instead of compute_objective"):
        trainer.hyperparameter_search(compute_objective=lambda m: m["eval_loss"])
    with pytest.raises(ValueError, match="backend='optuna'"):
        trainer.hyperparameter_search(backend="ray")
    # The Trainer's Optuna backend would hand callbacks= to create_study (a TypeError there).
    with pytest.raises(ValueError, match="passes no callbacks="):
        trainer.hyperparameter_search(callbacks=[optuna_fms.EpochBudget(10)])


# ---------------------------------------------------------------------------------------------
# Adapter checkpoints: size, contents, restore.
# ---------------------------------------------------------------------------------------------


def _frozen_base(width: int = 1024, depth: int = 6) -> torch.nn.Module:
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


def _lora(base: torch.nn.Module, targets: list[str] | None = None, **kwargs: Any) -> Any:
    import peft

    if targets is None:
        targets = [name for name, m in base.named_modules() if isinstance(m, torch.nn.Linear)]
    kwargs = {"r": 4, "lora_alpha": 16, **kwargs}
    config = peft.LoraConfig(target_modules=targets, **kwargs)
    return peft.get_peft_model(base, config)


def _artifact_size(store_dir: Path, artifact_id: str) -> int:
    return os.path.getsize(store_dir / artifact_id)


def test_adapter_checkpoint_is_the_adapters_size(tmp_path: Path) -> None:
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    store = FileSystemArtifactStore(store_dir)
    trial = optuna.create_study().ask()

    full_id = optuna_fms.save_checkpoint(trial, _frozen_base(), 0, artifact_store=store)
    model = _lora(_frozen_base())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # LoRA starts with B = 0: make the adapter do something.
    adapter_id = optuna_fms.save_checkpoint(trial, model, 1, artifact_store=store)

    base_bytes = sum(p.numel() * p.element_size() for p in _frozen_base().parameters())
    adapter_bytes = sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n
    )
    full, adapter = _artifact_size(store_dir, full_id), _artifact_size(store_dir, adapter_id)
    print(
        f"\nfull model checkpoint {full / 2**20:.2f} MiB, adapter checkpoint "
        f"{adapter / 2**20:.3f} MiB (adapter tensors {adapter_bytes / 2**20:.3f} MiB), "
        f"ratio {full / adapter:.0f}"
    )
    assert base_bytes > 24 * 2**20 and full >= base_bytes
    assert adapter_bytes <= adapter < adapter_bytes + 64 * 2**10  # Tensors plus a header.
    assert full / adapter > 50

    ckpt = optuna_fms.read_checkpoint(trial, 1, artifact_store=store)
    assert set(ckpt.tensors) == {
        f"base_model.model.{2 * i}.lora_{ab}.weight" for i in range(6) for ab in "AB"
    }
    description = ckpt.metadata["adapter"]
    assert description["peft_type"] == "LORA" and description["config"]["r"] == 4
    assert description["base_model"]["class"] == "torch.nn.modules.container.Sequential"
    assert description["layers"]["base_model.model.0"] == {
        "r": 4,
        "lora_alpha": 16.0,
        "scaling": 4.0,
    }

    # Restored onto a fresh base with its own (untrained) adapter: the same function.
    fresh = _lora(_frozen_base())
    x = torch.randn(3, 1024)
    assert not torch.allclose(fresh(x), model(x))
    from optuna_fms._checkpoint._adapter import load_weights

    load_weights(fresh, ckpt.tensors, description)
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(ValueError, match="load it into the peft.PeftModel"):
        load_weights(_frozen_base(), ckpt.tensors, description)
    with pytest.raises(ValueError, match="does not fit the model's adapter"):
        load_weights(_lora(_frozen_base(), targets=["0"]), ckpt.tensors, description)


def test_rslora_scaling_is_recorded(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(tmp_path)
    trial = optuna.create_study().ask()
    model = _lora(_frozen_base(width=8, depth=2), use_rslora=True)
    optuna_fms.save_checkpoint(trial, model, 0, artifact_store=store)
    layers = optuna_fms.read_checkpoint(trial, artifact_store=store).metadata["adapter"]["layers"]
    assert layers["base_model.model.2"]["scaling"] == pytest.approx(16 / 2.0)  # alpha/sqrt(r)


def test_resume_restores_an_adapter_in_a_hand_written_loop(tmp_path: Path) -> None:
    """optuna_fms.resume with a PeftModel: the continued curve is the uninterrupted one."""
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    y = x.sum(1, keepdim=True)
    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    store = FileSystemArtifactStore(store_dir)

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        model = _lora(base, r=trial.suggest_categorical("r", [2, 4]))
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
        start = optuna_fms.resume(trial, model, opt, artifact_store=store)
        value = float("nan")
        for epoch in range(start, 4):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            optuna_fms.save_checkpoint(trial, model, epoch, optimizer=opt, artifact_store=store)
            with torch.no_grad():
                value = float(torch.nn.functional.mse_loss(model(x), y))
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        sampler=optuna_fms.FMSSampler(artifact_store=store, seed=0, n_startup_trials=2),
        pruner=optuna_fms.FMSPruner(max_steps=4, n_startup_trials=2),
    )
    study.optimize(objective, n_trials=3)
    continued = [t for t in study.trials if t.user_attrs.get(_attrs.RESUMED)]
    assert continued
    for child in continued:
        assert len(child.intermediate_values) == 4
        reference = optuna.create_study()  # No FMS sampler: never continued.
        reference.enqueue_trial(child.params)
        reference.optimize(objective, n_trials=1)
        expected = reference.trials[0].intermediate_values
        assert child.intermediate_values == pytest.approx(expected, abs=1e-6)
