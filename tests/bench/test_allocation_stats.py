"""Allocation statistics of replayed runs, and the replay of an objective without checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from optuna_fms.bench import Hub
from optuna_fms.bench._replay import run_replay


@pytest.fixture(scope="module")
def hub(tiny_dir: Path) -> Hub:
    return Hub.load(tiny_dir)


def test_allocation_of_random_search_at_full_budget(hub: Hub) -> None:
    r = run_replay(hub, "random", seed=0, budget=3 * hub.n_epochs)
    a = r.allocation
    # Three trials at the full budget: nothing for one epoch, the first full after n_epochs.
    assert a["started"] <= 3 and a["one_epoch_share"] == 0.0
    assert a["epochs_to_full"] == hub.n_epochs
    assert 0.0 <= a["top_epoch_share"] <= 1.0


def test_fms_without_checkpoints_never_continues(hub: Hub) -> None:
    storage = optuna.storages.InMemoryStorage()
    r = run_replay(hub, "fms-no-checkpoints", seed=0, budget=40, storage=storage)
    assert r.error is None
    trials = storage.get_all_trials(0)
    # Pauses are final: nothing is continued. A configuration is trained again from scratch
    # (a restart) only once all 12 have been started, and then past where it stopped.
    assert r.epochs_spent == 40 or r.n_configs == hub.n_configs
    assert not any(t.user_attrs.get("fms:checkpoints") for t in trials)
    assert r.n_continued == 0
    furthest: dict[int, int] = {}
    for t in trials:  # creation order
        c = t.user_attrs["bench:config"]
        if c in furthest:
            assert len(furthest) == hub.n_configs
            assert t.system_attrs["fms:restart"]["step"] == furthest[c]
        furthest[c] = max(furthest.get(c, -1), t.last_step)


def test_fms_allocation_continues_paused_trials(hub: Hub) -> None:
    r = run_replay(hub, "fms-rungs", seed=0, budget=40)
    assert r.error is None
    assert r.n_continued > 0
    assert r.allocation["started"] <= hub.n_configs
    assert np.isfinite(r.allocation["epochs_to_full"])
