"""The main job: an FMS study that really trains small networks on scikit-learn's digits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

import optuna_fms


MAX_EPOCHS = 20


@dataclass
class _Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor


def _load_digits(seed: int = 0) -> _Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    xt, xv, yt, yv = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return _Digits(
        torch.from_numpy(xt), torch.from_numpy(yt), torch.from_numpy(xv), torch.from_numpy(yv)
    )


def _build(trial: optuna.Trial) -> tuple[nn.Module, torch.optim.Optimizer, int]:
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    momentum = trial.suggest_float("momentum", 0.0, 0.99)
    weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)
    hidden = trial.suggest_int("hidden", 8, 256, log=True)
    batch_size = trial.suggest_categorical("batch_size", [16, 32, 64, 128])
    torch.manual_seed(trial.number)
    model = nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    return model, optimizer, batch_size


def make_objective(data: _Digits):
    """The objective a user writes: build, resume, train, checkpoint, report, prune."""

    def objective(trial: optuna.Trial) -> float:
        model, optimizer, batch_size = _build(trial)
        start = optuna_fms.resume(trial, model, optimizer)
        accuracy = 0.0
        for epoch in range(start, MAX_EPOCHS):
            order = torch.randperm(
                len(data.x_train), generator=torch.Generator().manual_seed(epoch)
            )
            model.train()
            for batch in order.split(batch_size):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                predicted = model(data.x_valid).argmax(dim=1)
            accuracy = (predicted == data.y_valid).float().mean().item()
            optuna_fms.save_checkpoint(trial, model, step=epoch, optimizer=optimizer)
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    return objective


def _storage(url: str | None) -> str | optuna.storages.BaseStorage | None:
    """The demo's storage; for SQLite, in write-ahead-log mode without a sync per commit.

    A trial writes several small records per epoch (its report, the checkpoint's artifact
    record and map, the forecast). With SQLite's default rollback journal every one is an
    fsync (about 10 ms each on the test machines: a third of the demo's time went there);
    in WAL mode with ``synchronous=NORMAL`` a commit is an append, still safe against a
    crash of the process, and readers such as optuna-dashboard do not block the writer.
    """
    if url is None or not url.startswith("sqlite:"):
        return url
    import sqlalchemy

    storage = optuna.storages.RDBStorage(url)

    def on_connect(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # Reconnect, so that every connection has the pragmas.
    return storage


def run_demo(
    *,
    storage: str | None = "sqlite:///fms.db",
    artifact_dir: str = "artifacts",
    study_name: str = "fms-digits",
    epochs: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> optuna.Study:
    """Run (or resume) the digits study until ``epochs`` epochs have been trained.

    ``storage=None`` keeps the study in memory.

    Examples
    --------
    >>> import tempfile
    >>> study = run_demo(storage=None, artifact_dir=tempfile.mkdtemp(), epochs=20, progress=False)
    >>> optuna_fms.epochs_spent(study.trials)
    20
    """
    from tqdm.auto import tqdm

    Path(artifact_dir).mkdir(parents=True, exist_ok=True)
    store = optuna.artifacts.FileSystemArtifactStore(artifact_dir)
    study = optuna.create_study(
        study_name=study_name,
        storage=_storage(storage),
        direction="maximize",
        load_if_exists=True,
        sampler=optuna_fms.FMSSampler(seed=seed, artifact_store=store),
        pruner=optuna_fms.FMSPruner(max_steps=MAX_EPOCHS, min_steps=2),
    )
    budget = optuna_fms.EpochBudget(epochs)
    report = optuna_fms.DashboardReport(every=10)  # Writes nothing without optuna-dashboard.
    bar = tqdm(total=epochs, unit="epoch", disable=not progress, desc="FMS on digits")

    def show(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # No deep copies: ``study.trials`` and ``study.best_trials`` copy every trial after
        # every trial (about a tenth of the demo's time at 250 epochs).
        trials = study.get_trials(deepcopy=False)
        spent = optuna_fms.epochs_spent(trials)
        bar.update(min(spent, epochs) - bar.n)
        done = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        values = [v for v in done if v is not None]
        if values:
            bar.set_postfix(trials=len(trials), best=f"{max(values):.4f}")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study.optimize(make_objective(_load_digits(seed)), callbacks=[budget, show, report])
    finally:
        bar.close()
        report.write(study)
    return study


def summarize(study: optuna.Study, storage: str, artifact_dir: str) -> str:
    """What the demo prints at the end: the best trial and how to look at the study."""
    trials = study.trials
    states = [t.state for t in trials]
    continued = sum(1 for t in trials if optuna_fms._attrs.read_continuation(t.user_attrs))
    spent = optuna_fms.epochs_spent(trials)
    lines = [
        f"Trials: {len(trials)} ({states.count(optuna.trial.TrialState.COMPLETE)} complete, "
        f"{states.count(optuna.trial.TrialState.PRUNED)} paused, {continued} continuations)",
        f"Epochs trained: {spent} (full-budget training of the same configurations: "
        f"{len({tuple(sorted(t.params.items())) for t in trials}) * MAX_EPOCHS})",
    ]
    if optuna.trial.TrialState.COMPLETE in states:
        best = study.best_trial
        lines.append(f"Best validation accuracy: {best.value:.4f} (trial {best.number})")
        lines.append(f"Best parameters: {best.params}")
    else:
        lines.append(f"No trial ran all {MAX_EPOCHS} epochs (the budget went to paused trials).")
    try:
        rec = optuna_fms.recommend(study)
        lines.append(
            "Recommended (optuna_fms.recommend, forecast final accuracy): "
            f"{rec.mean:.4f} ± {rec.std:.4f}, trial {rec.trial}, {rec.params}"
        )
    except (optuna_fms.SurrogateFitError, ValueError):
        pass
    lines += [
        "",
        "Look at it in optuna-dashboard:",
        f"  optuna-dashboard {storage} --artifact-dir {artifact_dir}",
    ]
    return "\n".join(lines)
