from __future__ import annotations

import json

from metanet_nets import NETS
from metanet_nets import cnn
from metanet_nets import mlp
from metanet_nets import resnet
from metanet_nets import transformer
from metanet_nets import vit
import pytest
import torch

from optuna_fms.metanet import EDGE_FEATURES
from optuna_fms.metanet import EDGE_TYPES
from optuna_fms.metanet import NODE_FEATURES
from optuna_fms.metanet import NODE_TYPES
from optuna_fms.metanet import ParamGraph
from optuna_fms.metanet import UnsupportedArchitectureError
from optuna_fms.metanet import build_graph
from optuna_fms.metanet import describe_module


def _graph(net: torch.nn.Module, **kwargs: object) -> ParamGraph:
    return build_graph(net.state_dict(), describe_module(net), **kwargs)  # type: ignore[arg-type]


def _col(name: str, edge: bool = True) -> int:
    return (EDGE_FEATURES if edge else NODE_FEATURES).index(name)


def _etype(g: ParamGraph) -> torch.Tensor:
    start = _col("type_linear")
    return g.edge_attr[:, start : start + len(EDGE_TYPES)].argmax(1)


def _ntype(g: ParamGraph) -> torch.Tensor:
    start = _col("type_input", edge=False)
    return g.x[:, start : start + len(NODE_TYPES)].argmax(1)


def _count(g: ParamGraph, kind: str, edge: bool = True) -> int:
    if edge:
        return int((_etype(g) == EDGE_TYPES.index(kind)).sum())
    return int((_ntype(g) == NODE_TYPES.index(kind)).sum())


def test_mlp_graph_exact() -> None:
    net = mlp()
    g = _graph(net)
    assert g.x.shape == (5 + 7 + 6 + 3 + 3, len(NODE_FEATURES))
    assert g.edge_attr.shape == (35 + 42 + 18 + 7 + 6 + 3, len(EDGE_FEATURES))
    assert g.edge_index.shape == (2, g.edge_attr.shape[0])
    assert g.num_layers == 3 and g.num_params == 35 + 42 + 18 + 16
    assert not g.subsampled
    counts = {t: _count(g, t, edge=False) for t in NODE_TYPES}
    assert counts == {"input": 5, "hidden": 13, "output": 3, "bias": 3, "gamma": 0, "beta": 0}
    assert _count(g, "linear") == 95 and _count(g, "bias") == 16
    # Input neurons: layer 0, indexed; output neurons: last layer, indexed; hidden: index 0.
    io, layer = g.x[:, _col("io_index", False)], g.x[:, _col("layer", False)]
    ntype = _ntype(g)
    inputs = ntype == NODE_TYPES.index("input")
    outputs = ntype == NODE_TYPES.index("output")
    assert torch.allclose(io[inputs], torch.arange(1, 6) / 5)
    assert torch.allclose(io[outputs], torch.arange(1, 4) / 3)
    assert torch.all(io[~(inputs | outputs)] == 0)
    assert torch.all(layer[inputs] == 0) and torch.all(layer[outputs] == 3)
    # Every weight appears once, as an edge from its input neuron to its output neuron.
    w = net.state_dict()["2.weight"]
    lin2 = (_etype(g) == EDGE_TYPES.index("linear")) & (g.edge_attr[:, _col("layer")] == 2)
    assert torch.equal(
        torch.sort(g.edge_attr[lin2, _col("value")]).values, torch.sort(w.reshape(-1)).values
    )
    src, dst = g.edge_index[:, lin2]
    assert torch.all(layer[src] == 1) and torch.all(layer[dst] == 2)
    assert torch.all(g.edge_attr[:, _col("kpos_0") :] == 0)
    # Layer fraction is layer / num_layers.
    assert torch.allclose(g.edge_attr[:, _col("layer_frac")], g.edge_attr[:, _col("layer")] / 3)


