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
