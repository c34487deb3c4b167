"""Building the benchmark hubs by really training (``optuna-fms build-hub``).

The recipes (see ``docs/hubs.md``):

- ``zoo``: a zoo of small CNNs pretrained on MNIST digits 0-4 with random seeds and settings,
  fine-tuned with SGD on scikit-learn digits 5-9; a configuration picks the zoo member and the
  SGD hyper-parameters.
- ``arch``: an MLP, a CNN, a ResNet with BatchNorm and a small transformer pretrained on MNIST
  (all classes), fine-tuned with AdamW on scikit-learn digits; a configuration picks the
  architecture and the AdamW hyper-parameters.
- ``zoo-mnist``: the same zoo (the same members, bit for bit) fine-tuned on another target
  task, MNIST (8x8) digits 5-9: an earlier task for transfer ("earlier study -> new study")
  that shares no fine-tuning result with ``zoo``.
- ``zoo-noisy``: a zoo of 120 members (the first 60 are ``zoo``'s) fine-tuned on scikit-learn
  digits 5-9 and scored on 80 validation images only: a large categorical and noisy curves.
- ``tabular``: LCBench-style MLPs trained from scratch with AdamW on a synthetic tabular task
  (six hyper-parameters); the metric is the validation loss, minimised.
- ``crossing``: MLPs with a quadratic activation trained full-batch on modular addition, where
  strong weight decay generalises late (grokking): learning curves cross late.
- ``finetune``: a small vision transformer and a CNN, each pretrained in four variants on
  MNIST digits 0-4, fine-tuned on scikit-learn digits 5-9 in full or with a LoRA adapter at a
  grid of rank, alpha and learning rate (``_finetune.py``); LoRA checkpoints are adapters.
- ``tiny``: a few-second miniature of ``zoo`` for the test suite (every recipe also has a
  ``size="tiny"`` miniature).

Every job runs with one torch thread and deterministic kernels, seeded from the hub seed and
the job's id only, so a hub is the same whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Iterable
import dataclasses
from dataclasses import dataclass
import itertools
import json
import multiprocessing
import os
from pathlib import Path
import platform
import shutil
import sys
import time
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import IntDistribution
import torch

from optuna_fms.bench._arch import build_module
from optuna_fms.bench._arch import n_parameters
from optuna_fms.bench._arch import set_dropout
from optuna_fms.bench._data import TABULAR_CLASSES
from optuna_fms.bench._data import TABULAR_FEATURES
from optuna_fms.bench._data import TaskSpec
from optuna_fms.bench._data import make_task
from optuna_fms.bench._finetune import adapter_model
from optuna_fms.bench._finetune import adapter_tensors
from optuna_fms.bench._finetune import config_adapters
from optuna_fms.bench._finetune import copy_shared_runs
from optuna_fms.bench._finetune import finetune_recipe
from optuna_fms.bench._finetune import shared_runs
from optuna_fms.bench._hub import CURVES_FILE
from optuna_fms.bench._hub import FORMAT_VERSION
from optuna_fms.bench._hub import INDEX_FILE
from optuna_fms.bench._hub import _resolve_hyperparameters
from optuna_fms.bench._hub import checkpoint_file
from optuna_fms.bench._hub import describe_structure
from optuna_fms.bench._hub import save_checkpoints
from optuna_fms.bench._hub import save_state
from optuna_fms.bench._hub import start_file
from optuna_fms.bench._train import evaluate
from optuna_fms.bench._train import rounded_state
from optuna_fms.bench._train import setup_worker_torch
from optuna_fms.bench._train import train
from optuna_fms.bench._train import upcast
from optuna_fms.bench._zoo import StartRecipe
from optuna_fms.bench._zoo import pretrain
from optuna_fms.bench._zoo import pretrained_start
from optuna_fms.bench._zoo import sample_zoo


HUB_NAMES = ("zoo", "zoo-mnist", "zoo-noisy", "arch", "tabular", "crossing", "finetune", "tiny")
SIZES = ("full", "tiny")
DEFAULT_OUT = "~/.cache/optuna-fms/hubs"


@dataclass
class Recipe:
    """Everything that defines a hub; built from ``(name, size, seed)`` by :func:`make_recipe`.

    The configurations are the full grid over ``grid``: every combination of one value per
    parameter. Parameters in ``ordered`` are ordered values (learning rate, batch size...) that
    the search space exposes as an integer index into their sorted values; the others are
    categories. ``fixed`` holds fine-tuning hyper-parameters that every configuration shares.
    ``starts[i]`` is the start of the configurations whose parameters include
    ``start_choices[i]``.
    """

    name: str
    size: str
    seed: int
    starts: list[StartRecipe]
    start_choices: list[dict[str, Any]]
    grid: dict[str, list[Any]]
    ordered: tuple[str, ...]
    fixed: dict[str, Any]
    n_epochs: int
    source: TaskSpec
    target: TaskSpec
    optimizer: str  # "sgd" or "adamw"; hyper-parameters come from the configuration
    description: str
    metric: str = "val_accuracy"  # the curve that is the objective ("val_accuracy", "val_loss")
    direction: str = "maximize"  # of ``metric``: "maximize" or "minimize"
    # params -> params of the configuration whose run it shares (None: every one runs)
    shared_run: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # (arch, hyper-parameters) -> peft.LoraConfig keywords, None for full fine-tuning
    adapter: Callable[[str, dict[str, Any]], dict[str, Any] | None] | None = None

    @property
    def search_space(self) -> dict[str, BaseDistribution]:
        """Categorical choices for categories, ``IntDistribution(0, n - 1)`` for ordered
        values: an index into the sorted values, so that every proposal is a grid point."""
        return {
            k: IntDistribution(0, len(v) - 1) if k in self.ordered else CategoricalDistribution(v)
            for k, v in self.grid.items()
        }

    @property
    def n_configs(self) -> int:
        return int(np.prod([len(v) for v in self.grid.values()]))


def _log_grid(low: float, high: float, n: int) -> list[float]:
    """``n`` values from ``low`` to ``high``, evenly spaced in log (4 significant digits)."""
    return [float(f"{v:.4g}") for v in np.geomspace(low, high, n)]


# The zoo's target tasks: hub name -> (dataset, training images, validation images or None for
# the rest); classes 5-9 in all, so the pretrained 5-way head is reused.
_ZOO_TARGETS: dict[str, tuple[str, int, int | None]] = {
    "zoo": ("digits", 150, None),
    "zoo-mnist": ("mnist8", 150, 750),
    "zoo-noisy": ("digits", 150, 80),
    "tiny": ("digits", 100, 200),
}


def _zoo_recipe(size: str, seed: int, name: str) -> Recipe:
    tiny = size == "tiny"
    noisy = name == "zoo-noisy"
    n_members = (4 if noisy else 3) if tiny else (120 if noisy else 60)
    source = TaskSpec("mnist8", (0, 1, 2, 3, 4), 0, 200 if tiny else 400, seed)
    dataset, n_train, n_val = _ZOO_TARGETS[name if noisy or not tiny else "tiny"]
    if tiny and noisy:
        n_train, n_val = 100, 60
    target = TaskSpec(dataset, (5, 6, 7, 8, 9), n_train, n_val, seed)
    target_name = "scikit-learn digits 5-9" if dataset == "digits" else "MNIST (8x8) digits 5-9"
    if noisy:
        target_name += f", scored on {n_val} validation images"
    spec = {"channels": [4, 8, 8] if tiny else [8, 16, 16], "n_classes": 5}
    starts = sample_zoo(
        n_members,
        seed=seed,
        arch="simple_cnn",
        spec=spec,
        source=source,
        train_sizes=[300, 1000] if tiny else [100, 300, 1000, 2000],
        epoch_choices=[2, 6] if tiny else [2, 5, 10, 20],
        lr_range=(0.01, 0.1),
        noise_choices=[0.0] if tiny else [0.0, 0.0, 0.2, 0.5],
    )
    grid: dict[str, list[Any]] = {"member": list(range(n_members))}
    if tiny and noisy:
        grid.update(lr=[0.01, 0.1])
        fixed: dict[str, Any] = {"momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32}
    elif tiny:
        grid.update(lr=[0.01, 0.1], batch_size=[16, 32])
        fixed = {"momentum": 0.9, "weight_decay": 1e-4}
    elif noisy:
        grid.update(lr=_log_grid(3e-3, 0.1, 3), momentum=[0.0, 0.9])
        fixed = {"weight_decay": 1e-4, "batch_size": 32}
    else:
        grid.update(
            lr=_log_grid(1e-3, 0.1, 5),
            momentum=[0.0, 0.9],
            weight_decay=[1e-5, 1e-3],
            batch_size=[32, 128],
        )
        fixed = {}
    return Recipe(
        name=name,
        size=size,
        seed=seed,
        starts=starts,
        start_choices=[{"member": i} for i in range(n_members)],
        grid=grid,
        ordered=tuple(k for k in grid if k != "member"),
        fixed=fixed,
        n_epochs=(5 if noisy else 6) if tiny else (25 if noisy else 30),
        source=source,
        target=target,
        optimizer="sgd",
        description=(
            "Zoo of small CNNs pretrained on MNIST (8x8) digits 0-4 with random seeds, "
            "training-set sizes, epochs, learning rates and label noise; fine-tuned with SGD on "
            f"{target_name}."
        ),
    )


_ARCH_SPECS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # key: (architecture, constructor spec, pretraining optimizer)
    "mlp": ("mlp", {"hidden": [64, 64]}, {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4}),
    "cnn": (
        "simple_cnn",
        {"channels": [16, 32, 32]},
        {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
    ),
    "resnet": (
        "resnet",
        {"widths": [16, 32]},
        {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
    ),
    "transformer": (
        "transformer",
        {"dim": 32, "depth": 2, "heads": 4, "mlp": 64},
        {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},
    ),
}

# Pretrained variants of every architecture: (training images, epochs, label noise). They
# differ in how much and how cleanly the network learned the source task.
_ARCH_VARIANTS: list[tuple[int, int, float]] = [(4000, 12, 0.0), (500, 3, 0.0), (4000, 6, 0.5)]


def _arch_recipe(size: str, seed: int) -> Recipe:
    tiny = size == "tiny"
    source = TaskSpec(
        "mnist8", tuple(range(10)), 500 if tiny else 4000, 200 if tiny else 1000, seed
    )
    target = TaskSpec("digits", tuple(range(10)), 100 if tiny else 300, 200 if tiny else 600, seed)
    variants = [(500, 2, 0.0)] if tiny else _ARCH_VARIANTS
    starts = []
    choices: list[dict[str, Any]] = []
    for i, (key, (arch, spec, opt)) in enumerate(_ARCH_SPECS.items()):
        for v, variant in enumerate(variants):
            k = key if tiny else f"{key}-{v}"
            starts.append(pretrained_start(k, arch, spec, opt, source, variant, seed, (13, i, v)))
            choices.append({"arch": key} if tiny else {"arch": key, "variant": v})
    grid: dict[str, list[Any]] = {"arch": list(_ARCH_SPECS)}
    if tiny:
        grid.update(lr=[1e-3, 1e-2])
        fixed: dict[str, Any] = {"weight_decay": 1e-4, "batch_size": 32}
    else:
        grid.update(
            variant=list(range(len(variants))),
            lr=_log_grid(3e-5, 3e-2, 7),
            weight_decay=[1e-4, 1e-2],
            batch_size=[32, 128],
        )
        fixed = {}
    return Recipe(
        name="arch",
        size=size,
        seed=seed,
        starts=starts,
        start_choices=choices,
        grid=grid,
        ordered=tuple(k for k in grid if k not in ("arch", "variant")),
        fixed=fixed,
        n_epochs=4 if tiny else 20,
        source=source,
        target=target,
        optimizer="adamw",
        description=(
            "An MLP, a CNN, a ResNet with BatchNorm and a small vision transformer, each "
            "pretrained in three variants (4,000 clean images for 12 epochs, 500 for 3 epochs, "
            "4,000 with half the labels random for 6 epochs) on MNIST (8x8, 10 classes); "
            "fine-tuned with AdamW on scikit-learn digits (10 classes)."
        ),
    )


def _scratch_starts(
    seed: int,
    grid: dict[str, list[Any]],
    fixed: dict[str, Any],
    shape: tuple[str, ...],
    arch: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]],
) -> tuple[list[StartRecipe], list[dict[str, Any]]]:
    """Untrained starts, one per network shape, for hubs trained from scratch.

    ``shape`` names the (ordered) hyper-parameters that set the network's shape (width,
    depth), each in ``grid`` or ``fixed``; ``arch(values)`` gives the architecture name and
    spec for one combination of their values. Returns the starts (each the initialisation drawn
    from its own seed) and the search-space choice (grid indices) that selects each.
    """
    axes = [list(enumerate(grid[k])) if k in grid else [(None, fixed[k])] for k in shape]
    starts, choices = [], []
    for i, combo in enumerate(itertools.product(*axes)):
        name, spec = arch(dict(zip(shape, (v for _, v in combo))))
        init_seed = int(np.random.default_rng([seed, 17, i]).integers(2**31 - 1))
        starts.append(
            StartRecipe(
                key=name.split("/", 1)[-1],
                arch=name,
                spec=spec,
                pretrain={"epochs": 0, "seed": init_seed},
            )
        )
        choices.append({k: j for k, (j, _) in zip(shape, combo) if j is not None})
    return starts, choices


def _tabular_recipe(size: str, seed: int) -> Recipe:
    tiny = size == "tiny"
    classes = tuple(range(TABULAR_CLASSES))
    target = TaskSpec("tabular", classes, 300 if tiny else 2000, 200 if tiny else 1000, seed)
    if tiny:
        grid: dict[str, list[Any]] = {"lr": [1e-3, 1e-2], "dropout": [0.0, 0.5], "width": [8, 16]}
        fixed: dict[str, Any] = {"weight_decay": 1e-4, "depth": 1, "batch_size": 64}
    else:
        grid = {
            "lr": _log_grid(1e-4, 1e-1, 4),
            "weight_decay": _log_grid(1e-4, 1.0, 3),
            "dropout": [0.0, 0.5],
            "width": [16, 32, 64],
            "depth": [1, 3],
            "batch_size": [64, 256, 1024],
        }
        fixed = {}

    def mlp(v: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        spec = {
            "hidden": [v["width"]] * v["depth"],
            "n_in": TABULAR_FEATURES,
            "n_classes": TABULAR_CLASSES,
            "dropout": True,
        }
        return f"mlp/d{v['depth']}-w{v['width']}", spec

    starts, choices = _scratch_starts(seed, grid, fixed, ("width", "depth"), mlp)
    return Recipe(
        name="tabular",
        size=size,
        seed=seed,
        starts=starts,
        start_choices=choices,
        grid=grid,
        ordered=tuple(grid),
        fixed=fixed,
        n_epochs=5 if tiny else 50,
        source=target,
        target=target,
        optimizer="adamw",
        description=(
            "LCBench-style MLPs (ReLU, dropout after each hidden layer) trained from scratch "
            "with AdamW on a synthetic tabular task (scikit-learn make_classification: "
            f"{TABULAR_FEATURES} features, {TABULAR_CLASSES} classes, 10 % label noise); the "
            "objective is the validation cross-entropy, minimised."
        ),
        metric="val_loss",
        direction="minimize",
    )


_CROSSING_P = 23  # modulus of the crossing hub's modular addition (11 in its miniature)


def _crossing_recipe(size: str, seed: int) -> Recipe:
    tiny = size == "tiny"
    p = 11 if tiny else _CROSSING_P
    if tiny:
        grid: dict[str, list[Any]] = {"lr": [3e-3, 3e-2], "weight_decay": [0.1, 1.0]}
        fixed: dict[str, Any] = {"width": 16, "train_fraction": 0.6}
        passes = 10
    else:
        grid = {
            "lr": _log_grid(1e-3, 3e-2, 4),
            "weight_decay": _log_grid(0.1, 3.0, 4),
            "width": [32, 64, 128],
            "train_fraction": _log_grid(0.4, 0.6, 3),
        }
        fixed = {}
        passes = 50
    # The task's training split holds the largest fraction; a configuration trains on its
    # first ``train_fraction`` x p^2 pairs; the validation pairs are the rest, for every one.
    n_train = round(max(grid.get("train_fraction", [fixed.get("train_fraction", 0.0)])) * p * p)
    target = TaskSpec(f"modadd{p}", tuple(range(p)), n_train, None, seed)
    fixed.update(batch_size=n_train, passes=passes)

    def mlp(v: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        spec = {"hidden": [v["width"]], "n_in": 2 * p, "n_classes": p, "activation": "square"}
        return f"mlp/w{v['width']}", spec

    starts, choices = _scratch_starts(seed, grid, fixed, ("width",), mlp)
    return Recipe(
        name="crossing",
        size=size,
        seed=seed,
        starts=starts,
        start_choices=choices,
        grid=grid,
        ordered=tuple(grid),
        fixed=fixed,
        n_epochs=4 if tiny else 40,
        source=target,
        target=target,
        optimizer="adamw",
        description=(
            f"Modular addition (a + b mod {p}, one-hot a and b): one-hidden-layer MLPs with a "
            f"quadratic activation trained full-batch with AdamW, {passes} steps per epoch, on "
            "a fraction of all pairs and scored on a fixed set of the others. Strong weight "
            "decay generalises late (grokking), so learning curves cross late."
        ),
    )


def make_recipe(name: str, size: str = "full", seed: int = 0) -> Recipe:
    """The recipe of hub ``name`` (one of :data:`HUB_NAMES`) at ``size``."""
    if name not in HUB_NAMES:
        raise ValueError(f"Unknown hub {name!r}; expected one of {HUB_NAMES}.")
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; expected one of {SIZES}.")
    if name == "tiny":
        return _zoo_recipe("tiny", seed, "tiny")
    if name in ("zoo", "zoo-mnist", "zoo-noisy"):
        return _zoo_recipe(size, seed, name)
    if name == "tabular":
        return _tabular_recipe(size, seed)
    if name == "crossing":
        return _crossing_recipe(size, seed)
    if name == "finetune":
        return finetune_recipe(size, seed)
    return _arch_recipe(size, seed)


def grid_configs(recipe: Recipe) -> list[dict[str, Any]]:
    """The hub's configurations, the full grid, as search-space parameters (a category's
    value, an ordered value's index), in ``itertools.product`` order over ``recipe.grid``."""
    axes = [range(len(v)) if k in recipe.ordered else v for k, v in recipe.grid.items()]
    return [dict(zip(recipe.grid, combo)) for combo in itertools.product(*axes)]


