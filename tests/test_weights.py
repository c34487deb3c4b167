"""The surrogate reading checkpoints: FMS-GMN and weight statistics inside real studies."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import optuna
import pytest
from scipy.stats import kendalltau
import torch
import workers

import optuna_fms
from optuna_fms import _attrs
from optuna_fms._surrogate._data import Curve
from optuna_fms._surrogate._weights import CheckpointEncoder


def _study(tmp_path: Path, weights: str, **kwargs) -> optuna.Study:
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    return optuna.create_study(
        sampler=optuna_fms.FMSSampler(
            seed=0,
            n_startup_trials=3,
            weights=weights,
            artifact_store=store,
            n_candidates=64,
            n_scratch_epochs=60,
            n_warm_epochs=10,
            **kwargs,
        ),
        pruner=optuna_fms.FMSPruner(
            max_steps=workers.STEPS, n_startup_trials=3, pause_startup=False
        ),
    )


@pytest.mark.parametrize(
    ("weights", "extra"),
    [
        ("gmn", {"metanetwork": None}),
        ("stats", {}),
        ("gmn", {}),
        ("gmn", {"fine_tune_metanetwork": True}),
    ],
    ids=["gmn-untrained", "stats", "gmn-pretrained-frozen", "gmn-pretrained-fine-tuned"],
)
def test_surrogate_with_weights_trains_and_predicts_in_a_study(
    tmp_path: Path, weights: str, extra: dict
) -> None:
    study = _study(tmp_path, weights, surrogate="deep-kernel", **extra)
    study.optimize(workers.train_objective, n_trials=8)
    engine = study.sampler.engine
    kinds = {kind for kind, _ in engine.bank.items}
    assert kinds == {"graph" if weights == "gmn" else "stats"}
    surrogate = engine.surrogate(study)
    assert surrogate is not None and surrogate._model is not None
    encoder = surrogate._model.extractor.weight_encoder
    assert isinstance(encoder, CheckpointEncoder)
    net = encoder.gmn if weights == "gmn" else encoder.stats_net
    pretrained = weights == "gmn" and extra.get("metanetwork", "pretrained") is not None
    if pretrained:
        init = engine.bank.metanetwork.gmn
    else:
        fresh = CheckpointEncoder(engine.bank)
        init = fresh.gmn if weights == "gmn" else fresh.stats_net
    moved = [not torch.equal(a, b) for a, b in zip(net.parameters(), init.parameters())]
    if pretrained and not extra.get("fine_tune_metanetwork"):
        # The pretrained metanetwork stays as shipped unless fine-tuning is asked for.
        assert not any(moved)
    else:
        # Trained jointly with the GP: the featuriser moved away from where it started.
        assert any(moved)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    for t in pruned:
        forecast = t.user_attrs[_attrs.FORECAST]
        assert np.isfinite(forecast["mean"]) and forecast["std"] > 0


def test_rows_never_read_weights_from_the_step_they_predict() -> None:
    trial = optuna.trial.create_trial(
        params={},
        distributions={},
        value=0.0,
        intermediate_values={0: 0.1, 1: 0.2, 2: 0.3},
        user_attrs={_attrs.CHECKPOINTS: {"0": "a", "2": "c"}},
    )
    curve = Curve(
        key=0,
        params={},
        steps=np.array([0, 1, 2]),
        values=np.array([0.1, 0.2, 0.3]),
        checkpoints=_attrs.read_checkpoints(trial.user_attrs),
    )
    assert curve.checkpoint_before(1) is None  # the first epoch: starting weights only
    assert curve.checkpoint_before(2) == (0, "a")
    assert curve.checkpoint_before(3) == (0, "a")  # step 1 was not kept; step 2 is the target
    assert curve.checkpoint_before(4) == (2, "c")


def _pretrained(index: int) -> torch.nn.Module:
    """A family of 'pretrained models' whose quality is written in their weights' scale."""
    torch.manual_seed(1000 + index)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(_SCALES[index])
    return net


_SCALES = np.random.RandomState(0).permutation(np.linspace(0.1, 2.0, 16))


def _hub_objective(trial: optuna.Trial) -> float:
    member = trial.suggest_categorical("member", list(range(16)))
    quality = float(_SCALES[member]) / 2.0
    value = 0.0
    for step in range(6):
        value = quality * (1 - np.exp(-0.6 * (step + 1)))
        trial.report(value, step)
    return value


