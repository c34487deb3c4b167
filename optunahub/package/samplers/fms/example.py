"""FMSSampler and FMSPruner on a tiny PyTorch classifier, offline, in a few seconds.

Every epoch saves a checkpoint; FMSPruner pauses trials whose next epoch is not worth it,
and FMSSampler may later continue a paused trial from its checkpoint (freeze-thaw). The
study lives in memory and the checkpoints in a temporary folder.

    python example.py
"""

from __future__ import annotations

from pathlib import Path
import tempfile

import optuna
import optunahub
import torch
from torch import nn


EPOCHS = 10
EPOCH_BUDGET = 100

# Loaded from this checkout of the registry, so the example runs offline. From the
# published registry: fms = optunahub.load_module("samplers/fms").
fms = optunahub.load_local_module(
    package="samplers/fms", registry_root=str(Path(__file__).resolve().parents[2])
)


def make_data(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Is a point outside a circle (half of them are)? 4 inputs, 2 of them noise, 5% flipped."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1536, 4, generator=generator)
    y = (x[:, :2].norm(dim=1) > 1.18).long()
    flip = torch.rand(1536, generator=generator) < 0.05
    y = torch.where(flip, 1 - y, y)
    return x[:1024], y[:1024], x[1024:], y[1024:]


X_TRAIN, Y_TRAIN, X_VALID, Y_VALID = make_data()


def objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    hidden = trial.suggest_int("hidden", 2, 32, log=True)
    torch.manual_seed(trial.number)
    model = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    # 0 for a new configuration; for a continuation, the step after its parent's pause.
    start = fms.resume(trial, model, optimizer)
    accuracy = 0.0
    for epoch in range(start, EPOCHS):
        for batch in torch.split(torch.randperm(len(X_TRAIN)), 32):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(X_TRAIN[batch]), Y_TRAIN[batch])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        with torch.no_grad():
            accuracy = (model(X_VALID).argmax(1) == Y_VALID).float().mean().item()
        fms.save_checkpoint(trial, model, step=epoch, optimizer=optimizer)
        trial.report(accuracy, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()  # Paused: FMSSampler may continue it later.
    return accuracy


def main() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as artifacts:
        study = optuna.create_study(
            direction="maximize",
            sampler=fms.FMSSampler(
                seed=0, artifact_store=optuna.artifacts.FileSystemArtifactStore(artifacts)
            ),
            pruner=fms.FMSPruner(max_steps=EPOCHS),
        )
        # Stop after EPOCH_BUDGET epochs really trained, however they were split into trials.
        study.optimize(objective, callbacks=[fms.EpochBudget(EPOCH_BUDGET)])
        recommended = fms.recommend(study)

    # A pause and a continuation are recorded in the trials' user attributes.
    paused = [t for t in study.trials if "fms:paused" in t.user_attrs]
    continued = [t for t in study.trials if "fms:continues" in t.user_attrs]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    print(f"epochs trained: {fms.epochs_spent(study.trials)} in {len(study.trials)} trials")
    print(f"paused: {len(paused)}, continued from a checkpoint: {len(continued)}")
    print(f"trained to all {EPOCHS} epochs: {len(complete)}")
    if complete:
        print(f"best value: {study.best_value:.3f} with {study.best_params}")
    print(
        f"recommended: {recommended.params} (trial {recommended.trial}), forecast final "
        f"accuracy {recommended.mean:.3f} +- {recommended.std:.3f}"
    )


if __name__ == "__main__":
    main()
