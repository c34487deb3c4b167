"""The fine-tuning hub (``finetune``): pretrained bases, full fine-tuning and LoRA adapters.

Two architecture families, a small vision transformer (``transformer``) and a CNN with a
hidden linear layer (``conv_mlp``), are each pretrained in several variants (seeds, amounts of
data, epochs, label noise) on MNIST (8x8) digits 0-4; every variant is a *base*. A
configuration fine-tunes one base on scikit-learn digits 5-9 with AdamW, either in full
(``method="full"``) or through a peft LoRA adapter (``method="lora"``) on the base's linear
layers, at a grid of rank, alpha and learning rate. A LoRA configuration's per-epoch
checkpoints are its adapter (``peft.get_peft_model_state_dict``: what
:func:`optuna_fms.save_checkpoint` stores for a ``peft.PeftModel``); a full one's are the whole
network. Rank and alpha do not act on full fine-tuning: every full configuration shares the
run of the one with the lowest rank and alpha indices (same curves, same checkpoints).

peft is imported only where an adapter is built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
from typing import TYPE_CHECKING
from typing import Any

import numpy as np
import torch

from optuna_fms.bench._data import TaskSpec
from optuna_fms.bench._hub import _resolve_hyperparameters
from optuna_fms.bench._hub import checkpoint_file
from optuna_fms.bench._zoo import StartRecipe
from optuna_fms.bench._zoo import pretrained_start


if TYPE_CHECKING:
    from optuna_fms.bench._build import Recipe


# family -> (architecture, spec, pretraining optimizer, LoRA target modules)
FAMILIES: dict[str, tuple[str, dict[str, Any], dict[str, Any], list[str]]] = {
    "vit": (
        "linear_vit",
        {"dim": 32, "depth": 2, "heads": 4, "mlp": 64, "n_classes": 5},
        {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
        ["query", "value", "fc1", "fc2", "fc"],
    ),
    "cnn": (
        "conv_mlp",
        {"channels": [8, 16, 16], "hidden": 32, "n_classes": 5},
        {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
        ["hidden", "fc"],
    ),
}

# Pretrained variants of each family: (training images, epochs, label noise). Variants 0 and 1
# differ only in their seed; 2 learned from little data, 3 from noisy labels.
VARIANTS: list[tuple[int, int, float]] = [
    (2000, 10, 0.0),
    (2000, 10, 0.0),
    (300, 4, 0.0),
    (2000, 5, 0.5),
]


def finetune_starts(
    seed: int, tiny: bool, source: TaskSpec
) -> tuple[list[StartRecipe], list[dict[str, Any]]]:
    """The bases (one start per family and variant) and the choice that selects each."""
    variants = [(1000, 4, 0.0)] if tiny else VARIANTS
    starts, choices = [], []
    for i, (family, (arch, spec, opt, _)) in enumerate(FAMILIES.items()):
        for v, variant in enumerate(variants):
            key = f"{family}-{v}"
            stream = (19, i, v)
            starts.append(pretrained_start(key, arch, spec, opt, source, variant, seed, stream))
            choices.append({"base": key})
    return starts, choices


def finetune_grid(tiny: bool, bases: list[str]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The grid (``base`` and ``method`` categorical, the rest ordered) and fixed settings."""
    grid: dict[str, list[Any]] = {"base": bases, "method": ["full", "lora"]}
    if tiny:
        grid.update(rank=[2, 4], alpha=[4, 8], lr=[3e-3, 3e-2])
    else:
        lr = [float(f"{v:.4g}") for v in np.geomspace(1e-4, 1e-1, 7)]
        grid.update(rank=[2, 8], alpha=[4, 16], lr=lr)
    return grid, {"weight_decay": 0.0, "batch_size": 32}


def shared_run(params: dict[str, Any]) -> dict[str, Any]:
    """The configuration whose run ``params`` shares: rank and alpha do not act on full
    fine-tuning, so a full configuration is run as the one with rank and alpha index 0."""
    if params["method"] == "full":
        return {**params, "rank": 0, "alpha": 0}
    return dict(params)


def lora_config(arch: str, hyperparameters: dict[str, Any]) -> dict[str, Any] | None:
    """Keyword arguments of ``peft.LoraConfig`` for a configuration (``None``: full)."""
    if hyperparameters["method"] != "lora":
        return None
    targets = next(t for a, _, _, t in FAMILIES.values() if a == arch)
    return {
        "r": int(hyperparameters["rank"]),
        "lora_alpha": int(hyperparameters["alpha"]),
        "target_modules": list(targets),
        "lora_dropout": 0.0,
    }