def test_cnn_graph_exact_with_kernel_and_flatten_positions() -> None:
    net = cnn()
    g = _graph(net)
    assert g.num_nodes == 2 + 4 + 3 + 5 + 3
    assert g.num_edges == 2 * 4 * 9 + 4 + 4 * 3 * 9 + 3 + 12 * 5 + 5
    assert _count(g, "conv") == 72 + 108 and _count(g, "linear") == 60
    conv = _etype(g) == EDGE_TYPES.index("conv")
    pos = g.edge_attr[conv][:, _col("kpos_0") : _col("kpos_2") + 1]
    # 3x3 kernel positions on {-1, 0, 1}^2, each used by every (in, out) pair; third coord 0.
    rows = {tuple(r) for r in pos.tolist()}
    assert rows == {(a, b, 0.0) for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)}
    # Conv weight W[o, c, i, j] is the edge (c -> o) with position (i - 1, j - 1).
    w = net.state_dict()["0.weight"]
    first = (g.edge_attr[:, _col("layer")] == 1) & conv
    src, dst = g.edge_index[:, first]
    vals = g.edge_attr[first, _col("value")]
    for k in range(vals.numel()):
        o, c = int(dst[k]) - 2, int(src[k])
        i, j = (g.edge_attr[first][k, _col("kpos_0") : _col("kpos_1") + 1] + 1).long().tolist()
        assert vals[k] == w[o, c, i, j]
    # Linear after flatten: 4 parallel edges per (channel, output), at 2x2 positions.
    lin = _etype(g) == EDGE_TYPES.index("linear")
    src, dst = g.edge_index[:, lin]
    pairs = torch.stack([src, dst], 1).unique(dim=0, return_counts=True)[1]
    assert pairs.numel() == 15 and torch.all(pairs == 4)
    lpos = {tuple(r) for r in g.edge_attr[lin][:, _col("kpos_0") : _col("kpos_2") + 1].tolist()}
    assert lpos == {(a, b, 0.0) for a in (-0.5, 0.5) for b in (-0.5, 0.5)}


def test_resnet_graph_exact_with_residual_and_batchnorm() -> None:
    net = resnet().eval()
    g = _graph(net)
    assert g.num_nodes == 3 + (4 + 2) + (4 + 2 + 4 + 2) + (6 + 2 + 6 + 2 + 6 + 2) + (3 + 1)
    assert g.num_edges == 1051  # convs 108+144+144+216+324+24, BN 8*4+12*3, residual 4+6, fc 21
    assert g.num_layers == 13
    assert _count(g, "gamma", edge=False) == 6 and _count(g, "beta", edge=False) == 6
    assert _count(g, "bias", edge=False) == 1
    res = _etype(g) == EDGE_TYPES.index("residual")
    assert int(res.sum()) == 10
    assert torch.all(g.edge_attr[res, _col("value")] == 1.0)
    # Identity shortcut of block1: stem channels (nodes 3..6) -> block1.conv2 channels.
    src, dst = g.edge_index[:, res]
    assert src[:4].tolist() == [3, 4, 5, 6]
    layer = g.x[:, _col("layer", False)]
    assert torch.all(layer[dst[:4]] == 5)  # conv2 of block1 is layer 5
    # Block2: the downsample output receives the main path's channels.
    assert torch.all(layer[src[4:]] == 9) and torch.all(layer[dst[4:]] == 11)
    # BatchNorm with running statistics folded into gamma/beta edges.
    bn = net.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    gamma = (_etype(g) == EDGE_TYPES.index("gamma")) & (g.edge_attr[:, _col("layer")] == 2)
    beta = (_etype(g) == EDGE_TYPES.index("beta")) & (g.edge_attr[:, _col("layer")] == 2)
    assert torch.allclose(g.edge_attr[gamma, _col("value")], scale.detach())
    assert torch.allclose(g.edge_attr[beta, _col("value")], shift.detach())
    assert g.edge_index[1, gamma].tolist() == [3, 4, 5, 6]


def test_transformer_graph_exact() -> None:
    net = transformer().eval()
    g = _graph(net)
    per_layer_nodes = 24 + 3 + 8 + 1 + 2 + 16 + 1 + 8 + 1 + 2
    assert g.num_nodes == 3 + 9 + 2 * per_layer_nodes + 3
    per_layer_edges = (3 * 64 + 24) + (64 + 8) + 8 + 16 + (128 + 16) + (128 + 8) + 8 + 16
    assert g.num_edges == 32 + 2 * per_layer_edges + 18
    assert g.num_layers == 1 + 2 * 6 + 1
    for kind in ("attn_q", "attn_k", "attn_v", "attn_out"):
        assert _count(g, kind) == 2 * 64
    assert _count(g, "residual") == 2 * 2 * 8
    assert _count(g, "gamma", edge=False) == 4 and _count(g, "beta", edge=False) == 4
    # The output projection reads the value neurons, not the query/key neurons.
    layer = g.x[:, _col("layer", False)]
    out = _etype(g) == EDGE_TYPES.index("attn_out")
    v = _etype(g) == EDGE_TYPES.index("attn_v")
    assert set(g.edge_index[0, out].tolist()) == set(g.edge_index[1, v].tolist())
    assert torch.all(layer[g.edge_index[0, out]] + 1 == layer[g.edge_index[1, out]])


