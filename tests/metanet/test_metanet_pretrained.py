"""The pretrained metanetwork: the shipped file, saving and loading, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optuna_fms.metanet import GraphMetanetwork
from optuna_fms.metanet import PretrainedMetanetwork
from optuna_fms.metanet import build_graph
from optuna_fms.metanet._pretrained import MAX_EDGES_PER_LAYER
from optuna_fms.metanet._pretrained import SHIPPED_FILE
from optuna_fms.metanet._pretrained import reference_network


def _reference_graph():
    return build_graph(*reference_network(), max_edges_per_layer=MAX_EDGES_PER_LAYER)


def test_shipped_weights_reproduce_their_recorded_prediction() -> None:
    net = PretrainedMetanetwork.load()
    recorded = net.info["reference_prediction"]
    assert len(recorded) == 2
    got = net.predict([_reference_graph()])[0]
    assert got.tolist() == pytest.approx(recorded, abs=1e-5)
    # A trained network, not the seeded initialisation: another draw predicts otherwise.
    torch.manual_seed(0)
    fresh = PretrainedMetanetwork(**net.settings)
    assert fresh.predict([_reference_graph()])[0].tolist() != pytest.approx(recorded, abs=1e-3)


def test_shipped_file_is_small_and_documents_its_training() -> None:
    assert SHIPPED_FILE.stat().st_size < 512 * 1024
    info = PretrainedMetanetwork.load().info
    assert info["command"].startswith("optuna-fms pretrain-metanet")
    assert set(info["hubs"]) == {"zoo", "zoo-mnist", "arch"}
    assert info["n_examples"] and info["seconds"] > 0


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = PretrainedMetanetwork(out_dim=8, hidden=16, num_layers=2, info={"note": "x"})
    path = tmp_path / "net.safetensors"
    net.save(path)
    back = PretrainedMetanetwork.load(path)
    assert back.settings == {"out_dim": 8, "hidden": 16, "num_layers": 2}
    assert back.info == {"note": "x"}
    g = _reference_graph()
    assert torch.equal(back.predict([g]), net.predict([g]))


def test_bad_files_say_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "none.safetensors"
    with pytest.raises(ValueError, match="pretrain-metanet"):
        PretrainedMetanetwork.load(missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file at all")
    with pytest.raises(ValueError, match="pretrain-metanet"):
        PretrainedMetanetwork.load(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file(GraphMetanetwork().state_dict(), str(foreign))  # weights, but not ours
    with pytest.raises(ValueError, match="not a pretrained metanetwork"):
        PretrainedMetanetwork.load(foreign)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(SHIPPED_FILE.read_bytes()[:5000])
    with pytest.raises(ValueError, match="pretrain-metanet"):
        PretrainedMetanetwork.load(truncated)


@pytest.mark.parametrize(
    "settings",
    [
        '{"out_dim": 16, "hidden": 200000, "num_layers": 4}',  # would allocate ~160 GB
        '{"out_dim": 16, "hidden": 32, "num_layers": 100000}',  # would build for minutes
        '{"out_dim": 16, "hidden": -3, "num_layers": 4}',
        '{"out_dim": 16, "hidden": 32, "num_layers": 4, "depth": 2}',
        "[16, 32, 4]",
        '{"out_dim": 16, "hidden": 32.5, "num_layers": 4}',
        '{"out_dim": 16, "hidden": 64, "num_layers": 4}',  # valid, but not the file's shapes
        "{not json",
    ],
)
def test_a_small_file_with_nonsensical_settings_is_refused_before_building(
    tmp_path: Path, settings: str
) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(SHIPPED_FILE), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["settings"] = settings
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match=str(path.name)):
        PretrainedMetanetwork.load(path)
