"""FMS on a plain PyTorch loop: a small CNN on scikit-learn's 8x8 digits.

python examples/pytorch_digits.py
optuna-dashboard sqlite:///example.db --artifact-dir example-artifacts
"""

from __future__ import annotations

import optuna
from sklearn.datasets import load_digits
import torch
from torch import nn

import optuna_fms


EPOCHS = 15
x, y = load_digits(return_X_y=True)
x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
y = torch.tensor(y)
x_train, y_train, x_valid, y_valid = x[:1200], y[:1200], x[1200:], y[1200:]


def objective(trial: optuna.Trial) -> float:
    channels = trial.suggest_int("channels", 4, 32, log=True)
    lr = trial.suggest_float("lr", 1e-3, 0.5, log=True)
    torch.manual_seed(trial.number)
    model = nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * 16, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    start = optuna_fms.resume(trial, model, optimizer)  # > 0 when continuing a paused trial
    accuracy = 0.0
    for epoch in range(start, EPOCHS):
        for batch in torch.randperm(len(x_train)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = (model(x_valid).argmax(1) == y_valid).float().mean().item()
        optuna_fms.save_checkpoint(trial, model, step=epoch, optimizer=optimizer)
        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return accuracy


if __name__ == "__main__":
    study = optuna.create_study(
        direction="maximize",
        storage="sqlite:///example.db",
        sampler=optuna_fms.FMSSampler(
            seed=0, artifact_store=optuna.artifacts.FileSystemArtifactStore("example-artifacts")
        ),
        pruner=optuna_fms.FMSPruner(max_steps=EPOCHS, min_steps=2),
    )
    study.optimize(objective, callbacks=[optuna_fms.EpochBudget(200)])
    print(study.best_trial.params, study.best_value)