@pytest.mark.parametrize("name", sorted(NETS))
def test_structure_json_round_trip(name: str) -> None:
    net = NETS[name][0]()
    structure = describe_module(net)
    assert structure["trace"] == "fx"
    restored = json.loads(json.dumps(structure))
    a = build_graph(net.state_dict(), structure)
    b = build_graph(net.state_dict(), restored)
    assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(a.edge_attr, b.edge_attr)


@pytest.mark.parametrize("factory", [mlp, cnn])
def test_without_structure_matches_structure_for_plain_stacks(factory) -> None:  # noqa: ANN001
    net = factory()
    a = build_graph(net.state_dict())
    b = _graph(net)
    assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(a.edge_attr, b.edge_attr)


def test_without_structure_cnn_with_batchnorm_and_half_precision() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
        torch.nn.Linear(3 * 9, 2),
    )  # fmt: skip
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    g = build_graph(sd)
    assert g.num_nodes == 1 + 3 + 1 + 2 + 2 + 1
    assert g.num_edges == 27 + 3 + 6 + 2 * 27 + 2
    assert g.edge_attr.dtype == torch.float32


def test_unsupported_without_structure_names_the_parameter() -> None:
    sd = torch.nn.LSTM(4, 8).state_dict()
    with pytest.raises(UnsupportedArchitectureError, match="weight_ih_l0"):
        build_graph(sd)
    # A plain stack whose widths do not chain is not silently accepted.
    sd = {"a.weight": torch.randn(8, 4), "b.weight": torch.randn(3, 5)}
    with pytest.raises(UnsupportedArchitectureError, match="'b'"):
        build_graph(sd)


def test_unsupported_with_structure_names_the_module() -> None:
    class WithLSTM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.rnn = torch.nn.GRU(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(self.fc(x))[0]

    net = WithLSTM()
    with pytest.raises(UnsupportedArchitectureError, match="'rnn'.*GRU"):
        _graph(net)
    assert issubclass(UnsupportedArchitectureError, ValueError)


def test_parameter_added_in_forward_is_a_bias_node() -> None:
    class WithToken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = torch.nn.Parameter(torch.zeros(4))
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x + self.token)

    g = _graph(WithToken())
    assert g.num_nodes == 4 + 1 + 2 + 1 and g.num_edges == 4 + 8 + 2
    assert _count(g, "bias", edge=False) == 2 and _count(g, "bias") == 4 + 2


def test_separate_qkv_projections_are_linear_layers() -> None:
    class Attention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(6, 6) for _ in range(3))
            self.o = torch.nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), -1)
            return x + self.o(a @ self.v(x))

    net = Attention()
    g = _graph(net)
    assert g.num_nodes == 6 + 4 * 6 + 4
    assert g.num_edges == 4 * (36 + 6) + 6
    # o reads v's neurons: its sources are the destinations of v's weights (layer 3).
    layer = g.x[:, _col("layer", False)]
    lin = _etype(g) == EDGE_TYPES.index("linear")
    o_edges = lin & (g.edge_attr[:, _col("layer")] == 4)
    assert torch.all(layer[g.edge_index[0, o_edges]] == 3)


def test_subsampling_bounds_edges_per_layer() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(40, 50), torch.nn.ReLU(), torch.nn.Linear(50, 30))
    g = build_graph(net.state_dict(), max_edges_per_layer=100)
    assert g.subsampled and g.num_edges_full == 2000 + 1500 + 80
    lin = _etype(g) == EDGE_TYPES.index("linear")
    per_layer = torch.bincount(g.edge_attr[lin, _col("layer")].long())
    assert per_layer[1] == 99 and per_layer[2] == 99  # k - 1 entries strictly below the k-th key
    assert _count(g, "bias") == 80
    # The kept values are a spread sample, not only the largest weights.
    kept = g.edge_attr[lin & (g.edge_attr[:, _col("layer")] == 1), _col("value")]
    w = net[0].weight.reshape(-1)
    assert kept.abs().min() < w.abs().median() < kept.abs().max()
    full = build_graph(net.state_dict(), max_edges_per_layer=None)
    assert full.num_edges == full.num_edges_full == 3580
    with pytest.raises(ValueError):
        build_graph(net.state_dict(), max_edges_per_layer=0)


def test_untraceable_module_falls_back_to_module_order() -> None:
    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(4, 6)
            self.b = torch.nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent: symbolic tracing fails
                x = -x
            return self.b(torch.relu(self.a(x)))

    net = Branchy()
    structure = describe_module(net)
    assert structure["trace"] == "order"
    json.dumps(structure)
    g = build_graph(net.state_dict(), structure)
    ref = build_graph(net.state_dict())
    assert torch.equal(g.edge_attr, ref.edge_attr) and torch.equal(g.x, ref.x)


