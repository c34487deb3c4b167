"""The fine-tuning hub (``finetune``, tiny miniature): bases, full fine-tuning, LoRA adapters."""

from __future__ import annotations

from collections.abc import Iterator
import itertools
import json
from pathlib import Path
import sys

import numpy as np
import optuna
import pytest
import safetensors
import torch

import optuna_fms
from optuna_fms import _attrs
from optuna_fms.bench import Hub
from optuna_fms.bench import build_hub
from optuna_fms.bench._arch import build_module
from optuna_fms.bench._arch import n_parameters
from optuna_fms.bench._build import grid_configs
from optuna_fms.bench._build import make_recipe
from optuna_fms.bench._finetune import shared_runs
from optuna_fms.bench._methods import start_weights_fn
from optuna_fms.bench._replay import CONFIG_ATTR
from optuna_fms.bench._replay import _Tracker
from optuna_fms.bench._replay import make_objective


if str(Path(__file__).parents[1]) not in sys.path:  # tests/, for extras.py
    sys.path.insert(0, str(Path(__file__).parents[1]))
from extras import require  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    require("peft")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("finetune")
    yield Hub.load(build_hub("finetune", out, workers=1, size="tiny", progress=False))
    torch.set_num_threads(n)


def _lora(hub: Hub) -> list[int]:
    return [c for c in range(hub.n_configs) if hub.configs[c]["method"] == "lora"]


def test_tiny_hub_is_the_grid_of_bases_methods_ranks_and_learning_rates(hub: Hub) -> None:
    index = json.loads((hub.path / "index.json").read_text())
    assert hub.path.name == "finetune-tiny" and index["format"] == 2
    assert (hub.n_configs, hub.n_epochs) == (32, 5)
    assert hub.values.shape == hub.scores.shape == (32, 5)
    assert np.all((hub.values >= 0) & (hub.values <= 1))
    space = hub.search_space
    assert space["base"] == optuna.distributions.CategoricalDistribution(["vit-0", "cnn-0"])
    assert space["method"] == optuna.distributions.CategoricalDistribution(["full", "lora"])
    assert set(hub.ordered) == {"rank", "alpha", "lr"}
    axes = [
        range(d.low, d.high + 1) if k in hub.ordered else d.choices  # type: ignore[union-attr]
        for k, d in space.items()
    ]
    assert {tuple(p) for p in itertools.product(*axes)} == {
        tuple(c[k] for k in space) for c in hub.configs
    }
    for i, c in enumerate(hub.configs):
        assert hub.find_config(c) == i
        assert hub.start_key(i) == c["base"]
    # Two families: a transformer and a CNN, each with its own start.
    assert {hub.arch(c) for c in range(hub.n_configs)} == {"linear_vit", "conv_mlp"}
    # Learning happens (5 classes: chance 0.2), and the hub is not flat.
    assert hub.best_final_score > 0.5
    assert hub.final_scores().max() - hub.final_scores().min() > 0.2


def test_full_configurations_share_one_run_across_rank_and_alpha(hub: Hub) -> None:
    for c in range(hub.n_configs):
        cfg = hub.configs[c]
        if cfg["method"] != "full":
            assert hub.adapter(c) is not None
            continue
        assert hub.adapter(c) is None
        twin = hub.find_config({**cfg, "rank": 1 - cfg["rank"]})
        np.testing.assert_array_equal(hub.values[c], hub.values[twin])
        a, b = hub.checkpoint(c, 4), hub.checkpoint(twin, 4)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # LoRA configurations that differ in rank are different runs.
    lora = _lora(hub)
    pairs = [(c, hub.find_config({**hub.configs[c], "rank": 1})) for c in lora]
    assert any(not np.array_equal(hub.values[a], hub.values[b]) for a, b in pairs if a != b)


def test_lora_checkpoints_are_adapters(hub: Hub) -> None:
    import peft

    for c in _lora(hub):
        path = hub.path / f"checkpoints/c{c:05d}.safetensors"
        with safetensors.safe_open(path, "pt") as f:
            keys = set(f.keys())
            assert {f.get_slice(k).get_dtype() for k in keys} == {"F16"}
            assert all(f.get_slice(k).get_shape()[0] == hub.n_epochs for k in keys)
        net = hub.module(c)
        assert isinstance(net, peft.PeftModel)
        assert keys == set(peft.get_peft_model_state_dict(net))
        assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in keys)
        rank = hub.adapter(c)["r"]  # type: ignore[index]
        assert rank == hub.grid["rank"][hub.configs[c]["rank"]]
        assert all(f.shape[0] == rank for k, f in hub.checkpoint(c, 0).items() if "lora_A" in k)
    # An adapter is a fraction of the network it adapts.
    full = next(c for c in range(hub.n_configs) if hub.adapter(c) is None)
    adapter = hub.find_config({**hub.configs[full], "method": "lora"})
    size = {c: (hub.path / f"checkpoints/c{c:05d}.safetensors").stat().st_size for c in (full,)}
    size[adapter] = (hub.path / f"checkpoints/c{adapter:05d}.safetensors").stat().st_size
    assert size[adapter] < 0.5 * size[full]


def test_checkpoints_reproduce_the_stored_scores(hub: Hub) -> None:
    for c in range(hub.n_configs):
        net = hub.module(c)
        for e in (0, hub.n_epochs - 1):
            net.load_state_dict(hub.checkpoint(c, e))
            assert hub.evaluate(net) == hub.values[c, e]
    # The adapter acts: without it the LoRA network is its start.
    c = max(_lora(hub), key=lambda i: hub.values[i, -1])
    start = hub.module(c)
    net = hub.module(c)
    net.load_state_dict(hub.checkpoint(c, hub.n_epochs - 1))
    x, _ = hub.validation_data()
    with torch.no_grad():
        assert not torch.allclose(net.eval()(x), start.eval()(x))
        with net.disable_adapter():
            torch.testing.assert_close(net(x), start(x), rtol=0, atol=0)


