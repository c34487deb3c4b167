"""LoRA adapters in the metanetwork: the canonical form, the layer handler, the invariances."""

from __future__ import annotations

import json
import math
from pathlib import Path
import sys
import time
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from optuna_fms.metanet import EDGE_FEATURES
from optuna_fms.metanet import EDGE_TYPES
from optuna_fms.metanet import NODE_FEATURES
from optuna_fms.metanet import GraphMetanetwork
from optuna_fms.metanet import ParamGraph
from optuna_fms.metanet import PretrainedMetanetwork
from optuna_fms.metanet import UnsupportedArchitectureError
from optuna_fms.metanet import build_graph
from optuna_fms.metanet import canonical_lora
from optuna_fms.metanet import describe_module
from optuna_fms.metanet._gmn import FIRST_EDGE_FEATURES
from optuna_fms.metanet._gmn import _mlp as _encoder
from optuna_fms.metanet._pretrained import MAX_EDGES_PER_LAYER
from optuna_fms.metanet.layers import LAYERS
from optuna_fms.metanet.layers import LoRA


if str(Path(__file__).parents[1]) not in sys.path:  # tests/, for extras.py
    sys.path.insert(0, str(Path(__file__).parents[1]))
from extras import require  # noqa: E402
from extras import tiny_bert_config  # noqa: E402


TOL = 1e-5
MARGIN = 5e-4
"""A different adapter's embedding differs from the adapter's by more than this (max abs; 50
times TOL). Measured: 1.2e-3 to 3.5e-1 (the untrained metanetwork on subsampled layers is the
closest), while the symmetric variants stay within 5e-7."""


def _adapter(r: int, d_in: int, d_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(r, d_in, generator=gen) / math.sqrt(d_in), torch.randn(
        d_out, r, generator=gen
    )


def _conditioned(r: int, seed: int) -> torch.Tensor:
    """A random invertible ``r x r`` matrix with condition number at most 10."""
    gen = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(r, r, generator=gen))
    q2, _ = torch.linalg.qr(torch.randn(r, r, generator=gen))
    return q1 @ torch.diag(torch.linspace(0.5, 5.0, r)) @ q2


def _variants(a: torch.Tensor, b: torch.Tensor, seed: int) -> dict[str, tuple[Any, Any]]:
    r, d_in = a.shape
    perm = torch.randperm(r, generator=torch.Generator().manual_seed(seed))
    g = _conditioned(r, seed)
    return {
        "rank permuted": (a[perm], b[:, perm]),
        "G-transformed": (g @ a, b @ torch.linalg.inv(g)),
        "zero rank added": (
            torch.cat([a, torch.randn(1, d_in)]),
            torch.cat([b, torch.zeros(b.shape[0], 1)], 1),
        ),
    }


def _adapter_sd(a: torch.Tensor, b: torch.Tensor, path: str = "fc") -> dict[str, torch.Tensor]:
    return {f"{path}.lora_A.weight": a, f"{path}.lora_B.weight": b}


def _types(g: ParamGraph) -> dict[str, int]:
    t = g.edge_attr[:, 3 : 3 + len(EDGE_TYPES)].argmax(1)
    return {EDGE_TYPES[int(i)]: int((t == i).sum()) for i in t.unique()}


@pytest.fixture(scope="module")
def gmn() -> GraphMetanetwork:
    torch.manual_seed(0)
    net = GraphMetanetwork().eval()
    # Untrained, the LoRA columns of the edge encoder are zero (see the last test): give them
    # weights so that these tests also see the edge types.
    with torch.no_grad():
        first = net.edge_encoder[0].weight
        for t in ("lora_a", "lora_b"):
            first[:, EDGE_FEATURES.index(f"type_{t}")] = torch.randn(first.shape[0]) * 0.5
    return net


# -- the canonical form ---------------------------------------------------------------------


