"""Tests of the benchmark hubs: building (tiny recipes), determinism, the reader API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import safetensors
import torch

from optuna_fms.bench import Hub
from optuna_fms.bench import build_hub
from optuna_fms.bench import main_build
from optuna_fms.bench._build import grid_configs
from optuna_fms.bench._build import make_recipe


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> Hub:
    return Hub.load(tiny_dir)


@pytest.fixture(scope="module")
def arch_tiny(tmp_path_factory) -> Hub:
    out = tmp_path_factory.mktemp("arch")
    return Hub.load(build_hub("arch", out, workers=1, size="tiny", progress=False))


def test_tiny_hub_shape_and_layout(tiny: Hub, tiny_dir: Path) -> None:
    assert tiny_dir.name == "tiny"
    assert tiny.name == "tiny"
    assert tiny.n_configs == 12 and tiny.n_epochs == 6
    assert tiny.scores.shape == (12, 6)
    assert len(tiny.configs) == 12
    for c in range(tiny.n_configs):
        assert (tiny_dir / f"checkpoints/c{c:05d}.safetensors").is_file()
    with safetensors.safe_open(tiny_dir / "checkpoints/c00000.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
        assert all(f.get_slice(k).get_shape()[0] == 6 for k in f.keys())
    index = json.loads((tiny_dir / "index.json").read_text())
    assert index["format"] == 2 and index["n_epochs"] == 6


def test_scores_in_range_and_learning_happens(tiny: Hub) -> None:
    s = tiny.scores
    assert np.all((s >= 0) & (s <= 1))
    assert np.all(np.isfinite(tiny.curves["train_loss"]))
    # 5 classes: chance is ~0.2. Some configurations learn well, on average scores improve.
    assert tiny.best_final_score == pytest.approx(tiny.final_scores().max())
    assert tiny.best_final_score > 0.6
    assert tiny.final_scores().mean() > s[:, 0].mean() + 0.05
    # Ranking matters: the hub is not flat.
    assert tiny.final_scores().max() - tiny.final_scores().min() > 0.3


def test_build_is_deterministic_and_independent_of_workers(tiny: Hub, tmp_path: Path) -> None:
    other = Hub.load(build_hub("tiny", tmp_path, workers=2, progress=False))
    assert other.configs == tiny.configs
    np.testing.assert_array_equal(other.scores, tiny.scores)
    for c in (0, 7):
        a, b = tiny.checkpoint(c, 5), other.checkpoint(c, 5)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_seed_gives_other_hub() -> None:
    a, b = make_recipe("tiny", seed=0), make_recipe("tiny", seed=1)
    assert grid_configs(a) == grid_configs(b)  # the grid is the same...
    assert a.starts != b.starts  # ...the zoo members (and the training seeds) are not


@pytest.mark.parametrize("name", ["zoo", "arch"])
def test_full_recipes_are_grids_of_the_promised_size(name: str) -> None:
    recipe = make_recipe(name)
    configs = grid_configs(recipe)
    assert len(configs) == recipe.n_configs == len({tuple(c.values()) for c in configs})
    assert recipe.n_configs >= (1920 if name == "zoo" else 300)
    assert recipe.n_epochs >= (30 if name == "zoo" else 20)
    assert len(recipe.starts) >= (60 if name == "zoo" else 12)
    for k in recipe.ordered:
        values = np.asarray(recipe.grid[k], dtype=float)
        assert np.all(np.diff(values) > 0)
        if len(values) > 2:  # the index is linear in the log of the value
            steps = np.diff(np.log(values))
            np.testing.assert_allclose(steps, steps[0], rtol=1e-3)
    space = recipe.search_space
    for c in configs:
        for k, v in c.items():
            assert space[k]._contains(space[k].to_internal_repr(v))


def test_checkpoint_reproduces_stored_score(tiny: Hub) -> None:
    for c in range(tiny.n_configs):
        for e in (0, tiny.n_epochs - 1):
            net = tiny.module(c)
            state = tiny.checkpoint(c, e)
            assert all(v.dtype == torch.float32 for v in state.values())
            net.load_state_dict(state)
            assert tiny.evaluate(net) == tiny.scores[c, e]


def test_checkpoints_change_over_epochs_and_start_from_start_weights(tiny: Hub) -> None:
    c = int(np.argmax(tiny.final_scores()))
    start = tiny.start_weights(c)
    first, last = tiny.checkpoint(c, 0), tiny.checkpoint(c, tiny.n_epochs - 1)
    assert start.keys() == first.keys()
    assert any(not torch.equal(first[k], last[k]) for k in first)
    assert any(not torch.equal(start[k], first[k]) for k in first)
    # Configurations sharing a zoo member share the start weights; others do not.
    member = tiny.configs[c]["member"]
    same = [i for i, p in enumerate(tiny.configs) if p["member"] == member and i != c]
    diff = [i for i, p in enumerate(tiny.configs) if p["member"] != member]
    w = "conv1.weight"
    assert torch.equal(tiny.start_weights(same[0])[w], start[w])
    assert not torch.equal(tiny.start_weights(diff[0])[w], start[w])
    net = tiny.module(c)
    net.load_state_dict(start)
    assert 0.0 <= tiny.evaluate(net) <= 1.0
    with pytest.raises(IndexError):
        tiny.checkpoint(c, tiny.n_epochs)


def test_search_space_is_the_grid(tiny: Hub) -> None:
    space = tiny.search_space
    assert set(space) == {"member", "lr", "batch_size"}
    assert isinstance(space["member"], optuna.distributions.CategoricalDistribution)
    assert space["lr"] == optuna.distributions.IntDistribution(0, 1)
    assert tiny.ordered == ("lr", "batch_size")
    assert tiny.grid["lr"] == [0.01, 0.1] and tiny.grid["batch_size"] == [16, 32]
    # Every point of the search space is exactly one configuration.
    points = {(m, lr, b) for m in space["member"].choices for lr in (0, 1) for b in (0, 1)}
    assert points == {(c["member"], c["lr"], c["batch_size"]) for c in tiny.configs}
    for i, params in enumerate(tiny.configs):
        for k, d in space.items():
            assert d._contains(d.to_internal_repr(params[k]))
        assert tiny.find_config(params) == i
        assert tiny.find_config(dict(reversed(list(params.items())))) == i
        hp = tiny.hyperparameters(i)
        assert hp["lr"] == tiny.grid["lr"][params["lr"]]
        assert hp["momentum"] == 0.9 and hp["member"] == params["member"]
    with pytest.raises(KeyError):
        tiny.find_config({**tiny.configs[0], "lr": 2})
    with pytest.raises(KeyError):
        tiny.find_config({"lr": 0})


def test_structure_is_json_and_shared_per_arch(tiny: Hub) -> None:
    st = tiny.structure(0)
    pytest.importorskip("optuna_fms.metanet")
    assert st is not None
    json.dumps(st)
    keys = {v for n in st["nodes"] for v in n.get("params", {}).values()}
    assert keys == set(tiny.module(0).state_dict())


def test_arch_hub_modules_roundtrip(arch_tiny: Hub) -> None:
    archs = {arch_tiny.arch(c) for c in range(arch_tiny.n_configs)}
    assert archs == {"mlp", "simple_cnn", "resnet", "transformer"}
    assert set(arch_tiny.search_space["arch"].choices) == {"mlp", "cnn", "resnet", "transformer"}
    seen = set()
    for c in range(arch_tiny.n_configs):
        if arch_tiny.arch(c) in seen:
            continue
        seen.add(arch_tiny.arch(c))
        net = arch_tiny.module(c)
        e = arch_tiny.n_epochs - 1
        state = arch_tiny.checkpoint(c, e)
        net.load_state_dict(state)  # BatchNorm buffers included
        assert arch_tiny.evaluate(net) == arch_tiny.scores[c, e]
        net.load_state_dict(arch_tiny.start_weights(c))
    assert np.all((arch_tiny.scores >= 0) & (arch_tiny.scores <= 1))


def test_cli_uses_cache(tiny_dir: Path, capsys) -> None:
    before = (tiny_dir / "index.json").stat().st_mtime_ns
    assert main_build(["--hub", "tiny", "--out", str(tiny_dir.parent), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_configs"] == 12 and summary["final_max"] <= 1.0
    assert (tiny_dir / "index.json").stat().st_mtime_ns == before
