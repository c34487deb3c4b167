from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
import pickle

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.samplers import RandomSampler
from optuna.trial import TrialState
import pytest
from safetensors import safe_open
import torch

from optuna_fms import _attrs
from optuna_fms._checkpoint import OPTIMIZER_PREFIX
from optuna_fms._checkpoint import Checkpoint
from optuna_fms._checkpoint import CheckpointError
from optuna_fms._checkpoint import _resolve_artifact_store
from optuna_fms._checkpoint import load_checkpoint
from optuna_fms._checkpoint import read_checkpoint
from optuna_fms._checkpoint import save_checkpoint


@pytest.fixture
def store(tmp_path: Path) -> FileSystemArtifactStore:
    path = tmp_path / "artifacts"
    path.mkdir()
    return FileSystemArtifactStore(path)


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite3'}")


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def _artifact_path(store: FileSystemArtifactStore, artifact_id: str) -> Path:
    return Path(store._base_path) / artifact_id


def test_round_trip_model_and_adam(study: optuna.Study, store: FileSystemArtifactStore) -> None:
    trial = study.ask()
    model = _mlp(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    _train(model, opt)
    artifact_id = save_checkpoint(trial, model, step=0, optimizer=opt, artifact_store=store)

    assert trial.user_attrs[_attrs.CHECKPOINTS] == {"0": artifact_id}
    assert _artifact_path(store, artifact_id).is_file()

    # A fresh model and optimizer (other seed) restored from the store are identical.
    fresh = _mlp(1)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.5)
    ckpt = read_checkpoint(trial, artifact_store=store)
    assert isinstance(ckpt, Checkpoint) and ckpt.step == 0
    meta = ckpt.metadata
    fresh.load_state_dict(ckpt.tensors)
    fresh_opt.load_state_dict(ckpt.optimizer_state)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    want, got = opt.state_dict(), fresh_opt.state_dict()
    assert got["param_groups"] == want["param_groups"]
    assert got["param_groups"][0]["betas"] == (0.8, 0.99)
    assert set(got["state"]) == set(want["state"]) == {0, 1, 2, 3}
    for idx, entry in want["state"].items():
        for key, value in entry.items():
            assert torch.equal(got["state"][idx][key], value), (idx, key)
    assert meta["trial_number"] == trial.number
    assert meta["step"] == 0
    assert meta["format_version"] == 1
    assert meta["optimizer_class"] == "torch.optim.adam.Adam"

    # Training continues identically from the restored state.
    torch.manual_seed(5)
    _train(model, opt, 2)
    torch.manual_seed(5)
    _train(fresh, fresh_opt, 2)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)

    # The plain loader returns model tensors only; the file is plain safetensors.
    assert set(load_checkpoint(trial, artifact_store=store)) == set(model.state_dict())
    with safe_open(str(_artifact_path(store, artifact_id)), "pt") as f:
        assert f.metadata()["format"] == "optuna-fms-checkpoint"
        assert any(k.startswith(OPTIMIZER_PREFIX) for k in f.keys())


def test_latest_step_and_frozen_trial(study: optuna.Study, store: FileSystemArtifactStore) -> None:
    trial = study.ask()
    for step in range(3):
        sd = {"w": torch.full((2, 2), float(step))}
        save_checkpoint(trial, sd, step=step, artifact_store=store, keep_last=None)
    assert load_checkpoint(trial, artifact_store=store)["w"][0, 0] == 2.0
    assert load_checkpoint(trial, 0, artifact_store=store)["w"][0, 0] == 0.0
    study.tell(trial, 1.0)

    frozen = study.trials[0]
    assert load_checkpoint(frozen, artifact_store=store)["w"][0, 0] == 2.0
    with pytest.raises(ValueError, match="FrozenTrial has no study"):
        load_checkpoint(frozen)