@pytest.mark.parametrize("scaling", [1.0, 2.5, -0.5])
def test_the_canonical_factors_multiply_to_the_update(scaling: float) -> None:
    a, b = _adapter(6, 20, 15, seed=1)
    a_c, b_c = canonical_lora(a, b, scaling)
    assert a_c.shape == (6, 20) and b_c.shape == (15, 6)
    torch.testing.assert_close(b_c @ a_c, scaling * b.double() @ a.double(), rtol=0, atol=TOL)
    # Balanced and ordered: the rows of A' and the columns of B' share the singular values.
    s = a_c.norm(dim=1)
    torch.testing.assert_close(s, b_c.norm(dim=0), rtol=0, atol=TOL)
    assert torch.all(s[:-1] >= s[1:])
    # The sign convention: the largest entry of each column of B' is positive.
    assert torch.all(b_c.gather(0, b_c.abs().argmax(0, keepdim=True)) > 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_canonical_factors_are_invariant_to_the_adapter_symmetry(seed: int) -> None:
    a, b = _adapter(8, 30, 25, seed)
    ref = canonical_lora(a, b, 2.0)
    for name, (a2, b2) in _variants(a, b, seed).items():
        got = canonical_lora(a2, b2, 2.0)
        for x, y in zip(ref, got):
            assert x.shape == y.shape, name
            assert float((x - y).abs().max()) < TOL, name
    # The raw factors of the G-transformed adapter are far from the original's.
    a2, b2 = _variants(a, b, seed)["G-transformed"]
    assert float((a2 - a).abs().max()) > 0.1
    # The same update split differently between the scaling and the weights.
    for x, y in zip(ref, canonical_lora(a, 4.0 * b, 0.5)):
        assert float((x - y).abs().max()) < TOL


def test_a_rank_deficient_adapter_equals_its_lower_rank_form() -> None:
    a, b = _adapter(3, 12, 10, seed=4)
    mix = torch.randn(3, 5, generator=torch.Generator().manual_seed(5))
    # Rank 5 in form, rank 3 in fact: B2 = B M, A2 = M^+ A with M M^+ = I.
    a5 = torch.linalg.pinv(mix) @ a
    b5 = b @ mix
    low = canonical_lora(a, b)
    high = canonical_lora(a5, b5)
    assert high[0].shape == (3, 12) and high[1].shape == (10, 3)
    for x, y in zip(low, high):
        assert float((x - y).abs().max()) < TOL


def test_a_zero_update_has_rank_zero() -> None:
    a, b = _adapter(4, 9, 7, seed=6)
    a_c, b_c = canonical_lora(a, torch.zeros_like(b))  # LoRA's zero-initialised B
    assert a_c.shape == (0, 9) and b_c.shape == (7, 0)
    a_c, b_c = canonical_lora(torch.zeros_like(a), torch.zeros_like(b))
    assert a_c.shape == (0, 9) and b_c.shape == (7, 0)


def test_mismatched_factors_are_refused() -> None:
    with pytest.raises(ValueError, match="r x d_in and d_out x r"):
        canonical_lora(torch.zeros(4, 9), torch.zeros(7, 3))


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_a_large_layer_never_forms_the_product() -> None:
    a, b = _adapter(8, 4096, 4096, seed=7)
    with _LargestTensor() as mode:
        canonical_lora(a, b, 2.0)
    # The largest tensor is a factor (4096 x 8), not the 4096 x 4096 product (2048 x larger).
    assert mode.largest == 4096 * 8
    start = time.perf_counter()
    a_c, b_c = canonical_lora(a, b, 2.0)
    assert time.perf_counter() - start < 0.5  # about 2 ms on one core
    # B' A' is the product, checked on a few rows without forming it either.
    rows = torch.arange(0, 4096, 512)
    torch.testing.assert_close(
        b_c[rows] @ a_c, 2.0 * b[rows].double() @ a.double(), rtol=0, atol=TOL
    )


# -- the graph and its embedding ------------------------------------------------------------


def _embeddings(net: Any, graphs: list[ParamGraph]) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(net, PretrainedMetanetwork):
            return net.predict(graphs)
        return net(graphs)


@pytest.mark.parametrize(
    ("r", "d_in", "d_out", "max_edges"),
    [(4, 12, 10, None), (8, 300, 200, 1024), (8, 300, 200, MAX_EDGES_PER_LAYER)],
    ids=["whole", "subsampled-1024", "subsampled-256"],
)
def test_an_adapter_embeds_invariantly_to_its_symmetry(
    gmn: GraphMetanetwork, r: int, d_in: int, d_out: int, max_edges: int | None
) -> None:
    a, b = _adapter(r, d_in, d_out, seed=10)
    variants = _variants(a, b, seed=11)
    other = _adapter(r, d_in, d_out, seed=12)
    nets: list[Any] = [gmn, PretrainedMetanetwork.load()]
    for net in nets:
        graphs = [build_graph(_adapter_sd(a, b), max_edges_per_layer=max_edges)]
        graphs += [
            build_graph(_adapter_sd(*v), max_edges_per_layer=max_edges) for v in variants.values()
        ]
        graphs.append(build_graph(_adapter_sd(*other), max_edges_per_layer=max_edges))
        if max_edges is not None:
            assert graphs[0].subsampled and graphs[0].num_edges <= 2 * max_edges
        emb = _embeddings(net, graphs)
        for name, e in zip(variants, emb[1:-1]):
            assert float((e - emb[0]).abs().max()) < TOL, (type(net).__name__, name)
        assert float((emb[-1] - emb[0]).abs().max()) > MARGIN, type(net).__name__
        # The control: the raw factors drawn as two linear layers d_in -> r -> d_out are not
        # invariant to G (only to a permutation of the rank, which permutes hidden neurons).
        raw = [
            build_graph({"0.weight": x, "1.weight": y}, max_edges_per_layer=max_edges)
            for x, y in ((a, b), variants["G-transformed"])
        ]
        emb = _embeddings(net, raw)
        assert float((emb[1] - emb[0]).abs().max()) > MARGIN, type(net).__name__


def test_a_full_peft_model_embeds_invariantly_to_its_adapters_symmetry(
    gmn: GraphMetanetwork,
) -> None:
    require("peft")
    sd, structure = _peft_mlp(seed=0)
    graphs = [build_graph(sd, structure)]
    for seed in (1, 2):
        moved = dict(sd)
        for key in [k for k in sd if "lora_A" in k]:
            key_b = key.replace("lora_A", "lora_B")
            g = _conditioned(sd[key].shape[0], seed)
            moved[key], moved[key_b] = g @ sd[key], sd[key_b] @ torch.linalg.inv(g)
        graphs.append(build_graph(moved, structure))
    other, _ = _peft_mlp(seed=3)
    graphs.append(build_graph(other, structure))
    for net in (gmn, PretrainedMetanetwork.load()):
        emb = _embeddings(net, graphs)
        assert float((emb[1:3] - emb[0]).abs().max()) < TOL
        assert float((emb[3] - emb[0]).abs().max()) > MARGIN


# -- peft models ----------------------------------------------------------------------------


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 3),
    )


