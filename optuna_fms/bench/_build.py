"""Building the benchmark hubs by really training (``optuna-fms build-hub``).

Three recipes (see ``docs/hubs.md``):

- ``zoo``: a zoo of small CNNs pretrained on MNIST digits 0-4 with random seeds and settings,
  fine-tuned with SGD on scikit-learn digits 5-9; a configuration picks the zoo member and the
  SGD hyper-parameters.
- ``arch``: an MLP, a CNN, a ResNet with BatchNorm and a small transformer pretrained on MNIST
  (all classes), fine-tuned with AdamW on scikit-learn digits; a configuration picks the
  architecture and the AdamW hyper-parameters.
- ``tiny``: a few-second miniature of ``zoo`` for the test suite.

Every job runs with one torch thread and deterministic kernels, seeded from the hub seed and
the job's id only, so a hub is the same whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
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
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
import torch

from optuna_fms.bench._arch import build_module
from optuna_fms.bench._arch import n_parameters
from optuna_fms.bench._data import TaskSpec
from optuna_fms.bench._data import make_task
from optuna_fms.bench._hub import CURVES_FILE
from optuna_fms.bench._hub import FORMAT_VERSION
from optuna_fms.bench._hub import INDEX_FILE
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


HUB_NAMES = ("zoo", "arch", "tiny")
SIZES = ("full", "tiny")
DEFAULT_OUT = "~/.cache/optuna-fms/hubs"


@dataclass
class Recipe:
    """Everything that defines a hub; built from ``(name, size, seed)`` by :func:`make_recipe`."""

    name: str
    size: str
    seed: int
    starts: list[StartRecipe]
    start_param: str
    search_space: dict[str, BaseDistribution]
    n_configs: int
    n_epochs: int
    source: TaskSpec
    target: TaskSpec
    optimizer: str  # "sgd" or "adamw"; hyper-parameters come from the configuration
    description: str


def _zoo_recipe(size: str, seed: int, name: str) -> Recipe:
    tiny = size == "tiny"
    n_members = 3 if tiny else 60
    source = TaskSpec("mnist8", (0, 1, 2, 3, 4), 0, 200 if tiny else 400, seed)
    target = TaskSpec("digits", (5, 6, 7, 8, 9), 100 if tiny else 150, 200 if tiny else None, seed)
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
    space: dict[str, BaseDistribution] = {
        "member": CategoricalDistribution(list(range(n_members))),
        "lr": FloatDistribution(5e-4, 0.5, log=True),
        "momentum": FloatDistribution(0.0, 0.95),
        "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
        "batch_size": CategoricalDistribution([16, 32] if tiny else [16, 32, 64, 128]),
    }
    return Recipe(
        name=name,
        size=size,
        seed=seed,
        starts=starts,
        start_param="member",
        search_space=space,
        n_configs=12 if tiny else 300,
        n_epochs=6 if tiny else 30,
        source=source,
        target=target,
        optimizer="sgd",
        description=(
            "Zoo of small CNNs pretrained on MNIST (8x8) digits 0-4 with random seeds, "
            "training-set sizes, epochs, learning rates and label noise; fine-tuned with SGD on "
            "scikit-learn digits 5-9."
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


def _arch_recipe(size: str, seed: int) -> Recipe:
    tiny = size == "tiny"
    source = TaskSpec(
        "mnist8", tuple(range(10)), 500 if tiny else 4000, 200 if tiny else 1000, seed
    )
    target = TaskSpec("digits", tuple(range(10)), 100 if tiny else 300, 200 if tiny else 600, seed)
    starts = []
    for i, (key, (arch, spec, opt)) in enumerate(_ARCH_SPECS.items()):
        starts.append(
            StartRecipe(
                key=key,
                arch=arch,
                spec=spec,
                pretrain={
                    "task": source.to_json(),
                    "opt": opt,
                    "epochs": 2 if tiny else 12,
                    "batch_size": 64,
                    "label_noise": 0.0,
                    "seed": int(np.random.default_rng([seed, 13, i]).integers(2**31 - 1)),
                },
            )
        )
    space: dict[str, BaseDistribution] = {
        "arch": CategoricalDistribution(list(_ARCH_SPECS)),
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "weight_decay": FloatDistribution(1e-5, 1e-1, log=True),
        "batch_size": CategoricalDistribution([16, 32] if tiny else [16, 32, 64, 128]),
    }
    return Recipe(
        name="arch",
        size=size,
        seed=seed,
        starts=starts,
        start_param="arch",
        search_space=space,
        n_configs=8 if tiny else 160,
        n_epochs=4 if tiny else 20,
        source=source,
        target=target,
        optimizer="adamw",
        description=(
            "An MLP, a CNN, a ResNet with BatchNorm and a small vision transformer pretrained on "
            "MNIST (8x8, 10 classes); fine-tuned with AdamW on scikit-learn digits (10 classes)."
        ),
    )


def make_recipe(name: str, size: str = "full", seed: int = 0) -> Recipe:
    """The recipe of hub ``name`` (``"zoo"``, ``"arch"`` or ``"tiny"``) at ``size``."""
    if name not in HUB_NAMES:
        raise ValueError(f"Unknown hub {name!r}; expected one of {HUB_NAMES}.")
    if size not in SIZES:
        raise ValueError(f"Unknown size {size!r}; expected one of {SIZES}.")
    if name == "tiny":
        return _zoo_recipe("tiny", seed, "tiny")
    if name == "zoo":
        return _zoo_recipe(size, seed, "zoo")
    return _arch_recipe(size, seed)


def _sample_value(d: BaseDistribution, rng: np.random.Generator) -> Any:
    if isinstance(d, CategoricalDistribution):
        return d.choices[int(rng.integers(len(d.choices)))]
    if isinstance(d, FloatDistribution):
        if d.log:
            v = float(np.exp(rng.uniform(np.log(d.low), np.log(d.high))))
        else:
            v = float(rng.uniform(d.low, d.high))
        return float(min(max(float(f"{v:.4g}"), d.low), d.high))
    if isinstance(d, IntDistribution):
        return int(rng.integers(d.low, d.high + 1))
    raise TypeError(f"Unsupported distribution {d!r}.")


def sample_configs(recipe: Recipe) -> list[dict[str, Any]]:
    """The hub's configurations: the start parameter is balanced (each start used equally
    often, in random order), the others are drawn at random from their distributions."""
    rng = np.random.default_rng([recipe.seed, 5])
    start_choices = recipe.search_space[recipe.start_param].choices  # type: ignore[attr-defined]
    start_col = rng.permutation(np.resize(np.arange(len(start_choices)), recipe.n_configs))
    configs = []
    for i in range(recipe.n_configs):
        params = {}
        for k, d in recipe.search_space.items():
            params[k] = start_choices[start_col[i]] if k == recipe.start_param else None
            if params[k] is None:
                params[k] = _sample_value(d, rng)
        configs.append(params)
    return configs


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
        ``"zoo"``, ``"arch"`` or ``"tiny"`` (see ``docs/hubs.md``).
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
    configs = sample_configs(recipe)
    start_keys = [s.key for s in recipe.starts]
    start_choices = list(recipe.search_space[recipe.start_param].choices)  # type: ignore
    config_start = [start_choices.index(c[recipe.start_param]) for c in configs]

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
                    "params": params,
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
        "start_param": recipe.start_param,
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
