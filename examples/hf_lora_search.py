"""FMS in Hugging Face's Trainer.hyperparameter_search: LoRA rank, alpha, target modules and
learning rate of a fine-tuning run, with paused trials continued from their adapters.

A tiny BERT is built in code and "pretrained" on one task (a few seconds, saved once), then
fine-tuned with LoRA on another. Everything runs on CPU, offline, in a few minutes:

python examples/hf_lora_search.py              # --trials 60 --epochs 6 by default
optuna-dashboard sqlite:///hf-lora-example/fms.db --artifact-dir hf-lora-example/artifacts

Running it again goes on with the same study (more trials, the same paused trials).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from typing import Any
import warnings

import numpy as np
import optuna
import peft
import torch
import transformers

import optuna_fms
from optuna_fms.integration.transformers import FMSTrainer


VOCAB, LENGTH = 100, 16


def make_data(n: int, seed: int, task: str) -> list[dict[str, Any]]:
    """Token sequences; ``pretrain``: is the first token in the upper half of the vocabulary,
    ``finetune``: are most tokens below 40."""
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))
    if task == "pretrain":
        labels = (ids[:, 0] >= VOCAB // 2).long()
    else:
        labels = ((ids < 40).sum(1) > (ids < 40).sum(1).float().median()).long()
    return [{"input_ids": x, "labels": y} for x, y in zip(ids, labels)]


def accuracy(prediction: transformers.EvalPrediction) -> dict[str, float]:
    predicted = np.argmax(prediction.predictions, -1)
    return {"accuracy": float((predicted == prediction.label_ids).mean())}


def training_arguments(folder: str, epochs: int, **kwargs: Any) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=folder,
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        **kwargs,
    )


def pretrain(folder: str) -> str:
    """The base model every trial fine-tunes, trained once and saved with save_pretrained."""
    path = os.path.join(folder, "base")
    if os.path.isdir(path):
        return path
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
    )
    torch.manual_seed(0)
    trainer = transformers.Trainer(
        model=transformers.BertForSequenceClassification(config),
        args=training_arguments(os.path.join(folder, "pretrain"), 4, learning_rate=3e-3),
        train_dataset=make_data(1024, 0, "pretrain"),
        eval_dataset=make_data(256, 1, "pretrain"),
        compute_metrics=accuracy,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # The Trainer prints each evaluation.
        trainer.train()
        score = trainer.evaluate()["eval_accuracy"]
    print(f"pretrained the base model: accuracy {score:.3f} on its own task")
    trainer.save_model(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=60, help="trials in this run")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of a full trial")
    parser.add_argument("--folder", default="hf-lora-example", help="database, artifacts, base")
    cli = parser.parse_args()
    os.makedirs(os.path.join(cli.folder, "artifacts"), exist_ok=True)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(1)  # A model this small: a second thread costs more than it gives.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    started = time.perf_counter()
    base_path = pretrain(cli.folder)

    def model_init(trial: optuna.Trial | None) -> torch.nn.Module:
        base = transformers.BertForSequenceClassification.from_pretrained(base_path)
        if trial is None:  # The Trainer's first call, when it is built.
            return base
        rank = trial.suggest_categorical("lora_r", [2, 4, 8, 16])
        lora = peft.LoraConfig(
            r=rank,
            lora_alpha=rank * trial.suggest_categorical("lora_alpha_over_r", [1, 2, 4]),
            target_modules=trial.suggest_categorical(
                "target_modules", ["query,value", "query,key,value,dense"]
            ).split(","),
            lora_dropout=0.1,
            task_type="SEQ_CLS",
        )
        return peft.get_peft_model(base, lora)

    def hp_space(trial: optuna.Trial) -> dict[str, Any]:
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-2, log=True)}

    storage = f"sqlite:///{os.path.join(cli.folder, 'fms.db')}"
    store = optuna.artifacts.FileSystemArtifactStore(os.path.join(cli.folder, "artifacts"))
    trainer = FMSTrainer(
        model_init=model_init,
        args=training_arguments(os.path.join(cli.folder, "runs"), cli.epochs),
        train_dataset=make_data(512, 2, "finetune"),
        eval_dataset=make_data(256, 3, "finetune"),
        compute_metrics=accuracy,
        metric="eval_accuracy",
    )
    with contextlib.redirect_stdout(io.StringIO()):  # The Trainer prints each evaluation.
        best = trainer.hyperparameter_search(
            backend="optuna",
            hp_space=hp_space,
            n_trials=cli.trials,
            direction="maximize",
            sampler=optuna_fms.FMSSampler(seed=0, artifact_store=store),
            pruner=optuna_fms.FMSPruner(max_steps=cli.epochs),
            storage=storage,
            study_name="hf-lora",
            load_if_exists=True,
        )

    study = optuna.load_study(study_name="hf-lora", storage=storage)
    # FMS's curves, pauses and continuations on the dashboard's study page (study.optimize's
    # callbacks= cannot be passed through hyperparameter_search: written once at the end).
    optuna_fms.DashboardReport(max_steps=cli.epochs).write(study)
    trials = study.trials
    continued = sum("fms:continues" in t.user_attrs for t in trials)  # docs/usage.md
    paused = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    print(
        f"{len(trials)} trials ({paused} paused or stopped, {continued} continuations), "
        f"{optuna_fms.epochs_spent(trials)} epochs trained, {time.perf_counter() - started:.0f} s"
    )
    print(f"best: trial {best.run_id}, eval accuracy {best.objective:.3f}, {best.hyperparameters}")
    print(f"optuna-dashboard {storage} --artifact-dir {os.path.join(cli.folder, 'artifacts')}")


if __name__ == "__main__":
    main()