def _load_adapter_pre_hook(module: Any, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    import peft

    if prefix or set(state_dict) != set(peft.get_peft_model_state_dict(module)):
        return
    peft.set_peft_model_state_dict(module, dict(state_dict))
    state_dict.clear()
    state_dict.update(module.state_dict())


def adapter_model(base: torch.nn.Module, config: dict[str, Any]) -> torch.nn.Module:
    """``base`` wrapped in a peft LoRA adapter (``peft.get_peft_model``; ``base`` is modified).

    The returned ``PeftModel`` also loads an adapter-only state dict (peft's keys, as
    ``peft.get_peft_model_state_dict`` gives and :meth:`Hub.checkpoint` returns for a LoRA
    configuration) with ``load_state_dict``: the adapter is set and the frozen base is kept.

    Examples
    --------
    >>> import peft, torch
    >>> base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> model = adapter_model(base, {"r": 2, "lora_alpha": 4, "target_modules": ["0", "2"]})
    >>> adapter = {k: torch.ones_like(v) for k, v in peft.get_peft_model_state_dict(model).items()}
    >>> _ = model.load_state_dict(adapter)
    >>> float(model.base_model.model[0].lora_B.default.weight.sum())
    8.0
    """
    try:
        import peft
    except ImportError as e:
        raise ImportError(
            "The finetune hub's LoRA configurations need peft: pip install 'optuna-fms[peft]'."
        ) from e
    model = peft.get_peft_model(base, peft.LoraConfig(**config))
    register = getattr(model, "register_load_state_dict_pre_hook", None)
    if register is not None:
        register(_load_adapter_pre_hook)
    else:  # torch < 2.5: the same hook through the older (private) registration
        model._register_load_state_dict_pre_hook(_load_adapter_pre_hook, with_module=True)
    return model


def adapter_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors of a ``PeftModel`` (what ``save_checkpoint`` stores of it)."""
    import peft

    return dict(peft.get_peft_model_state_dict(model))


def finetune_recipe(size: str, seed: int) -> Recipe:
    """The recipe of the ``finetune`` hub (``size`` ``"full"`` or ``"tiny"``)."""
    from optuna_fms.bench._build import Recipe

    tiny = size == "tiny"
    source = TaskSpec(
        "mnist8", (0, 1, 2, 3, 4), 1000 if tiny else 2000, 200 if tiny else 400, seed
    )
    target = TaskSpec("digits", (5, 6, 7, 8, 9), 200 if tiny else 150, 150 if tiny else 400, seed)
    starts, choices = finetune_starts(seed, tiny, source)
    grid, fixed = finetune_grid(tiny, [c["base"] for c in choices])
    return Recipe(
        name="finetune",
        size=size,
        seed=seed,
        starts=starts,
        start_choices=choices,
        grid=grid,
        ordered=("rank", "alpha", "lr"),
        fixed=fixed,
        n_epochs=5 if tiny else 25,
        source=source,
        target=target,
        optimizer="adamw",
        description=(
            "A small vision transformer and a CNN with a hidden linear layer, each pretrained in "
            "four variants (seeds, 2,000 or 300 images, clean or half-random labels) on MNIST "
            "(8x8) digits 0-4; fine-tuned with AdamW on scikit-learn digits 5-9 in full or "
            "through a LoRA adapter on the linear layers (rank, alpha); LoRA checkpoints hold "
            "the adapter only."
        ),
        shared_run=shared_run,
        adapter=lora_config,
    )


def shared_runs(recipe: Recipe, configs: list[dict[str, Any]]) -> list[int]:
    """For every configuration, the configuration whose run it shares (itself by default)."""
    if recipe.shared_run is None:
        return list(range(len(configs)))
    ids = {json.dumps(c, sort_keys=True): i for i, c in enumerate(configs)}
    return [ids[json.dumps(recipe.shared_run(c), sort_keys=True)] for c in configs]


def config_adapters(
    recipe: Recipe, configs: list[dict[str, Any]], config_start: list[int]
) -> list[dict[str, Any] | None] | None:
    """Every configuration's ``peft.LoraConfig`` keywords (``None``: full fine-tuning), or
    ``None`` for a recipe without adapters."""
    if recipe.adapter is None:
        return None
    return [
        recipe.adapter(
            recipe.starts[config_start[i]].arch,
            _resolve_hyperparameters(recipe.grid, recipe.ordered, recipe.fixed, c),
        )
        for i, c in enumerate(configs)
    ]


def copy_shared_runs(out: Path, curves: dict[str, np.ndarray], run_of: list[int]) -> None:
    """Give every configuration that shares another's run its curves and checkpoints (a hard
    link where the file system allows one)."""
    for cid, run in enumerate(run_of):
        if run == cid:
            continue
        for v in curves.values():
            v[cid] = v[run]
        src, dst = out / checkpoint_file(run), out / checkpoint_file(cid)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
