"""The deterministic training loop shared by pretraining and fine-tuning in the hubs."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
import math
from typing import Any

import torch
from torch import nn

from optuna_fms.bench._data import Task


FP16_MAX = 65504.0
GRAD_CLIP = 5.0
EVAL_BATCH = 1024


def setup_worker_torch() -> None:
    """One intra-op thread and deterministic kernels (call once per build process)."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def make_optimizer(model: nn.Module, opt: dict[str, Any]) -> torch.optim.Optimizer:
    name = opt["name"]
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=opt["lr"],
            momentum=opt.get("momentum", 0.0),
            weight_decay=opt.get("weight_decay", 0.0),
        )
    if name == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=opt["lr"], weight_decay=opt.get("weight_decay", 0.0)
        )
    raise ValueError(f"Unknown optimizer {name!r}.")


def rounded_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as stored in a hub (a model's ``state_dict()``, or a LoRA model's adapter
    tensors): floats as finite fp16, other tensors as-is."""
    out = {}
    for k, v in state.items():
        v = v.detach()
        if v.is_floating_point():
            v = torch.nan_to_num(v.float(), nan=0.0, posinf=FP16_MAX, neginf=-FP16_MAX)
            v = v.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)
        out[k] = v.clone().contiguous()
    return out


def upcast(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors to float32 (what a stored state dict is loaded as)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` in eval mode."""
    model.eval()
    correct = 0
    loss = 0.0
    for i in range(0, len(x), EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH])
        yy = y[i : i + EVAL_BATCH]
        correct += int((logits.argmax(dim=1) == yy).sum())
        loss += float(nn.functional.cross_entropy(logits, yy, reduction="sum"))
    loss = loss / len(x)
    return correct / len(x), (loss if math.isfinite(loss) else float("inf"))


def _batches(n: int, batch_size: int, passes: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Indices of the mini-batches of ``passes`` shuffled passes over ``n`` examples."""
    for _ in range(passes):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            yield perm[i : i + batch_size]


def train(
    model: nn.Module,
    task: Task,
    *,
    opt: dict[str, Any],
    epochs: int,
    batch_size: int,
    seed: int,
    y_train: torch.Tensor | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    passes: int = 1,
) -> None:
    """Train ``model`` in place with a constant learning rate.

    Shuffling is drawn from a generator seeded with ``seed``; gradients are clipped to norm
    :data:`GRAD_CLIP` so that large learning rates degrade the run rather than produce NaNs.
    An epoch is ``passes`` passes over the training data (with ``batch_size`` at least the
    number of examples, ``passes`` full-batch steps). ``on_epoch(epoch, mean_train_loss)`` is
    called after every epoch (0-based).
    """
    gen = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, opt)
    x = task.x_train
    y = task.y_train if y_train is None else y_train
    n = len(x)
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for idx in _batches(n, batch_size, passes, gen):
            if len(idx) < 2:  # a batch of one breaks BatchNorm in training mode
                continue
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        if on_epoch is not None:
            mean = total / max(count, 1)
            on_epoch(epoch, mean if math.isfinite(mean) else float("inf"))