@pytest.mark.parametrize(
    ("weights", "start_params"),
    [("stats", ()), ("gmn", ()), ("gmn", ("member",))],
    ids=["stats", "gmn", "gmn-in-place-of-member"],
)
def test_start_weights_rank_pretrained_models_never_tried(
    weights: str, start_params: tuple[str, ...]
) -> None:
    sampler = optuna_fms.FMSSampler(
        seed=0,
        weights=weights,
        start_weights=lambda params: _pretrained(params["member"]),
        start_params=start_params,
        n_scratch_epochs=200,
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    tried = [0, 3, 5, 8, 11, 14]
    for m in tried:
        study.enqueue_trial({"member": m})
    study.optimize(_hub_objective, n_trials=len(tried))
    unseen = [m for m in range(16) if m not in tried]
    forecasts = optuna_fms.forecast(study, [{"member": m} for m in unseen])
    assert all(f.trial is None and f.step == 5 for f in forecasts)
    tau = kendalltau([f.mean for f in forecasts], _SCALES[unseen]).statistic
    assert tau > 0.5, tau
    lengthscales = optuna_fms.diagnose(study).lengthscales
    assert ("member" in lengthscales) == (not start_params)
    assert "weights_pc0" in lengthscales


def test_start_params_need_the_weights_they_stand_for() -> None:
    with pytest.raises(ValueError, match="start_params"):
        optuna_fms.FMSSampler(start_params=["member"])
    with pytest.raises(ValueError, match="start_params"):
        optuna_fms.FMSSampler(
            weights="stats",
            start_weights=lambda p: None,
            start_params=["member"],
            surrogate="deep-kernel",
        )


def test_corrupt_checkpoint_warns_once_and_the_study_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = _study(tmp_path, "stats")
    study.optimize(workers.train_objective, n_trials=4)
    for t in study.trials:
        for artifact_id in t.user_attrs[_attrs.CHECKPOINTS].values():
            (tmp_path / artifact_id).write_bytes(b"\x80\x04not a checkpoint")
    # A new sampler on the same study: nothing of the readable checkpoints is cached.
    study.sampler = _study(tmp_path, "stats").sampler
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        study.optimize(workers.train_objective, n_trials=3)
    assert all(t.state != optuna.trial.TrialState.FAIL for t in study.trials)
    assert len([r for r in caplog.records if "could not read checkpoint" in r.message]) == 1


def test_unsupported_layers_fall_back_to_statistics_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from optuna_fms._surrogate._weights import WeightBank

    bank = WeightBank("gmn")
    lstm = torch.nn.LSTM(3, 4)
    with caplog.at_level(logging.WARNING, logger="optuna_fms"):
        bank.index("a", lambda: (lstm.state_dict(), None))
        bank.index("b", lambda: (torch.nn.LSTM(3, 5).state_dict(), None))
    assert [kind for kind, _ in bank.items] == ["stats", "stats"]
    assert len([r for r in caplog.records if "cannot express" in r.message]) == 1


def test_encoder_embeds_only_the_checkpoints_rows_refer_to() -> None:
    from optuna_fms._surrogate._weights import WeightBank

    bank = WeightBank("stats")
    for i in range(6):
        bank.index(str(i), lambda i=i: ({"w": torch.full((3, 3), float(i))}, None))
    encoder = CheckpointEncoder(bank)
    seen: list[list[int]] = []
    embed = encoder._embed
    encoder._embed = lambda which: (seen.append(which.tolist()), embed(which))[1]  # type: ignore[method-assign]
    encoder.train()
    out = encoder(torch.tensor([4.0, -1.0, 1.0, 4.0]))
    assert seen == [[1, 4]]
    assert torch.equal(out[0], out[3]) and torch.equal(out[1], encoder.missing)
    encoder.eval()
    encoder(torch.tensor([1.0, 2.0]))  # only item 2 is new to the cache
    assert seen == [[1, 4], [2]]


def test_the_pretrained_metanetwork_gives_the_gp_its_two_predictions() -> None:
    from optuna_fms._surrogate._weights import WeightBank
    from optuna_fms.metanet import TARGETS
    from optuna_fms.metanet import PretrainedMetanetwork

    net = PretrainedMetanetwork.load()
    bank = WeightBank("gmn", net)
    untrained = WeightBank("gmn")
    for b in (bank, untrained):
        for i in range(3):
            torch.manual_seed(i)
            mlp = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
            )
            b.index(str(i), lambda mlp=mlp: (mlp.state_dict(), None))
    emb = bank.embedding(np.array([0, 2, -1]))
    assert emb.shape == (3, len(TARGETS))
    graph = bank.items[2][1]
    np.testing.assert_allclose(emb[1], net.predict([graph])[0].numpy(), rtol=1e-6)
    assert np.all(emb[2] == 0)  # no weights
    assert untrained.embedding(np.array([0])).shape == (1, 16)  # the seeded metanetwork's