def test_embedding_is_a_layer_from_token_nodes() -> None:
    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.out = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.emb(x).mean(1))

    net = Tokens()
    g = _graph(net)
    assert g.num_nodes == 10 + 4 + 3 + 1
    assert g.num_edges == 40 + 12 + 3
    assert _count(g, "embedding") == 40 and _count(g, "input", edge=False) == 10
    emb = _etype(g) == EDGE_TYPES.index("embedding")
    # weight[t, d] is the edge from token t to dimension d.
    src, dst = g.edge_index[:, emb]
    w = net.emb.weight.detach()
    assert torch.equal(g.edge_attr[emb, _col("value")], w[src, dst - 10])


def test_hash_subsample_across_chunks_is_exact_and_permutation_invariant() -> None:
    from optuna_fms.metanet._subsample import _HASH_CHUNK
    from optuna_fms.metanet._subsample import _hash_subsample
    from optuna_fms.metanet._subsample import _hash_values

    g = torch.Generator().manual_seed(0)
    flat = torch.randn(_HASH_CHUNK + 12345, generator=g)
    k = 1000
    sel = _hash_subsample(flat, k)
    assert sel is not None and sel.numel() == k - 1
    keys = _hash_values(flat)
    brute = torch.nonzero(keys < torch.kthvalue(keys, k).values).reshape(-1)
    assert torch.equal(sel, brute)
    perm = torch.randperm(flat.numel(), generator=g)
    sel_p = _hash_subsample(flat[perm], k)
    assert sel_p is not None
    assert torch.equal(torch.sort(flat[sel]).values, torch.sort(flat[perm][sel_p]).values)
    # Heavily tied values (pre-filter falls short): still invariant and bounded.
    tied = torch.randint(0, 30, (50_000,), generator=g).float()
    sel = _hash_subsample(tied, k)
    sel_p = _hash_subsample(tied[perm[perm < 50_000]], k)
    assert sel is not None and sel_p is not None and sel.numel() < k
    assert torch.equal(
        torch.sort(tied[sel]).values, torch.sort(tied[perm[perm < 50_000]][sel_p]).values
    )
    assert _hash_subsample(flat[:k], k) is None


def test_unread_buffer_is_ignored_but_unread_parameter_is_not() -> None:
    class WithBuffer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)
            self.register_buffer("pe", torch.randn(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x + self.pe)

    net = WithBuffer()
    structure = describe_module(net)
    assert structure["buffers"] == ["pe"]
    assert build_graph(net.state_dict(), structure).num_edges == 8 + 2
    with pytest.raises(UnsupportedArchitectureError, match="'pe'"):
        build_graph(net.state_dict())


def test_parameters_read_in_forward_class_token_positions_scale() -> None:
    net = vit().eval()
    g = _graph(net)
    layer_nodes = 2 + (24 + 3) + (8 + 1) + 2 + (16 + 1) + (8 + 1)
    assert g.num_nodes == 1 + (8 + 1) + 1 + 1 + layer_nodes + 1 + (3 + 1)
    layer_edges = 16 + (192 + 24) + (64 + 8) + 8 + 16 + (128 + 16) + (128 + 8) + 8
    assert g.num_edges == (32 + 8) + 8 + 40 + layer_edges + 8 + (24 + 3)
    assert g.num_layers == 11
    # The positional embedding pos[0, p, d]: 5 parallel edges per feature d from one node,
    # at 5 positions; the class token: one edge per feature.
    pos_edges = g.edge_attr[:, _col("layer")] == 3
    assert int(pos_edges.sum()) == 40
    assert torch.all(_etype(g)[pos_edges] == EDGE_TYPES.index("bias"))
    assert torch.equal(
        torch.sort(g.edge_attr[pos_edges, _col("value")]).values,
        torch.sort(net.pos.detach().reshape(-1)).values,
    )
    assert set(g.edge_attr[pos_edges, _col("kpos_0")].tolist()) == {-1.0, -0.5, 0.0, 0.5, 1.0}
    scale = g.edge_attr[:, _col("layer")] == 10
    assert torch.all(_etype(g)[scale] == EDGE_TYPES.index("gamma")) and int(scale.sum()) == 8


def test_parameter_in_unsupported_op_is_reported() -> None:
    class Functional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, self.w)

    with pytest.raises(UnsupportedArchitectureError, match="'w'"):
        _graph(Functional())
