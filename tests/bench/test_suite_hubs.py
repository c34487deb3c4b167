"""The tabular, crossing and zoo-noisy hubs (tiny miniatures) and the replay of a minimised hub."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from test_replay import FixedSampler
import torch

from optuna_fms.bench import Hub
from optuna_fms.bench import build_hub
from optuna_fms.bench._arch import build_module
from optuna_fms.bench._arch import n_parameters
from optuna_fms.bench._build import grid_configs
from optuna_fms.bench._build import make_recipe
from optuna_fms.bench._build import summarize
from optuna_fms.bench._cli import reference_table
from optuna_fms.bench._metrics import kendall_tau
from optuna_fms.bench._metrics import reference_predictors
from optuna_fms.bench._replay import CONFIG_ATTR
from optuna_fms.bench._replay import _Tracker
from optuna_fms.bench._replay import make_objective
from optuna_fms.bench._replay import predict_final_scores
from optuna_fms.bench._replay import run_replay


pytestmark = pytest.mark.usefixtures("one_thread")

NEW_HUBS = ("tabular", "crossing", "zoo-noisy")


@pytest.fixture(scope="module")
def tiny_hubs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Hub]:
    out = tmp_path_factory.mktemp("suite")
    return {
        name: Hub.load(build_hub(name, out, workers=1, size="tiny", progress=False))
        for name in NEW_HUBS
    }


@pytest.fixture(scope="module")
def tabular(tiny_hubs: dict[str, Hub]) -> Hub:
    return tiny_hubs["tabular"]


@pytest.mark.parametrize("name", NEW_HUBS)
def test_tiny_hub_shape_direction_and_grid(tiny_hubs: dict[str, Hub], name: str) -> None:
    hub = tiny_hubs[name]
    index = json.loads((hub.path / "index.json").read_text())
    assert hub.path.name == f"{name}-tiny" and index["format"] == 2
    minimised = name == "tabular"
    assert index["metric"] == ("val_loss" if minimised else "val_accuracy")
    assert index["direction"] == hub.direction == ("minimize" if minimised else "maximize")
    assert hub.values.shape == hub.scores.shape == (hub.n_configs, hub.n_epochs)
    np.testing.assert_array_equal(hub.scores, hub.sign * hub.values)
    assert np.all(np.isfinite(hub.values))
    if not minimised:
        assert np.all((hub.values >= 0) & (hub.values <= 1))
    # The search space is exactly the grid: every point is one configuration.
    space = hub.search_space
    axes = [
        range(d.low, d.high + 1)
        if isinstance(d, optuna.distributions.IntDistribution)
        else d.choices
        for d in space.values()
    ]
    points = {tuple(p) for p in itertools.product(*axes)}
    assert points == {tuple(c[k] for k in space) for c in hub.configs}
    assert len(points) == hub.n_configs
    for k, d in space.items():
        ordered = k in hub.ordered
        assert isinstance(d, optuna.distributions.IntDistribution) == ordered
        if ordered:
            assert d.high == len(hub.grid[k]) - 1
    for i, c in enumerate(hub.configs):
        assert hub.find_config(c) == i


@pytest.mark.parametrize("name", NEW_HUBS)
def test_checkpoint_reproduces_the_stored_metric(tiny_hubs: dict[str, Hub], name: str) -> None:
    hub = tiny_hubs[name]
    for c in (0, hub.n_configs - 1):
        net = hub.module(c)
        e = hub.n_epochs - 1
        net.load_state_dict(hub.checkpoint(c, e))
        assert hub.evaluate(net) == hub.values[c, e]
        net.load_state_dict(hub.start_weights(c))


def test_tabular_networks_follow_width_and_depth(tabular: Hub) -> None:
    for c in range(tabular.n_configs):
        hp = tabular.hyperparameters(c)
        net = tabular.module(c)
        linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linear) == hp["depth"] + 1
        assert linear[0].out_features == hp["width"] and linear[0].in_features == 20
        assert any(isinstance(m, torch.nn.Dropout) for m in net.modules())
    # Dropout is a training setting: configurations differing only in it share the start.
    same = [c for c in range(tabular.n_configs) if tabular.configs[c]["width"] == 0]
    keys = {tabular.start_key(c) for c in same}
    assert len(keys) == 1
    # Learning happens: the best loss is below chance (log 5) and below the first epoch's.
    assert tabular.sign * tabular.best_final_score < math.log(5)
    assert tabular.values[:, -1].min() < tabular.values[:, 0].min()


def test_tabular_build_is_reproducible_across_workers(tabular: Hub, tmp_path: Path) -> None:
    other = Hub.load(build_hub("tabular", tmp_path, workers=2, size="tiny", progress=False))
    assert other.configs == tabular.configs
    np.testing.assert_array_equal(other.curves["val_loss"], tabular.curves["val_loss"])
    a, b = tabular.checkpoint(3, 2), other.checkpoint(3, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("name", "min_configs", "min_epochs", "min_starts"),
    [("tabular", 300, 40, 6), ("crossing", 100, 30, 3), ("zoo-noisy", 600, 20, 100)],
)
def test_full_recipes(name: str, min_configs: int, min_epochs: int, min_starts: int) -> None:
    recipe = make_recipe(name)
    configs = grid_configs(recipe)
    assert len(configs) == recipe.n_configs == len({tuple(c.values()) for c in configs})
    assert recipe.n_configs >= min_configs and recipe.n_epochs >= min_epochs
    assert len(recipe.starts) >= min_starts
    for k in recipe.ordered:
        values = np.asarray(recipe.grid[k], dtype=float)
        assert np.all(np.diff(values) > 0)
        if len(values) > 2:  # the index is linear in the log of the value
            steps = np.diff(np.log(values))
            np.testing.assert_allclose(steps, steps[0], rtol=2e-3)
    # fp16 checkpoints of every epoch of every configuration stay under 600 MiB.
    n_params = {s.key: n_parameters(build_module(s.arch, s.spec)) for s in recipe.starts}
    starts = [recipe.starts[i].key for i in range(len(recipe.starts))]
    per_start = {k: 0 for k in starts}
    for c in configs:
        for s, choice in zip(recipe.starts, recipe.start_choices):
            if all(c[k] == v for k, v in choice.items()):
                per_start[s.key] += 1
                break
    total = sum(2 * n_params[k] * recipe.n_epochs * n for k, n in per_start.items())
    assert sum(per_start.values()) == recipe.n_configs
    assert total < 600 * 2**20
    assert recipe.direction == ("minimize" if name == "tabular" else "maximize")


def test_zoo_noisy_extends_the_zoo() -> None:
    zoo, noisy = make_recipe("zoo"), make_recipe("zoo-noisy")
    assert noisy.starts[: len(zoo.starts)] == zoo.starts  # the first 60 members are the zoo's
    assert noisy.target.n_val is not None and noisy.target.n_val <= 100
    assert isinstance(noisy.search_space["member"], optuna.distributions.CategoricalDistribution)


def test_reference_predictors_of_new_hubs(tiny_hubs: dict[str, Hub]) -> None:
    tab = reference_predictors(tiny_hubs["tabular"])
    assert "start source accuracy" not in tab  # trained from scratch
    assert set(tab) >= {"lr", "dropout", "width", "score after 10% of epochs"}
    hub = tiny_hubs["tabular"]
    # Scores are higher-is-better: the first epoch's loss, negated, ranks like the final one.
    assert tab["score after 1 epoch"] == pytest.approx(
        kendall_tau(-hub.values[:, 0], -hub.values[:, -1])
    )
    noisy = reference_predictors(tiny_hubs["zoo-noisy"])
    assert "member" not in noisy and "start source accuracy" in noisy
    assert "score after 10% of epochs" in reference_table(tiny_hubs["crossing"].path)
    summary = summarize(hub.path)
    assert summary["direction"] == "minimize" and summary["final_min"] == hub.values[:, -1].min()


# ------------------------------------------------------------------ replay of a minimised hub
def test_minimised_replay_reports_losses_and_finds_the_best(tabular: Hub, tmp_path: Path) -> None:
    hub = tabular
    best = int(hub.values[:, -1].argmin())
    assert best == int(hub.final_scores().argmax())
    order = [c for c in range(hub.n_configs) if c != best] + [best]
    tracker = _Tracker(hub, budget=10**6)
    study = optuna.create_study(direction=hub.study_direction, sampler=FixedSampler(hub, order))
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    study.optimize(make_objective(hub, store, tracker), n_trials=len(order))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    for t, c in zip(study.trials, order):
        assert t.user_attrs[CONFIG_ATTR] == c
        steps = sorted(t.intermediate_values)
        np.testing.assert_array_equal([t.intermediate_values[s] for s in steps], hub.values[c])
        assert t.value == hub.values[c, -1]  # the loss, as measured
    assert study.best_trial.user_attrs[CONFIG_ATTR] == best
    # The tracker works in higher-is-better units: regret is a loss difference, >= 0 until
    # an epoch beats every final loss, non-increasing, and the incumbent ends on the best.
    regret = hub.best_final_score - np.asarray(tracker.result_best)
    assert np.all(np.diff(regret) <= 0)
    assert regret[-1] == pytest.approx(hub.best_final_score - hub.scores.max())
    assert np.all(regret >= hub.best_final_score - hub.scores.max())
    first = hub.values[order[0]]
    assert regret[0] == pytest.approx(first[0] - hub.values[:, -1].min())
    assert tracker.result_inc[-1] <= hub.best_final_score


def test_minimised_run_replay(tabular: Hub) -> None:
    r = run_replay(tabular, "random", seed=0, budget=30)
    assert r.best_final_score == tabular.best_final_score < 0  # minus a loss
    assert len(r.regret) == 30 and np.all(np.diff(r.regret) <= 0)
    assert np.all(r.regret >= tabular.best_final_score - tabular.scores.max())
    assert set(r.best_observed) <= set(tabular.scores.ravel().tolist())


class _Forecast:
    def __init__(self, mean: float) -> None:
        self.mean = mean


def test_tau_of_forecasts_has_the_right_sign_on_a_minimised_hub(
    tabular: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A perfect forecaster of the objective (the final loss) must get tau = +1.
    final_loss = tabular.values[:, -1]
    monkeypatch.setattr(
        "optuna_fms.forecast", lambda study, configs: [_Forecast(v) for v in final_loss]
    )
    predicted = predict_final_scores(optuna.create_study(direction="minimize"), tabular)
    assert predicted is not None
    assert kendall_tau(predicted, tabular.final_scores()) == pytest.approx(1.0)