def test_shared_and_non_contiguous_tensors(
    study: optuna.Study, store: FileSystemArtifactStore
) -> None:
    trial = study.ask()
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd = {
        "emb": base,
        "tied": base,  # The same tensor under two names (tied weights).
        "view_same": base.view(3, 4),  # Another object, same storage and layout.
        "row": base[1],  # Overlaps base's storage differently.
        "transposed": base.t(),  # Non-contiguous.
        "strided": torch.arange(10.0)[::2],  # Non-contiguous, own storage.
        "half": torch.ones(3, dtype=torch.float16),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 5),
    }
    artifact_id = save_checkpoint(trial, sd, step=4, artifact_store=store)
    loaded = load_checkpoint(trial, artifact_store=store)
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    # Tied weights are stored once and come back as one tensor.
    with safe_open(str(_artifact_path(store, artifact_id)), "pt") as f:
        assert "tied" not in f.keys() and "view_same" not in f.keys()
    assert loaded["tied"] is loaded["emb"]

    # A module with tied parameters loads back into a fresh one.
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(3, 3, bias=False)
            self.b = torch.nn.Linear(3, 3, bias=False)
            self.b.weight = self.a.weight

    m = Tied()
    save_checkpoint(trial, m, step=5, artifact_store=store)
    fresh = Tied()
    fresh.load_state_dict(load_checkpoint(trial, artifact_store=store))
    assert torch.equal(fresh.b.weight, m.a.weight)


def test_retention_deletes_superseded_files(
    study: optuna.Study, store: FileSystemArtifactStore
) -> None:
    trial = study.ask()
    ids = {}
    for step in range(8):
        ids[step] = save_checkpoint(
            trial, {"w": torch.ones(2) * step}, step=step, artifact_store=store, keep_every=3
        )
    kept = {0, 3, 6, 7}  # keep_last=2 -> {6, 7}; keep_every=3 -> {0, 3, 6}.
    assert trial.user_attrs[_attrs.CHECKPOINTS] == {str(s): ids[s] for s in sorted(kept)}
    assert sorted(os.listdir(store._base_path)) == sorted(ids[s] for s in kept)
    # Removed checkpoints are hidden from artifact listings the way optuna-dashboard does it.
    system_attrs = study._storage.get_trial_system_attrs(trial._trial_id)
    for step, aid in ids.items():
        meta = json.loads(system_attrs["artifacts:" + aid])
        assert (meta is None) == (step not in kept), step
    listed = optuna_dashboard_listing(study, trial._trial_id)
    assert sorted(listed) == sorted(ids[s] for s in kept)

    # Saving the same step again replaces the earlier file.
    new_id = save_checkpoint(trial, {"w": torch.zeros(2)}, step=7, artifact_store=store)
    assert not _artifact_path(store, ids[7]).exists()
    assert trial.user_attrs[_attrs.CHECKPOINTS]["7"] == new_id

    # The newest checkpoint is never deleted, even when saving an older step with keep_last=1.
    old_id = save_checkpoint(
        trial, {"w": torch.ones(2)}, step=2, artifact_store=store, keep_last=1
    )
    recorded = trial.user_attrs[_attrs.CHECKPOINTS]
    assert recorded == {"2": old_id, "7": new_id}
    assert load_checkpoint(trial, artifact_store=store)["w"].sum() == 0.0


def optuna_dashboard_listing(study: optuna.Study, trial_id: int) -> list[str]:
    """Artifact ids a trial lists, skipping the records optuna-dashboard marks removed."""
    attrs = study._storage.get_trial_system_attrs(trial_id)
    metas = [json.loads(v) for k, v in attrs.items() if k.startswith("artifacts:")]
    return [m["artifact_id"] for m in metas if m is not None]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_without_running(
    study: optuna.Study, store: FileSystemArtifactStore, tmp_path: Path
) -> None:
    trial = study.ask()
    artifact_id = save_checkpoint(trial, {"w": torch.ones(2)}, step=1, artifact_store=store)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(marker))
    pickle.loads(payload)  # Sanity: unpickling this payload does create the marker...
    assert marker.exists()
    marker.unlink()

    _artifact_path(store, artifact_id).write_bytes(payload)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(trial, artifact_store=store)
    assert f"trial {trial.number}" in str(e.value) and artifact_id in str(e.value)
    assert not marker.exists()  # ... but loading the checkpoint never unpickles.

    # A torch.save zip file (pickle inside) is refused as well.
    torch.save({"evil": _Evil(marker)}, str(_artifact_path(store, artifact_id)))
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(trial, artifact_store=store)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "corrupt_header", "missing", "foreign"])
def test_damaged_checkpoint_raises_checkpoint_error(
    study: optuna.Study, store: FileSystemArtifactStore, tmp_path: Path, damage: str
) -> None:
    trial = study.ask()
    artifact_id = save_checkpoint(trial, {"w": torch.ones(64)}, step=3, artifact_store=store)
    path = _artifact_path(store, artifact_id)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 10])
    elif damage == "corrupt_header":
        path.write_bytes(data[:8] + b"{garbage" + data[16:])
    elif damage == "missing":
        path.unlink()
    else:  # A valid safetensors file that is not an optuna-fms checkpoint.
        from safetensors.torch import save_file

        path.unlink()
        save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(trial, artifact_store=store)
    message = str(e.value)
    assert f"trial {trial.number}" in message and "step 3" in message and artifact_id in message


