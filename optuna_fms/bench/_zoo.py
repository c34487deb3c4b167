"""Pretrained starting points of the hubs: the CNN zoo members and the pretrained architectures.

A *start* is a network pretrained on a source task; every configuration of a hub fine-tunes
one start on the target task. In the zoo hub, the starts are many copies of one small CNN
pretrained with randomly drawn seeds and settings (training-set size, epochs, learning rate,
label noise), so their quality varies and can only be told from their weights: the member index
is a random draw, unrelated to the settings. In the architecture hub, each start is one
architecture pretrained with a fixed recipe. Hubs trained from scratch (``tabular``,
``crossing``) have one untrained start per network shape: its seeded initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
import time
from typing import Any

import numpy as np
import torch

from optuna_fms.bench._arch import build_module
from optuna_fms.bench._data import TaskSpec
from optuna_fms.bench._data import make_task
from optuna_fms.bench._train import evaluate
from optuna_fms.bench._train import rounded_state
from optuna_fms.bench._train import train
from optuna_fms.bench._train import upcast


@dataclass(frozen=True)
class StartRecipe:
    """How one starting point is made.

    ``pretrain`` holds ``task`` (a :class:`TaskSpec` as JSON), ``opt`` (optimizer settings),
    ``epochs``, ``batch_size``, ``label_noise`` (fraction of training labels replaced by random
    labels) and ``seed`` (initialisation, shuffling and noise).
    """

    key: str
    arch: str
    spec: dict[str, Any]
    pretrain: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "arch": self.arch, "spec": self.spec, "pretrain": self.pretrain}


def pretrained_start(
    key: str,
    arch: str,
    spec: dict[str, Any],
    opt: dict[str, Any],
    source: TaskSpec,
    variant: tuple[int, int, float],
    seed: int,
    stream: tuple[int, ...],
) -> StartRecipe:
    """A start pretrained on ``source`` with ``variant = (training images, epochs, label
    noise)``, batches of 64, its seed drawn from ``np.random.default_rng([seed, *stream])``
    (the source subset is drawn with ``seed``)."""
    n_train, epochs, noise = variant
    task = TaskSpec(source.dataset, source.classes, n_train, source.n_val, seed)
    return StartRecipe(
        key=key,
        arch=arch,
        spec=spec,
        pretrain={
            "task": task.to_json(),
            "opt": opt,
            "epochs": epochs,
            "batch_size": 64,
            "label_noise": noise,
            "seed": int(np.random.default_rng([seed, *stream]).integers(2**31 - 1)),
        },
    )


def sample_zoo(
    n_members: int,
    *,
    seed: int,
    arch: str,
    spec: dict[str, Any],
    source: TaskSpec,
    train_sizes: list[int],
    epoch_choices: list[int],
    lr_range: tuple[float, float],
    noise_choices: list[float],
) -> list[StartRecipe]:
    """Draw ``n_members`` pretraining recipes of one architecture (seeded)."""
    rng = np.random.default_rng([seed, 11])
    members = []
    for i in range(n_members):
        member_seed = int(rng.integers(2**31 - 1))
        task = TaskSpec(
            source.dataset,
            source.classes,
            int(rng.choice(train_sizes)),
            source.n_val,
            seed=member_seed,  # each member sees its own subset of the source data
        )
        lr = float(np.exp(rng.uniform(np.log(lr_range[0]), np.log(lr_range[1]))))
        members.append(
            StartRecipe(
                key=f"m{i:03d}",
                arch=arch,
                spec=dict(spec),
                pretrain={
                    "task": task.to_json(),
                    "opt": {
                        "name": "sgd",
                        "lr": float(f"{lr:.4g}"),
                        "momentum": 0.9,
                        "weight_decay": 5e-4,
                    },
                    "epochs": int(rng.choice(epoch_choices)),
                    "batch_size": 32,
                    "label_noise": float(rng.choice(noise_choices)),
                    "seed": member_seed,
                },
            )
        )
    return members


def pretrain(recipe: StartRecipe) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pretrain one start; returns its stored (fp16) state dict and a summary.

    The summary holds the source-task validation accuracy of the stored weights, which says how
    good the start is (the hub's configurations do not see it; a method must read the weights).
    A recipe with ``epochs`` 0 (or no ``task``) is an untrained start: the network's
    initialisation drawn from ``seed``, with ``None`` for the source accuracy and loss.
    """
    t0 = time.perf_counter()
    p = recipe.pretrain
    torch.manual_seed(p["seed"])
    model = build_module(recipe.arch, recipe.spec)
    if not p.get("epochs"):  # a start trained from scratch: its seeded initialisation
        info = {"source_val_accuracy": None, "source_val_loss": None, "seconds": 0.0}
        return rounded_state(model.state_dict()), info
    task = make_task(TaskSpec.from_json(p["task"]))
    y = task.y_train
    noise = p.get("label_noise", 0.0)
    if noise > 0:
        gen = torch.Generator().manual_seed(p["seed"] + 1)
        flip = torch.rand(len(y), generator=gen) < noise
        random_labels = torch.randint(len(p["task"]["classes"]), (len(y),), generator=gen)
        y = torch.where(flip, random_labels, y)
    train(
        model,
        task,
        opt=p["opt"],
        epochs=p["epochs"],
        batch_size=p["batch_size"],
        seed=p["seed"] + 2,
        y_train=y,
    )
    state = rounded_state(model.state_dict())
    model.load_state_dict(upcast(state))
    acc, loss = evaluate(model, task.x_val, task.y_val)
    info = {
        "source_val_accuracy": acc,
        "source_val_loss": loss,
        "seconds": time.perf_counter() - t0,
    }
    return state, info
