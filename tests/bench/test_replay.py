"""The replay harness on the tiny hub: curves, continuations, oracle, tau, epoch accounting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
import shutil

import numpy as np
import optuna
from optuna.samplers import BaseSampler
import pytest
from scipy import stats

import optuna_fms
from optuna_fms import _attrs
from optuna_fms.bench import Hub
from optuna_fms.bench import build_hub
from optuna_fms.bench._cli import main as bench_main
from optuna_fms.bench._cli import table
from optuna_fms.bench._cli import tau_table
from optuna_fms.bench._methods import FMS_STARTUP_TRIALS
from optuna_fms.bench._methods import METHODS
from optuna_fms.bench._metrics import best_reference
from optuna_fms.bench._metrics import kendall_tau
from optuna_fms.bench._metrics import mean_se
from optuna_fms.bench._metrics import reference_predictors
from optuna_fms.bench._replay import CONFIG_ATTR
from optuna_fms.bench._replay import HPARAMS_ATTR
from optuna_fms.bench._replay import RunResult
from optuna_fms.bench._replay import _Tracker
from optuna_fms.bench._replay import make_objective
from optuna_fms.bench._replay import predict_final_scores
from optuna_fms.bench._replay import run_replay


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Hub:
    return Hub.load(build_hub("tiny", tmp_path_factory.mktemp("hubs"), workers=1, progress=False))


class FixedSampler(BaseSampler):
    """Proposes the parameters of the configurations in ``order``, cycling."""

    def __init__(self, hub: Hub, order: list[int]) -> None:
        self._hub = hub
        self._order = order

    def infer_relative_search_space(self, study, trial):  # noqa: D102
        return {}

    def sample_relative(self, study, trial, search_space):  # noqa: D102
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: D102
        c = self._order[trial.number % len(self._order)]
        return self._hub.configs[c][param_name]


class PauseAt(optuna.pruners.BasePruner):
    """Prunes trial 0 at ``step`` and marks it paused (as FMSPruner would)."""

    def __init__(self, step: int) -> None:
        self._step = step

    def prune(self, study, trial):  # noqa: D102
        if trial.number == 0 and trial.last_step == self._step:
            study._storage.set_trial_user_attr(
                trial._trial_id, _attrs.PAUSED, {"step": self._step}
            )
            return True
        return False


def _store(tmp_path: Path) -> optuna.artifacts.FileSystemArtifactStore:
    return optuna.artifacts.FileSystemArtifactStore(str(tmp_path))


def test_replay_reports_the_stored_curve(hub: Hub, tmp_path: Path) -> None:
    order = [3, 7]
    tracker = _Tracker(hub, budget=10**6)
    study = optuna.create_study(direction="maximize", sampler=FixedSampler(hub, order))
    study.optimize(make_objective(hub, _store(tmp_path), tracker), n_trials=2)
    for t, c in zip(study.trials, order):
        assert t.user_attrs[CONFIG_ATTR] == c
        steps = sorted(t.intermediate_values)
        assert steps == list(range(hub.n_epochs))
        np.testing.assert_array_equal([t.intermediate_values[s] for s in steps], hub.scores[c])
        assert t.value == hub.scores[c, -1]
        # Every epoch's checkpoint went through save_checkpoint (the newest ones are kept).
        assert str(hub.n_epochs - 1) in t.user_attrs[_attrs.CHECKPOINTS]
    assert tracker.spent == 2 * hub.n_epochs == optuna_fms.epochs_spent(study.trials)


def test_continuation_replays_the_same_curve(hub: Hub, tmp_path: Path) -> None:
    c, pause = 5, 2
    store = _store(tmp_path)
    tracker = _Tracker(hub, budget=10**6)
    study = optuna.create_study(
        direction="maximize", sampler=FixedSampler(hub, [c]), pruner=PauseAt(pause)
    )
    objective = make_objective(hub, store, tracker)
    study.optimize(objective, n_trials=1)
    parent = study.trials[0]
    assert parent.state == optuna.trial.TrialState.PRUNED
    assert tracker.spent == pause + 1

    # A continuation: what FMSSampler records on the trial it chooses to continue ``parent``.
    study.enqueue_trial(parent.params)
    trial = study.ask()
    ref = {"trial": parent.number, "trial_id": parent._trial_id, "step": pause}
    study._storage.set_trial_user_attr(trial._trial_id, _attrs.CONTINUES, ref)
    value = objective(trial)
    study.tell(trial, value)
    child = study.trials[1]
    assert child.user_attrs[_attrs.RESUMED] is True
    curve = [child.intermediate_values[s] for s in sorted(child.intermediate_values)]
    np.testing.assert_array_equal(curve, hub.scores[c])
    # The continuation replays only the epochs after the pause.
    assert tracker.spent == hub.n_epochs
    assert optuna_fms.epochs_spent(study.trials) == hub.n_epochs


class OracleSampler(FixedSampler):
    def __init__(self, hub: Hub) -> None:
        super().__init__(hub, [int(hub.final_scores().argmax())])


def test_oracle_reaches_zero_regret(hub: Hub) -> None:
    oracle = (OracleSampler(hub), optuna.pruners.NopPruner())
    r = run_replay(hub, "oracle", seed=0, budget=2 * hub.n_epochs, sampler_pruner=oracle)
    assert r.epochs_spent == len(r.best_observed) == 2 * hub.n_epochs
    assert r.incumbent_regret[hub.n_epochs - 1] == 0.0
    # Best observed at any epoch of the best configuration is at least its final score.
    assert r.regret[hub.n_epochs - 1] <= 0.0
    assert r.n_trials == 2 and r.n_configs == 1


@pytest.mark.parametrize("name", ["random", "tpe-hyperband", "tpe-median"])
def test_methods_spend_exactly_the_budget(hub: Hub, name: str) -> None:
    budget = 25  # not a multiple of n_epochs: the last trial is cut at the budget
    r = run_replay(hub, name, seed=1, budget=budget)
    assert r.error is None
    assert r.epochs_spent == len(r.best_observed) == budget
    assert np.all(np.diff(r.best_observed) >= 0)
    assert r.tau == {}
    # The curve is a real best-so-far of reported hub scores.
    assert r.best_observed[-1] in set(hub.scores.ravel().tolist())


# fms-<rule>-no-checkpoints replays as fms-<rule> does, without checkpoints as
# fms-no-checkpoints does: both paths are covered by those.
@pytest.mark.parametrize(
    "name", sorted(m for m in METHODS if m == "fms-no-checkpoints" or "no-checkpoints" not in m)
)
def test_every_replayed_trial_runs_exactly_its_parameters(
    hub: Hub, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The search space is the hub's grid: whatever a method proposes (and whatever trial it
    # continues) is a trained configuration, replayed as is: no nearest-configuration snapping.
    from optuna_fms.bench import _methods
    from optuna_fms.metanet._pretrained import SHIPPED_FILE

    # No metanetwork is pretrained without the test hub: the shipped one stands in for it.
    shutil.copy(SHIPPED_FILE, tmp_path / f"without-{hub.name}.safetensors")
    monkeypatch.setattr(_methods, "METANETS_DIR", tmp_path)
    storage = optuna.storages.InMemoryStorage()
    r = run_replay(hub, name, seed=0, budget=60, storage=storage)
    assert r.error is None
    names = [n for n in optuna.get_all_study_names(storage) if not n.endswith(":fms-claims")]
    assert len(names) == 1
    study = optuna.load_study(study_name=names[0], storage=storage)
    trials = [t for t in study.get_trials() if CONFIG_ATTR in t.user_attrs]
    # FMS's first 10 trials are random: make sure its model proposed some too.
    assert len(trials) > (FMS_STARTUP_TRIALS if METHODS[name].surrogate else 5)
    for t in trials:
        c = t.user_attrs[CONFIG_ATTR]
        assert t.params == hub.configs[c]
        assert hub.find_config(t.params) == c
        assert t.user_attrs[HPARAMS_ATTR] == hub.hyperparameters(c)
        assert t.distributions == hub.search_space
        steps = sorted(t.intermediate_values)
        np.testing.assert_array_equal(
            [t.intermediate_values[s] for s in steps], hub.scores[c, steps]
        )


def test_recommendation_and_tau_split(hub: Hub) -> None:
    r = run_replay(hub, "dyhpo", seed=0, budget=50, tau_budgets=(40,))
    assert r.error is None
    final = hub.final_scores()
    # The model-free recommendation is the configuration with the best furthest-trained score:
    # never worse than what the incumbent rule picks at the full budget of a finished curve.
    assert len(r.recommended_final) == 50
    assert set(r.recommended_final) <= set(final.tolist())
    for split in (r.tau, r.tau_observed, r.tau_unseen):
        assert set(split) == {40}
        assert -1.0 <= split[40] <= 1.0 or np.isnan(split[40])
    assert r.forecast_recommended_final[40] in set(final.tolist())
    assert 2 <= r.n_observed[40] <= r.n_configs
    again = RunResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again.tau_unseen == r.tau_unseen
    assert again.forecast_recommended_final == r.forecast_recommended_final
    assert again.n_observed == r.n_observed
    assert "(n = " in tau_table([r], ["dyhpo"], budget=50, tau_budgets=(40,))


def test_tracker_recommends_best_furthest_trained_observation(hub: Hub) -> None:
    tracker = _Tracker(hub, budget=100)
    tracker.record(0.9, 1, epoch=0)  # a lucky first epoch
    tracker.record(0.5, 2, epoch=0)
    assert tracker.recommended == 1
    tracker.record(0.4, 1, epoch=1)  # configuration 1 falls back
    assert tracker.recommended == 2
    assert tracker.incumbent == 1  # the incumbent keeps the best score ever seen
    tracker.record(0.3, 2, epoch=0)  # a rerun from scratch: at the same epoch the newest counts
    assert tracker.latest[2] == (0, 0.3)
    assert tracker.recommended == 1


def test_reference_predictors(hub: Hub) -> None:
    taus = reference_predictors(hub)
    final = hub.final_scores()
    assert taus["score after 1 epoch"] == pytest.approx(kendall_tau(hub.scores[:, 0], final))
    assert taus["lr"] == pytest.approx(kendall_tau([c["lr"] for c in hub.configs], final))
    assert set(hub.ordered) <= set(taus)
    name, tau = best_reference(taus)
    assert abs(tau) == max(abs(t) for t in taus.values())


def test_seeds_are_independent_and_reproducible(hub: Hub) -> None:
    a = run_replay(hub, "tpe-median", seed=3, budget=20)
    b = run_replay(hub, "tpe-median", seed=3, budget=20)
    assert a.best_observed == b.best_observed


def test_dyhpo_with_tau_and_continuations(hub: Hub) -> None:
    r = run_replay(hub, "dyhpo", seed=0, budget=40, tau_budgets=(30,))
    assert r.error is None
    assert r.epochs_spent == 40
    assert set(r.tau) == {30}
    assert -1.0 <= r.tau[30] <= 1.0
    assert r.sampler_seconds > 0 and r.pruner_seconds > 0


def test_predictions_cover_every_configuration(hub: Hub, tmp_path: Path) -> None:
    store = _store(tmp_path)
    sampler = optuna_fms.FMSSampler(
        seed=0, n_startup_trials=2, artifact_store=store, n_scratch_epochs=30
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(make_objective(hub, store, _Tracker(hub, 10**6)), n_trials=3)
    predicted = predict_final_scores(study, hub)
    assert predicted is not None and predicted.shape == (hub.n_configs,)
    assert np.all(np.isfinite(predicted))


def test_kendall_tau_matches_scipy() -> None:
    true = np.array([0.1, 0.5, 0.3, 0.9, 0.7])
    assert kendall_tau(true * 2 + 1, true) == pytest.approx(1.0)
    assert kendall_tau(-true, true) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    pred = true + rng.normal(0, 0.2, size=true.shape)
    assert kendall_tau(pred, true) == pytest.approx(stats.kendalltau(pred, true).statistic)
    # Values per configuration, not ranked index lists: a permutation of both sides together
    # leaves tau unchanged.
    perm = rng.permutation(len(true))
    assert kendall_tau(pred[perm], true[perm]) == pytest.approx(kendall_tau(pred, true))
    assert np.isnan(kendall_tau([1.0, 1.0], [0.0, 1.0]))


def test_mean_se() -> None:
    m, se, n = mean_se([1.0, 2.0, 3.0, float("nan")])
    assert (m, n) == (2.0, 3)
    assert se == pytest.approx(1.0 / np.sqrt(3))


def test_table_marks_unavailable_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    gmn = dataclasses.replace(METHODS["fms-gmn"], requires=("no_such_parameter",))
    monkeypatch.setitem(METHODS, "fms-gmn", gmn)
    r = RunResult(
        hub="tiny", method="random", seed=0, budget=3, best_final_score=1.0,
        best_observed=[0.5, 0.8, 0.9], incumbent_final=[0.5, 0.8, 0.9],
    )  # fmt: skip
    text = table([r], ["random", "fms-gmn"], budget=3, regret_budgets=(2, 3))
    assert "| random | 1 | 3 | 0.200 | 0.100 |" in text
    assert "| fms-gmn | 0 | not yet" in text


def test_cli_end_to_end(hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save = tmp_path / "runs.json"
    argv = ["--hub", str(hub.path), "--methods", "random,tpe-hyperband", "--seeds", "2"]
    argv += ["--budget", "12", "--out", str(tmp_path), "--save", str(save)]
    assert bench_main(argv) == 0
    out = capsys.readouterr().out
    assert "| random | 2 | 12 |" in out and "| tpe-hyperband | 2 | 12 |" in out
    assert (tmp_path / "images" / "bench_tiny.png").stat().st_size > 0
    assert len(json.loads(save.read_text())) == 4
    # Re-rendering saved runs runs nothing.
    assert bench_main(["--load", str(save), "--seeds", "0", "--methods", "random"]) == 0
    assert "| random | 2 |" in capsys.readouterr().out


def test_held_out_metanetwork_is_never_one_trained_on_the_hub(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna_fms.bench import _methods
    from optuna_fms.metanet._pretrained import SHIPPED_FILE

    monkeypatch.setattr(_methods, "METANETS_DIR", tmp_path)
    # The shipped metanetwork was pretrained on other hubs: it stands in for this one.
    assert hub.name not in _methods._shipped_metanetwork_hubs()
    assert _methods.held_out_metanetwork(hub) == SHIPPED_FILE
    # A hub it was pretrained on needs its own file, and says how to make it.
    monkeypatch.setattr(_methods, "_shipped_metanetwork_hubs", lambda: [hub.name])
    with pytest.raises(FileNotFoundError, match="pretrain-metanet"):
        _methods.held_out_metanetwork(hub)
    (tmp_path / f"without-{hub.name}.safetensors").write_bytes(SHIPPED_FILE.read_bytes())
    assert _methods.held_out_metanetwork(hub) == tmp_path / f"without-{hub.name}.safetensors"