def test_no_checkpoint_at_step(study: optuna.Study, store: FileSystemArtifactStore) -> None:
    trial = study.ask()
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        load_checkpoint(trial, artifact_store=store)
    save_checkpoint(trial, {"w": torch.ones(2)}, step=0, artifact_store=store)
    with pytest.raises(CheckpointError, match=r"step 5.*checkpointed steps: \[0\]"):
        load_checkpoint(trial, 5, artifact_store=store)


def test_artifact_store_lookup(tmp_path: Path, store: FileSystemArtifactStore) -> None:
    class SamplerWithStore(RandomSampler):
        def __init__(self, artifact_store: FileSystemArtifactStore) -> None:
            super().__init__(seed=0)
            self.artifact_store = artifact_store

    # 1. The sampler's store is used when none is passed.
    study = optuna.create_study(sampler=SamplerWithStore(store))
    trial = study.ask()
    aid = save_checkpoint(trial, {"w": torch.ones(2)}, step=0)
    assert _artifact_path(store, aid).exists()
    assert torch.equal(load_checkpoint(trial)["w"], torch.ones(2))

    # 2. An explicit store wins over the sampler's.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = FileSystemArtifactStore(other_dir)
    aid2 = save_checkpoint(trial, {"w": torch.ones(2)}, step=1, artifact_store=other)
    assert (other_dir / aid2).exists() and not _artifact_path(store, aid2).exists()
    assert _resolve_artifact_store(study, other) is other
    assert _resolve_artifact_store(study, None) is store

    # 3. Neither: a clear error.
    plain = optuna.create_study()
    with pytest.raises(ValueError, match=r"pass artifact_store=.*FMSSampler\(artifact_store"):
        save_checkpoint(plain.ask(), {"w": torch.ones(2)}, step=0)


def test_rejects_non_tensor_state(study: optuna.Study, store: FileSystemArtifactStore) -> None:
    trial = study.ask()
    with pytest.raises(TypeError, match="not a tensor"):
        save_checkpoint(trial, {"w": torch.ones(1), "x": object()}, step=0, artifact_store=store)
    with pytest.raises(TypeError, match="never use pickle"):
        save_checkpoint(
            trial,
            {"w": torch.ones(1)},
            0,
            optimizer={"state": {0: object()}},
            artifact_store=store,
        )
    with pytest.raises(TypeError, match="step must be an int"):
        save_checkpoint(trial, {"w": torch.ones(1)}, step=1.5, artifact_store=store)  # type: ignore[arg-type]
    assert _attrs.CHECKPOINTS not in trial.user_attrs


@pytest.mark.skipif(
    importlib.util.find_spec("optuna_fms.metanet") is None, reason="metanet not written yet"
)
def test_structure_metadata(study: optuna.Study, store: FileSystemArtifactStore) -> None:
    from optuna_fms.metanet._structure import describe_module

    model = _mlp(0)
    trial = study.ask()
    save_checkpoint(trial, model, step=0, artifact_store=store)
    ckpt = read_checkpoint(trial, artifact_store=store)
    assert ckpt.structure == json.loads(json.dumps(describe_module(model)))
    assert ckpt.metadata["structure"] == ckpt.structure
    # A bare state dict has no structure.
    save_checkpoint(trial, model.state_dict(), step=1, artifact_store=store)
    ckpt = read_checkpoint(trial, artifact_store=store)
    assert ckpt.structure is None and ckpt.metadata["structure"] is None