def hyperparameters(recipe: Recipe, params: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuning hyper-parameters of a configuration: indices resolved to values,
    fixed ones added (the rule :meth:`Hub.hyperparameters` reads a built hub with)."""
    return _resolve_hyperparameters(recipe.grid, recipe.ordered, recipe.fixed, params)


def _start_index(recipe: Recipe, params: dict[str, Any]) -> int:
    for i, choice in enumerate(recipe.start_choices):
        if all(params[k] == v for k, v in choice.items()):
            return i
    raise ValueError(f"No start for configuration {params}.")


def _config_seed(hub_seed: int, config_id: int) -> int:
    return int(np.random.SeedSequence([hub_seed, 7, config_id]).generate_state(1)[0] >> 1)


# ---------------------------------------------------------------------- jobs (worker side)
def _pretrain_job(args: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    out, recipe_json = args
    recipe = StartRecipe(**recipe_json)
    state, info = pretrain(recipe)
    save_state(Path(out) / start_file(recipe.key), state)
    return recipe.key, info


def finetune(
    job: dict[str, Any], out: Path | None = None
) -> tuple[dict[str, np.ndarray], list[dict[str, torch.Tensor]]]:
    """Fine-tune one configuration; returns its curves and its per-epoch stored states.

    ``job`` holds ``config_id``, ``params``, ``seed``, ``n_epochs``, ``optimizer``, ``arch``,
    ``spec``, ``target`` (TaskSpec JSON), ``start`` (path of the start's safetensors file) and,
    optionally, ``adapter`` (``peft.LoraConfig`` keywords: the start is fine-tuned through a
    LoRA adapter, whose tensors alone are the stored states).
    ``params`` holds the hyper-parameters: ``lr``, ``weight_decay``, ``batch_size`` and,
    optionally, ``momentum`` (SGD), ``dropout`` (the rate of the network's dropout layers),
    ``passes`` (passes over the training data per epoch, default 1) and ``train_fraction``
    (train on the first ``train_fraction`` x all examples of the training split, of a task
    whose validation split is the rest). With ``out``, the
    checkpoints are written under it.
    """
    import safetensors.torch

    t0 = time.perf_counter()
    params = job["params"]
    torch.manual_seed(job["seed"])
    model = build_module(job["arch"], job["spec"])
    start = safetensors.torch.load_file(job["start"])
    model.load_state_dict(upcast(start))
    evaluator = build_module(job["arch"], job["spec"])
    adapter = job.get("adapter")
    if adapter is not None:  # LoRA on the start; the stored checkpoints are the adapter
        evaluator.load_state_dict(upcast(start))
        model = adapter_model(model, adapter)
        evaluator = adapter_model(evaluator, adapter)
    task = make_task(TaskSpec.from_json(job["target"]))
    if "train_fraction" in params:  # the first pairs of the training split
        n_all = len(task.x_train) + len(task.x_val)
        k = round(params["train_fraction"] * n_all)
        task = dataclasses.replace(task, x_train=task.x_train[:k], y_train=task.y_train[:k])
    opt = {"name": job["optimizer"], "lr": params["lr"], "weight_decay": params["weight_decay"]}
    if "momentum" in params:
        opt["momentum"] = params["momentum"]
    set_dropout(model, params.get("dropout", 0.0))
    n = job["n_epochs"]
    curves = {k: np.zeros(n) for k in ("val_accuracy", "val_loss", "train_loss")}
    states: list[dict[str, torch.Tensor]] = []

    def on_epoch(epoch: int, train_loss: float) -> None:
        state = rounded_state(model.state_dict() if adapter is None else adapter_tensors(model))
        evaluator.load_state_dict(upcast(state))
        acc, loss = evaluate(evaluator, task.x_val, task.y_val)
        curves["val_accuracy"][epoch] = acc
        curves["val_loss"][epoch] = loss
        curves["train_loss"][epoch] = train_loss
        states.append(state)

    train(
        model,
        task,
        opt=opt,
        epochs=n,
        batch_size=int(params["batch_size"]),
        seed=job["seed"] + 1,
        on_epoch=on_epoch,
        passes=int(params.get("passes", 1)),
    )
    if out is not None:
        save_checkpoints(out / checkpoint_file(job["config_id"]), states)
    curves["seconds"] = np.asarray(time.perf_counter() - t0)
    return curves, states


def _finetune_job(args: tuple[str, dict[str, Any]]) -> tuple[int, dict[str, np.ndarray]]:
    out, job = args
    curves, _ = finetune(job, Path(out))
    return job["config_id"], curves


# ---------------------------------------------------------------------- driver
def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="job", dynamic_ncols=True)


def _run_jobs(
    fn: Callable[[Any], Any], jobs: list[Any], pool: Any, desc: str, progress: bool
) -> Iterable[Any]:
    bar = _progress(len(jobs), desc, progress)
    try:
        it = map(fn, jobs) if pool is None else pool.imap_unordered(fn, jobs, chunksize=1)
        for r in it:
            bar.update(1)
            yield r
    finally:
        bar.close()


def _make_pool(workers: int) -> Any:
    """Worker processes that do not inherit this process's torch state (thread pools, flags).

    A fork server (where available) imports the build code once and forks fresh workers from
    that clean process; elsewhere workers are spawned.
    """
    ctx: Any
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["optuna_fms.bench._build"])
    else:
        ctx = multiprocessing.get_context("spawn")
    return ctx.Pool(workers, initializer=setup_worker_torch)


def hub_dirname(name: str, size: str, seed: int) -> str:
    d = name if (size == "full" or name == "tiny") else f"{name}-{size}"
    return d if seed == 0 else f"{d}-seed{seed}"


def _is_built(path: Path, recipe: Recipe) -> bool:
    try:
        with open(path / INDEX_FILE) as f:
            idx = json.load(f)
    except (OSError, ValueError):
        return False
    return (
        idx.get("format") == FORMAT_VERSION
        and idx.get("name") == recipe.name
        and idx.get("size") == recipe.size
        and idx.get("seed") == recipe.seed
    )


def build_hub(
    name: str,
    out_dir: Path,
    *,
    workers: int = 2,
    seed: int = 0,
    size: str = "full",
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build hub ``name`` by training every configuration, into ``out_dir`` (a cache).

    Parameters
    ----------
    name:
        One of :data:`HUB_NAMES` (see ``docs/hubs.md``).
    out_dir:
        Cache directory; the hub goes to ``out_dir / name`` (with ``-tiny`` / ``-seed<k>``
        appended for a non-full size or a non-zero seed).
    workers:
        Worker processes, each with one torch thread. ``1`` trains in this process.
    seed:
        Hub seed: zoo settings, configurations, initialisations and data order derive from it.
        The result does not depend on ``workers``.
    size:
        ``"full"`` or ``"tiny"`` (a miniature of the same recipe, seconds to build).
    force:
        Rebuild even if a hub with the same name, size and seed is already there.
    progress:
        Show progress bars.

    Returns
    -------
    pathlib.Path
        The hub directory, to pass to :meth:`optuna_fms.bench.Hub.load`.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from optuna_fms.bench import Hub, build_hub
    >>> path = build_hub("tiny", Path(tempfile.mkdtemp()), workers=1, progress=False)
    >>> Hub.load(path).scores.shape
    (12, 6)
    """
    recipe = make_recipe(name, size, seed)
    out_dir = Path(out_dir).expanduser()
    final = out_dir / hub_dirname(name, size, seed)
    if not force and _is_built(final, recipe):
        return final
    tmp = out_dir / f".{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    configs = grid_configs(recipe)
    start_keys = [s.key for s in recipe.starts]
    config_start = [_start_index(recipe, c) for c in configs]
    run_of = shared_runs(recipe, configs)
    adapters = config_adapters(recipe, configs, config_start)

    pool = None
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    if workers > 1:
        pool = _make_pool(workers)
    else:
        setup_worker_torch()
    try:
        infos = dict(
            _run_jobs(
                _pretrain_job,
                [(str(tmp), s.to_json()) for s in recipe.starts],
                pool,
                f"{name}: pretraining",
                progress,
            )
        )
        t_pretrain = time.perf_counter() - t0
        archs = {s.arch: s.spec for s in recipe.starts}
        jobs = []
        for cid, params in enumerate(configs):
            if run_of[cid] != cid:
                continue
            s = recipe.starts[config_start[cid]]
            jobs.append(
                {
                    "config_id": cid,
                    "params": hyperparameters(recipe, params),
                    "seed": _config_seed(seed, cid),
                    "n_epochs": recipe.n_epochs,
                    "optimizer": recipe.optimizer,
                    "arch": s.arch,
                    "spec": s.spec,
                    "target": recipe.target.to_json(),
                    "start": str(tmp / start_file(s.key)),
                    **({} if adapters is None else {"adapter": adapters[cid]}),
                }
            )
        curves: dict[str, np.ndarray] = {
            k: np.zeros((recipe.n_configs, recipe.n_epochs))
            for k in ("val_accuracy", "val_loss", "train_loss")
        }
        curves["seconds"] = np.zeros(recipe.n_configs)
        for cid, c in _run_jobs(
            _finetune_job, [(str(tmp), j) for j in jobs], pool, f"{name}: fine-tuning", progress
        ):
            for k, v in c.items():
                curves[k][cid] = v
        copy_shared_runs(tmp, curves, run_of)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        else:
            torch.set_num_threads(saved[0])
            torch.use_deterministic_algorithms(saved[1])
    elapsed = time.perf_counter() - t0

    arch_entries = {}
    for arch, spec in archs.items():
        module = build_module(arch, spec)
        arch_entries[arch] = {
            "spec": spec,
            "n_params": n_parameters(module),
            "structure": describe_structure(module),
        }
    index = {
        "format": FORMAT_VERSION,
        "name": recipe.name,
        "size": recipe.size,
        "seed": recipe.seed,
        "description": recipe.description,
        "metric": recipe.metric,
        "direction": recipe.direction,
        "n_epochs": recipe.n_epochs,
        "optimizer": recipe.optimizer,
        "search_space": {
            k: optuna.distributions.distribution_to_json(d) for k, d in recipe.search_space.items()
        },
        "grid": recipe.grid,
        "ordered": list(recipe.ordered),
        "fixed": recipe.fixed,
        "start_params": sorted({k for c in recipe.start_choices for k in c}),
        "configs": configs,
        "config_start": config_start,
        "starts": [
            {**s.to_json(), "file": start_file(s.key), "info": infos[s.key]} for s in recipe.starts
        ],
        "start_keys": start_keys,
        **({} if adapters is None else {"config_adapter": adapters, "shared_run": run_of}),
        "archs": arch_entries,
        "tasks": {"source": recipe.source.to_json(), "target": recipe.target.to_json()},
        "build": {
            "seconds": elapsed,
            "pretrain_seconds": t_pretrain,
            "workers": workers,
            "torch": torch.__version__,
            "optuna": optuna.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }
    np.savez(tmp / CURVES_FILE, **curves)  # type: ignore[arg-type]
    with open(tmp / INDEX_FILE, "w") as f:
        json.dump(index, f, indent=1)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def disk_size(path: Path) -> int:
    """Bytes used by the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def summarize(path: Path) -> dict[str, Any]:
    """Shape, build time, size on disk and spread of the final metric of a built hub (in the
    metric's own units: ``final_*`` are quantiles of the last epoch's value, ``best_any_epoch``
    the best value at any epoch, the highest or, for a minimised metric, the lowest)."""
    from optuna_fms.bench._hub import Hub

    hub = Hub.load(path)
    final = hub.values[:, -1]
    best_any = hub.sign * hub.scores.max(axis=1)
    source = [s["info"]["source_val_accuracy"] for s in hub.index["starts"]]
    source = [a for a in source if a is not None]
    return {
        "name": hub.name,
        "metric": hub.metric,
        "direction": hub.direction,
        "path": str(hub.path),
        "n_configs": hub.n_configs,
        "n_epochs": hub.n_epochs,
        "build_seconds": round(hub.index["build"]["seconds"], 1),
        "workers": hub.index["build"]["workers"],
        "mean_config_seconds": round(float(hub.curves["seconds"].mean()), 3),
        "disk_mb": round(disk_size(hub.path) / 2**20, 1),
        "final_min": float(final.min()),
        "final_q25": float(np.quantile(final, 0.25)),
        "final_median": float(np.median(final)),
        "final_q75": float(np.quantile(final, 0.75)),
        "final_max": float(final.max()),
        "best_any_epoch": float(best_any.max() if hub.sign > 0 else best_any.min()),
        "start_accuracy_range": [min(source), max(source)] if source else None,
    }


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``optuna-fms build-hub``."""
    parser = argparse.ArgumentParser(
        prog="optuna-fms build-hub",
        description="Build a benchmark hub (learning curves and per-epoch checkpoints) by "
        "training every configuration. Deterministic given --seed.",
    )
    parser.add_argument("--hub", required=True, choices=HUB_NAMES)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"cache directory ({DEFAULT_OUT})")
    parser.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="full", choices=SIZES)
    parser.add_argument("--force", action="store_true", help="rebuild an existing hub")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main_build(argv: list[str] | None = None) -> int:
    """``optuna-fms build-hub``: build a benchmark hub into a cache directory."""
    args = build_parser().parse_args(argv)
    path = build_hub(
        args.hub,
        Path(args.out),
        workers=args.workers,
        seed=args.seed,
        size=args.size,
        force=args.force,
        progress=not args.quiet,
    )
    json.dump(summarize(path), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