def test_adapter_checkpoint_graph_builds(hub: Hub) -> None:
    from optuna_fms.metanet import build_graph

    c = _lora(hub)[-1]
    net = hub.module(c)
    adapter = hub.checkpoint(c, hub.n_epochs - 1)
    net.load_state_dict(adapter)
    structure = hub.checkpoint_structure(c)
    graph = build_graph(adapter, structure)
    n_adapter = sum(t.numel() for t in adapter.values())
    assert graph.num_edges > 0 and graph.num_edges <= n_adapter
    # One block per adapted layer, scaled as peft scales it: another scaling, another graph.
    other = build_graph({k: 2 * v if "lora_B" in k else v for k, v in adapter.items()}, structure)
    assert not torch.equal(graph.edge_attr, other.edge_attr)
    start_graph = build_graph(hub.start_weights(c), hub.structure(c))
    assert start_graph.num_edges > graph.num_edges
    assert structure != hub.structure(c)
    full = next(i for i in range(hub.n_configs) if hub.adapter(i) is None)
    assert hub.checkpoint_structure(full) == hub.structure(full)


def test_replay_with_fms_sampler_pruner_and_adapter_checkpoints(hub: Hub, tmp_path) -> None:
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    sampler = optuna_fms.FMSSampler(
        seed=0,
        artifact_store=store,
        n_startup_trials=4,
        weights="gmn",
        start_weights=start_weights_fn(hub),
        warn_independent_sampling=False,
    )
    pruner = optuna_fms.FMSPruner(max_steps=hub.n_epochs, n_startup_trials=2, seed=0)
    tracker = _Tracker(hub, budget=40)
    study = optuna.create_study(direction=hub.study_direction, sampler=sampler, pruner=pruner)
    study.optimize(make_objective(hub, store, tracker), n_trials=30)
    assert tracker.spent == 40
    trials = [t for t in study.trials if CONFIG_ATTR in t.user_attrs]
    configs = {t.user_attrs[CONFIG_ATTR] for t in trials}
    assert len(configs) > 4
    saved = [t for t in trials if t.user_attrs.get("fms:checkpoints")]
    lora = [t for t in saved if hub.adapter(t.user_attrs[CONFIG_ATTR]) is not None]
    assert lora, "no LoRA configuration was replayed"
    # A paused LoRA trial was continued: resume() restored its adapter onto the base.
    attrs = [{**t.user_attrs, **t.system_attrs} for t in lora]
    assert any(a.get(_attrs.RESUMED) and _attrs.CONTINUES in a for a in attrs)
    for t in lora:
        c = t.user_attrs[CONFIG_ATTR]
        ckpt = optuna_fms.read_checkpoint(t, artifact_store=store)
        adapter = ckpt.metadata["adapter"]
        assert adapter is not None and adapter["peft_type"] == "LORA"
        assert {v["r"] for v in adapter["layers"].values()} == {hub.adapter(c)["r"]}  # type: ignore[index]
        stored = hub.checkpoint(c, ckpt.step)
        assert set(ckpt.tensors) == set(stored)
        assert all(torch.equal(ckpt.tensors[k], stored[k]) for k in stored)


@pytest.mark.parametrize("size", ["full", "tiny"])
def test_recipe(size: str) -> None:
    recipe = make_recipe("finetune", size)
    configs = grid_configs(recipe)
    assert len(configs) == recipe.n_configs == len({tuple(c.values()) for c in configs})
    runs = shared_runs(recipe, configs)
    full = [c for c in configs if c["method"] == "full"]
    assert len(set(runs)) == recipe.n_configs - len(full) + len(full) // (
        len(recipe.grid["rank"]) * len(recipe.grid["alpha"])
    )
    if size == "tiny":
        return
    assert recipe.n_configs == 8 * 2 * 2 * 2 * 7 and recipe.n_epochs == 25
    assert {s.arch for s in recipe.starts} == {"linear_vit", "conv_mlp"}
    assert len(recipe.starts) == 8 and len({s.pretrain["seed"] for s in recipe.starts}) == 8
    lr = np.asarray(recipe.grid["lr"])
    np.testing.assert_allclose(np.diff(np.log(lr)), np.log(10) / 2, rtol=2e-3)
    # Full runs' checkpoints (the other full configurations link to them) stay under 100 MiB.
    n_params = {s.key: n_parameters(build_module(s.arch, s.spec)) for s in recipe.starts}
    stored = sum(
        2 * n_params[c["base"]] * recipe.n_epochs
        for i, c in enumerate(configs)
        if runs[i] == i and c["method"] == "full"
    )
    assert stored < 100 * 2**20


def test_build_is_independent_of_workers(hub: Hub, tmp_path) -> None:
    other = Hub.load(build_hub("finetune", tmp_path, workers=2, size="tiny", progress=False))
    assert other.configs == hub.configs
    for k in ("val_accuracy", "val_loss", "train_loss"):
        np.testing.assert_array_equal(other.curves[k], hub.curves[k])
    assert other.index["shared_run"] == hub.index["shared_run"]
    for c in (0, _lora(hub)[-1]):
        a, b = hub.checkpoint(c, 2), other.checkpoint(c, 2)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