class _MemoryStore:
    """A minimal non-filesystem artifact store (like S3/GCS: hands out streams, not files)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def open_reader(self, artifact_id: str):  # type: ignore[no-untyped-def]
        import io

        from optuna.artifacts.exceptions import ArtifactNotFound

        if artifact_id not in self.blobs:
            raise ArtifactNotFound(artifact_id)
        return io.BytesIO(self.blobs[artifact_id])

    def write(self, artifact_id: str, content_body) -> None:  # type: ignore[no-untyped-def]
        self.blobs[artifact_id] = content_body.read()

    def remove(self, artifact_id: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        if self.blobs.pop(artifact_id, None) is None:
            raise ArtifactNotFound(artifact_id)


def test_stream_store_and_rename_into_filesystem_store(
    study: optuna.Study, store: FileSystemArtifactStore
) -> None:
    trial = study.ask()
    mem = _MemoryStore()
    model = _mlp(0)
    for step in range(3):
        save_checkpoint(trial, model, step=step, artifact_store=mem)
    assert set(mem.blobs) == set(trial.user_attrs[_attrs.CHECKPOINTS].values())
    assert len(mem.blobs) == 2
    fresh = _mlp(1)
    fresh.load_state_dict(load_checkpoint(trial, artifact_store=mem))
    assert torch.equal(fresh[0].weight, model[0].weight)
    # Corrupt bytes from a stream store are refused the same way.
    latest = trial.user_attrs[_attrs.CHECKPOINTS]["2"]
    mem.blobs[latest] = mem.blobs[latest][:100]
    with pytest.raises(CheckpointError, match="step 2"):
        load_checkpoint(trial, artifact_store=mem)

    # With a local FileSystemArtifactStore the file is renamed into place (not copied) and no
    # temporary file is left in the store's directory.
    aid = save_checkpoint(trial, model, step=0, artifact_store=store)
    assert os.listdir(store._base_path) == [aid]


def test_save_creates_a_missing_store_folder(tmp_path: Path) -> None:
    store = FileSystemArtifactStore(str(tmp_path / "not-yet"))
    trial = optuna.create_study().ask()
    save_checkpoint(trial, {"w": torch.ones(2)}, step=0, artifact_store=store)
    loaded = load_checkpoint(trial, 0, artifact_store=store)
    assert torch.equal(loaded["w"], torch.ones(2))


def test_read_checkpoint_and_the_tuple_alias(
    study: optuna.Study, store: FileSystemArtifactStore
) -> None:
    import optuna_fms

    assert optuna_fms.read_checkpoint is read_checkpoint and optuna_fms.Checkpoint is Checkpoint
    assert {"Checkpoint", "read_checkpoint"} <= set(optuna_fms.__all__)
    trial = study.ask()
    model = _mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt)
    save_checkpoint(trial, model, step=3, optimizer=opt, artifact_store=store)
    save_checkpoint(trial, {"w": torch.ones(2)}, step=5, artifact_store=store)

    ckpt = read_checkpoint(trial, 3, artifact_store=store)
    assert ckpt.step == 3 and ckpt.metadata["step"] == 3
    assert ckpt.metadata["trial_number"] == trial.number
    assert ckpt.metadata["optimizer_class"] == "torch.optim.sgd.SGD"
    assert ckpt.optimizer_state is not None
    assert ckpt.optimizer_state["param_groups"][0]["momentum"] == 0.9
    with pytest.raises(dataclasses.FrozenInstanceError):
        ckpt.step = 4  # type: ignore[misc]
    assert "step=3" in repr(ckpt) and "tensor(" not in repr(ckpt)
    latest = read_checkpoint(trial, artifact_store=store)
    assert latest.step == 5 and latest.optimizer_state is None and latest.structure is None


def _rewrite_header(path: Path, **changes: str) -> None:
    """Rewrite a checkpoint file with some header entries replaced (same tensors)."""
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    metadata.update(changes)
    path.unlink()
    save_file(tensors, str(path), metadata=metadata)


_DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "changes",
    [
        {"optimizer": _DEEP},
        {"structure": _DEEP},
        {"aliases": _DEEP},
        {"optimizer": '{"state": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001},
        {"aliases": "[1]"},  # Valid JSON of the wrong type.
        {"aliases": '{"x": "missing"}'},
        {"optimizer": '{"__dict__": 5}'},
        {"optimizer": '{"state": {"__tensor__": "nope"}}'},
        {"step": "three"},
        {"format_version": "x"},
    ],
    ids=lambda c: next(iter(c)) + "=" + next(iter(c.values()))[:12],
)
def test_malformed_header_raises_checkpoint_error(
    study: optuna.Study, store: FileSystemArtifactStore, changes: dict[str, str]
) -> None:
    trial = study.ask()
    model = _mlp(0)
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt, 1)
    artifact_id = save_checkpoint(trial, model, step=2, optimizer=opt, artifact_store=store)
    _rewrite_header(_artifact_path(store, artifact_id), **changes)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(trial, artifact_store=store)
    message = str(e.value)
    assert f"trial {trial.number}" in message and "step 2" in message and artifact_id in message
    with pytest.raises(CheckpointError):
        load_checkpoint(trial, artifact_store=store)


def test_optimizer_keys_that_collide_when_joined(
    study: optuna.Study, store: FileSystemArtifactStore
) -> None:
    # "a.b" and "a" -> "b" both join to "x.a.b"; int 0 and str "0" both to "state.0.m".
    state = {
        "x": {"a.b": torch.full((2,), 1.0), "a": {"b": torch.full((2,), 2.0)}},
        "state": {0: {"m": torch.full((2,), 3.0)}, "0": {"m": torch.full((2,), 4.0)}},
        "lst": [torch.full((1,), 5.0), torch.full((1,), 6.0)],  # "lst.1" ...
        "lst.1": torch.full((1,), 7.0),  # ... and "lst.1" again.
        "x.a.b~1": torch.full((1,), 8.0),  # The name the second "x.a.b" gets.
    }
    trial = study.ask()
    artifact_id = save_checkpoint(
        trial, {"w": torch.ones(1)}, 0, optimizer=state, artifact_store=store
    )
    got = read_checkpoint(trial, artifact_store=store).optimizer_state
    assert got is not None
    assert got.keys() == state.keys()
    assert torch.equal(got["x"]["a.b"], state["x"]["a.b"])
    assert torch.equal(got["x"]["a"]["b"], state["x"]["a"]["b"])
    assert set(got["state"]) == {0, "0"}
    assert torch.equal(got["state"][0]["m"], state["state"][0]["m"])
    assert torch.equal(got["state"]["0"]["m"], state["state"]["0"]["m"])
    assert torch.equal(got["lst"][0], state["lst"][0])
    assert torch.equal(got["lst"][1], state["lst"][1])
    assert torch.equal(got["lst.1"], state["lst.1"])
    assert torch.equal(got["x.a.b~1"], state["x.a.b~1"])
    with safe_open(str(_artifact_path(store, artifact_id)), "pt") as f:
        assert sum(k.startswith(OPTIMIZER_PREFIX) for k in f.keys()) == 8


@pytest.mark.parametrize("step", [-1, -5, 2**63 - 1, 2**63, 2**70])
def test_step_out_of_range_is_refused(
    study: optuna.Study, store: FileSystemArtifactStore, step: int
) -> None:
    trial = study.ask()
    with pytest.raises(ValueError, match=r"step must be in \[0, 2\*\*63 - 1\)"):
        save_checkpoint(trial, {"w": torch.ones(1)}, step=step, artifact_store=store)
    assert _attrs.CHECKPOINTS not in trial.user_attrs
    assert os.listdir(store._base_path) == []


def test_largest_step_round_trips(study: optuna.Study, store: FileSystemArtifactStore) -> None:
    trial = study.ask()
    step = 2**63 - 2
    save_checkpoint(trial, {"w": torch.ones(1)}, step=step, artifact_store=store)
    assert read_checkpoint(trial, artifact_store=store).metadata["step"] == step


@pytest.mark.parametrize("kind", ["sparse_coo", "sparse_csr", "meta", "optimizer_sparse"])
def test_unstorable_tensors_are_refused_by_name(
    study: optuna.Study, store: FileSystemArtifactStore, kind: str
) -> None:
    trial = study.ask()
    sd: dict[str, torch.Tensor] = {"ok": torch.ones(2)}
    optimizer = None
    if kind == "sparse_coo":
        sd["emb.weight"] = torch.eye(3).to_sparse()
    elif kind == "sparse_csr":
        sd["emb.weight"] = torch.eye(3).to_sparse_csr()
    elif kind == "meta":
        sd["emb.weight"] = torch.empty(3, 3, device="meta")
    else:
        optimizer = {"state": {0: {"emb.weight": torch.eye(3).to_sparse()}}}
    with pytest.raises(ValueError, match=r"emb\.weight"):
        save_checkpoint(trial, sd, 0, optimizer=optimizer, artifact_store=store)
    assert _attrs.CHECKPOINTS not in trial.user_attrs
    assert os.listdir(store._base_path) == []

    # A model built on the meta device (e.g. for sharded loading) is refused the same way.
    with torch.device("meta"):
        model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"'weight' is on the meta device"):
        save_checkpoint(trial, model, 0, artifact_store=store)


def _weights(number: int, step: int) -> dict[str, torch.Tensor]:
    """Distinct weights for each (trial, step), of several dtypes."""
    g = torch.Generator().manual_seed(1000 * number + step)
    return {
        "w": torch.randn(3, 4, generator=g),
        "b": torch.randn(4, generator=g).to(torch.float64),
        "n": torch.randint(0, 100, (2,), generator=g),
    }


def test_the_trials_of_a_copied_study_read_their_checkpoints(
    tmp_path: Path, store: FileSystemArtifactStore
) -> None:
    # Issue 22, item 4: the owner stamp named storage ids, which optuna.copy_study does not
    # keep; 19 of 20 copied trials raised CheckpointError although their files exist.
    source = f"sqlite:///{tmp_path / 'source.db'}"
    target = f"sqlite:///{tmp_path / 'target.db'}"
    # Another study first, so that no trial keeps its storage id in either copy.
    other = optuna.create_study(storage=source, study_name="other")
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    study = optuna.create_study(
        storage=source, study_name="original", sampler=RandomSampler(seed=0)
    )

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        for step in range(4):
            save_checkpoint(
                trial, _weights(trial.number, step), step, artifact_store=store, keep_last=None
            )
            trial.report(x * (step + 1), step)
            if trial.number % 3 == 1 and step == 2:
                raise optuna.TrialPruned()
        return x

    study.optimize(objective, n_trials=20)
    states = {t.state for t in study.trials}
    assert states == {TrialState.COMPLETE, TrialState.PRUNED}
    optuna.copy_study(from_study_name="original", from_storage=source, to_storage=target)
    optuna.copy_study(
        from_study_name="original",
        from_storage=source,
        to_storage=source,
        to_study_name="copy-in-place",
    )
    originals = study.trials
    for storage, name in [(target, "original"), (source, "copy-in-place")]:
        copied = optuna.load_study(study_name=name, storage=storage).trials
        assert len(copied) == 20
        read = 0
        for original, copy in zip(originals, copied):
            assert copy._trial_id != original._trial_id and copy.number == original.number
            recorded = _attrs.read_checkpoints(copy.user_attrs)
            assert recorded == _attrs.read_checkpoints(original.user_attrs) != {}
            for step in recorded:
                ckpt = read_checkpoint(copy, step, artifact_store=store)
                expected = _weights(copy.number, step)
                assert ckpt.tensors.keys() == expected.keys()
                for name_, tensor in expected.items():
                    assert ckpt.tensors[name_].dtype == tensor.dtype
                    assert torch.equal(ckpt.tensors[name_], tensor)
            assert torch.equal(load_checkpoint(copy, artifact_store=store)["w"], ckpt.tensors["w"])
            read += 1
        assert read == 20


def test_a_record_copied_from_another_trial_is_not_read_as_this_trials(
    study: optuna.Study, store: FileSystemArtifactStore
) -> None:
    # A trial whose fms:checkpoints names another trial's files (enqueue_trial and add_trial
    # take user attributes) neither reads them as its own nor deletes them.
    first = study.ask()
    artifact_id = save_checkpoint(first, _weights(0, 0), 0, artifact_store=store)
    study.tell(first, 0.0)
    study.enqueue_trial({}, user_attrs={_attrs.CHECKPOINTS: {"0": artifact_id}})
    second = study.ask()
    assert second.number == 1
    with pytest.raises(CheckpointError, match="saved by trial 0"):
        read_checkpoint(second, 0, artifact_store=store)
    save_checkpoint(second, _weights(1, 5), 5, artifact_store=store, keep_last=1)
    assert _artifact_path(store, artifact_id).is_file()
    assert set(_attrs.read_checkpoints(second.user_attrs)) == {5}
    assert torch.equal(
        read_checkpoint(first.study.trials[0], 0, artifact_store=store).tensors["w"],
        _weights(0, 0)["w"],
    )


@pytest.mark.parametrize("state", [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
def test_saving_after_tell_uploads_nothing(
    study: optuna.Study, store: FileSystemArtifactStore, state: TrialState
) -> None:
    # Issue 22, item 8: the call raised, but only after the file was in the store.
    trial = study.ask()
    save_checkpoint(trial, _weights(0, 0), 0, artifact_store=store)
    files = sorted(p.name for p in Path(store._base_path).iterdir())
    study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match="already finished"):
        save_checkpoint(trial, _weights(0, 1), 1, artifact_store=store)
    assert sorted(p.name for p in Path(store._base_path).iterdir()) == files
    assert set(_attrs.read_checkpoints(study.trials[0].user_attrs)) == {0}