def _peft(seed: int, **config: Any) -> Any:
    from peft import LoraConfig
    from peft import get_peft_model

    model = get_peft_model(_mlp(seed), LoraConfig(target_modules=["0", "2"], **config))
    with torch.no_grad():  # a trained adapter (peft initialises B at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    return model


def _peft_mlp(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    model = _peft(seed, r=4, lora_alpha=8)
    return model.state_dict(), describe_module(model)


def test_a_peft_model_builds_with_and_without_structure() -> None:
    require("peft")
    model = _peft(0, r=4, lora_alpha=8)
    structure = describe_module(model)
    lora = [
        n
        for n in structure["nodes"]
        if n.get("path") in ("base_model.model.0", "base_model.model.2")
    ]
    assert [n["attrs"]["scaling"] for n in lora] == [{"default": 2.0}] * 2
    g = build_graph(model.state_dict(), structure)
    # 6 inputs, 16 + 12 + 3 neurons, 3 bias nodes, 4 + 4 rank nodes.
    assert g.num_nodes == 6 + 16 + 12 + 3 + 3 + 8
    assert _types(g) == {
        "linear": 6 * 16 + 16 * 12 + 12 * 3,
        "bias": 16 + 12 + 3,
        "lora_a": 4 * 6 + 4 * 16,
        "lora_b": 16 * 4 + 12 * 4,
    }
    # The update drawn is the scaled one: the factors multiply to 2 * B A.
    lora_a = g.edge_attr[:, 3 + EDGE_TYPES.index("lora_a")] == 1
    lora_b = g.edge_attr[:, 3 + EDGE_TYPES.index("lora_b")] == 1
    a_c = g.edge_attr[lora_a, 0][: 4 * 6].reshape(4, 6).double()
    b_c = g.edge_attr[lora_b, 0][: 16 * 4].reshape(16, 4).double()
    layer = model.base_model.model[0]
    expected = (
        2.0 * layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
    )
    torch.testing.assert_close(b_c @ a_c, expected.detach(), rtol=0, atol=TOL)
    # Without the structure: the same graph, the layers taken as a chain, the scaling unknown (1).
    plain = build_graph(model.state_dict())
    assert (plain.num_nodes, plain.num_edges) == (g.num_nodes, g.num_edges)
    same = ~(lora_a | lora_b)
    assert torch.equal(plain.edge_attr[same], g.edge_attr[same])
    torch.testing.assert_close(
        plain.edge_attr[lora_a | lora_b, 0] * math.sqrt(2.0), g.edge_attr[lora_a | lora_b, 0]
    )


def test_a_fresh_adapter_leaves_the_base_network_graph() -> None:
    require("peft")
    from peft import LoraConfig
    from peft import get_peft_model

    base = _mlp(0)
    plain = build_graph(base.state_dict(), describe_module(base))
    model = get_peft_model(_mlp(0), LoraConfig(r=4, target_modules=["0", "2"]))
    g = build_graph(model.state_dict(), describe_module(model))
    assert g.num_nodes == plain.num_nodes
    assert torch.equal(g.edge_index, plain.edge_index)
    assert torch.equal(g.edge_attr, plain.edge_attr)


def test_an_adapter_only_state_dict_reads_its_scaling_from_the_structure() -> None:
    require("peft")
    from peft import get_peft_model_state_dict

    for config, scaling in (
        ({"r": 4, "lora_alpha": 8}, 2.0),
        ({"r": 4, "lora_alpha": 8, "use_rslora": True}, 4.0),
    ):
        model = _peft(0, **config)
        adapter = get_peft_model_state_dict(model)
        assert set(adapter) == {
            f"base_model.model.{i}.lora_{p}.weight" for i in (0, 2) for p in "AB"
        }
        bare = build_graph(adapter)
        # One block per adapted layer: d_in -> rank -> d_out, not connected.
        assert bare.num_nodes == (6 + 4 + 16) + (16 + 4 + 12)
        assert _types(bare) == {"lora_a": 4 * 6 + 4 * 16, "lora_b": 16 * 4 + 12 * 4}
        scaled = build_graph(adapter, describe_module(model))
        assert torch.equal(scaled.edge_index, bare.edge_index)
        torch.testing.assert_close(
            bare.edge_attr[:, 0] * math.sqrt(scaling), scaled.edge_attr[:, 0]
        )
        # Given here, it wins over the structure.
        layers = LAYERS.with_layers(LoRA(scaling=1.0))
        assert torch.equal(
            build_graph(adapter, describe_module(model), layers=layers).edge_attr, bare.edge_attr
        )
        by_path = LAYERS.with_layers(LoRA(scaling={"0": scaling, "2": scaling}))
        torch.testing.assert_close(
            build_graph(adapter, layers=by_path).edge_attr, scaled.edge_attr
        )


def test_a_bert_adapter_builds() -> None:
    require("peft")
    require("transformers")
    from peft import LoraConfig
    from peft import get_peft_model
    from peft import get_peft_model_state_dict
    from transformers import BertModel

    torch.manual_seed(0)
    config = tiny_bert_config(num_hidden_layers=2)
    model = get_peft_model(BertModel(config), LoraConfig(r=4, target_modules=["query", "value"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    g = build_graph(get_peft_model_state_dict(model), describe_module(model))
    # 2 layers x (query, value): 4 blocks of 16 -> 4 -> 16.
    assert g.num_nodes == 4 * (16 + 4 + 16)
    assert _types(g) == {"lora_a": 4 * 4 * 16, "lora_b": 4 * 16 * 4}
    assert PretrainedMetanetwork.load().predict([g]).shape == (1, 2)


def test_dora_and_lora_on_embeddings_are_refused() -> None:
    require("peft")
    from peft import LoraConfig
    from peft import get_peft_model

    dora = get_peft_model(_mlp(0), LoraConfig(r=2, target_modules=["0"], use_dora=True))
    with pytest.raises(UnsupportedArchitectureError, match="DoRA"):
        build_graph(dora.state_dict(), describe_module(dora))
    emb = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    lora_emb = get_peft_model(emb, LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(UnsupportedArchitectureError, match="LoRA on embeddings"):
        build_graph(lora_emb.state_dict(), describe_module(lora_emb))


# -- the new edge types and the saved metanetworks ------------------------------------------


def test_the_lora_columns_start_at_zero_and_leave_other_graphs_alone() -> None:
    assert EDGE_TYPES[-2:] == ("lora_a", "lora_b")
    keep = [EDGE_FEATURES.index(f) for f in FIRST_EDGE_FEATURES] + [len(EDGE_FEATURES)]
    torch.manual_seed(0)
    net = GraphMetanetwork().eval()
    after = torch.rand(3)
    first = net.edge_encoder[0].weight.detach()
    assert first.shape[1] == len(EDGE_FEATURES) + 1
    lora = [EDGE_FEATURES.index("type_lora_a"), EDGE_FEATURES.index("type_lora_b")]
    assert torch.all(first[:, lora] == 0)
    # The other columns, and the random state after, are those of the network drawn on the
    # first edge features (node encoder, then edge encoder): same weights, same embeddings.
    torch.manual_seed(0)
    _encoder(len(NODE_FEATURES), net.hidden)
    old = _encoder(len(FIRST_EDGE_FEATURES) + 1, net.hidden)
    assert torch.equal(first[:, keep], old[0].weight.detach())
    torch.manual_seed(0)
    GraphMetanetwork()
    assert torch.equal(torch.rand(3), after)


def test_a_metanetwork_file_records_its_edge_features(tmp_path: Any) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(1)
    net = PretrainedMetanetwork(out_dim=4, hidden=8, num_layers=1)
    path = tmp_path / "net.safetensors"
    net.save(path)
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["edge_features"] == json.dumps(list(EDGE_FEATURES))
    a, b = _adapter(4, 12, 10, seed=0)
    graphs = [build_graph(_adapter_sd(a, b)), build_graph(torch.nn.Linear(3, 2).state_dict())]
    expected = net.predict(graphs)
    # A file from before the LoRA types (no list recorded, 17 feature columns) still loads:
    # its LoRA columns read zero, every other column as saved.
    keep = [EDGE_FEATURES.index(f) for f in FIRST_EDGE_FEATURES] + [len(EDGE_FEATURES)]
    old = dict(tensors)
    old["gmn.edge_encoder.0.weight"] = tensors["gmn.edge_encoder.0.weight"][:, keep].clone()
    old_meta = {k: v for k, v in meta.items() if k != "edge_features"}
    save_file(old, str(tmp_path / "old.safetensors"), metadata=old_meta)
    back = PretrainedMetanetwork.load(tmp_path / "old.safetensors")
    torch.testing.assert_close(back.predict(graphs[1:]), expected[1:], rtol=0, atol=1e-6)
    # A file reading an edge type this version does not know is refused.
    meta_unknown = dict(meta, edge_features=json.dumps([*EDGE_FEATURES[:-1], "type_x"]))
    save_file(tensors, str(tmp_path / "unknown.safetensors"), metadata=meta_unknown)
    with pytest.raises(ValueError, match="edge features"):
        PretrainedMetanetwork.load(tmp_path / "unknown.safetensors")
