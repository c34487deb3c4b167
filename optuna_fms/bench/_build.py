"""Building the benchmark hubs by really training (``optuna-fms build-hub``).

Three recipes (see ``docs/hubs.md``):

- ``zoo``: a zoo of small CNNs pretrained on MNIST digits 0-4 with random seeds and settings,
  fine-tuned with SGD on scikit-learn digits 5-9; a configuration picks the zoo member and the
  SGD hyper-parameters.
- ``arch``: an MLP, a CNN, a ResNet with BatchNorm and a small transformer pretrained on MNIST
  (all classes), fine-tuned with AdamW on scikit-learn digits; a configuration picks the
  architecture and the AdamW hyper-parameters.
- ``zoo-mnist``: the same zoo (the same members, bit for bit) fine-tuned on another target
  task, MNIST (8x8) digits 5-9: an earlier task for transfer ("earlier study -> new study")
  that shares no fine-tuning result with ``zoo``.
- ``tiny``: a few-second miniature of ``zoo`` for the test suite.

Every job runs with one torch thread and deterministic kernels, seeded from the hub seed and
the job's id only, so a hub is the same whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Iterable
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
from optuna_fms.bench._data import TaskSpec
from optuna_fms.bench._data import make_task
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
from optuna_fms.bench._zoo import sample_zoo


HUB_NAMES = ("zoo", "zoo-mnist", "arch", "tiny")
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
# the rest); classes 5-9 in both, so the pretrained 5-way head is reused.
_ZOO_TARGETS: dict[str, tuple[str, int, int | None]] = {
    "zoo": ("digits", 150, None),
    "zoo-mnist": ("mnist8", 150, 750),
    "tiny": ("digits", 100, 200),
}


def _zoo_recipe(size: str, seed: int, name: str) -> Recipe:
    tiny = size == "tiny"
    n_members = 3 if tiny else 60
    source = TaskSpec("mnist8", (0, 1, 2, 3, 4), 0, 200 if tiny else 400, seed)
    dataset, n_train, n_val = _ZOO_TARGETS["tiny" if tiny else name]
    target = TaskSpec(dataset, (5, 6, 7, 8, 9), n_train, n_val, seed)
    target_name = "scikit-learn digits 5-9" if dataset == "digits" else "MNIST (8x8) digits 5-9"
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
    if tiny:
        grid.update(lr=[0.01, 0.1], batch_size=[16, 32])
        fixed: dict[str, Any] = {"momentum": 0.9, "weight_decay": 1e-4}
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
        n_epochs=6 if tiny else 30,
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
        for v, (n_train, epochs, noise) in enumerate(variants):
            task = TaskSpec(source.dataset, source.classes, n_train, source.n_val, seed)
            starts.append(
                StartRecipe(
                    key=key if tiny else f"{key}-{v}",
                    arch=arch,
                    spec=spec,
                    pretrain={
                        "task": task.to_json(),
                        "opt": opt,
                        "epochs": epochs,
                        "batch_size": 64,
                        "label_noise": noise,
                        "seed": int(np.random.default_rng([seed, 13, i, v]).integers(2**31 - 1)),
                    },
                )
            )
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


def make_recipe(name: str, size: str = "full", seed: int = 0) -> Recipe:
    """The recipe of hub ``name`` (one of :data:`HUB_NAMES`) at ``size``."""
    if name not in HUB_NAMES:
        raise ValueError(f"Unknown hub {name!r}; expected one of {HUB_NAMES}.")
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; expected one of {SIZES}.")
    if name == "tiny":
        return _zoo_recipe("tiny", seed, "tiny")
    if name in ("zoo", "zoo-mnist"):
        return _zoo_recipe(size, seed, name)
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
    ``spec``, ``target`` (TaskSpec JSON) and ``start`` (path of the start's safetensors file).
    With ``out``, the checkpoints are written under it.
    """
    import safetensors.torch

    t0 = time.perf_counter()
    params = job["params"]
    torch.manual_seed(job["seed"])
    model = build_module(job["arch"], job["spec"])
    start = safetensors.torch.load_file(job["start"])
    model.load_state_dict(upcast(start))
    evaluator = build_module(job["arch"], job["spec"])
    task = make_task(TaskSpec.from_json(job["target"]))
    opt = {"name": job["optimizer"], "lr": params["lr"], "weight_decay": params["weight_decay"]}
    if "momentum" in params:
        opt["momentum"] = params["momentum"]
    n = job["n_epochs"]
    curves = {k: np.zeros(n) for k in ("val_accuracy", "val_loss", "train_loss")}
    states: list[dict[str, torch.Tensor]] = []

    def on_epoch(epoch: int, train_loss: float) -> None:
        state = rounded_state(model)
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
        ``"zoo"``, ``"zoo-mnist"``, ``"arch"`` or ``"tiny"`` (see ``docs/hubs.md``).
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
        "metric": "val_accuracy",
        "direction": "maximize",
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
    """Shape, build time, size on disk and spread of the final scores of a built hub."""
    from optuna_fms.bench._hub import Hub

    hub = Hub.load(path)
    final = hub.final_scores()
    best_any = hub.scores.max(axis=1)
    return {
        "name": hub.name,
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
        "best_epoch_max": float(best_any.max()),
        "start_accuracy_range": [
            min(s["info"]["source_val_accuracy"] for s in hub.index["starts"]),
            max(s["info"]["source_val_accuracy"] for s in hub.index["starts"]),
        ],
    }


def main_build(argv: list[str] | None = None) -> int:
    """``optuna-fms build-hub``: build a benchmark hub into a cache directory."""
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
    args = parser.parse_args(argv)
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
