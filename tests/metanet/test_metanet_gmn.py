from __future__ import annotations

from metanet_nets import NETS
from metanet_nets import permuted_copy
from metanet_nets import sample_input
import pytest
import torch

from optuna_fms.metanet import STATS_DIM
from optuna_fms.metanet import GraphMetanetwork
from optuna_fms.metanet import ParamGraph
from optuna_fms.metanet import StatsFeaturizer
from optuna_fms.metanet import build_graph
from optuna_fms.metanet import describe_module
from optuna_fms.metanet import weight_statistics


@pytest.fixture(scope="module")
def gmn() -> GraphMetanetwork:
    torch.manual_seed(0)
    return GraphMetanetwork().eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def _check_same_function(name: str, a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = sample_input(name)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)
    # ... while the parameters really moved.
    moved = [
        not torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values())
        if p.is_floating_point() and p.numel() > 1
    ]
    assert sum(moved) >= 4


@pytest.mark.parametrize("name", sorted(NETS))
def test_embedding_invariant_to_hidden_permutation(name: str, gmn: GraphMetanetwork) -> None:
    torch.manual_seed(1)
    net = NETS[name][0]().eval()
    perm = permuted_copy(name, net, seed=2)
    _check_same_function(name, net, perm)
    structure = describe_module(net)
    other = NETS[name][0]().eval()
    graphs = [build_graph(m.state_dict(), structure) for m in (net, perm, other)]
    assert graphs[0].num_edges == graphs[1].num_edges
    # The graphs are not trivially identical: edge order follows parameter order.
    assert not torch.equal(graphs[0].edge_attr, graphs[1].edge_attr)
    with torch.no_grad():
        emb = gmn(graphs)
    assert _rel(emb[0], emb[1]) < 1e-5
    assert _rel(emb[0], emb[2]) > 1e-4


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_invariance_with_subsampling_active(name: str, gmn: GraphMetanetwork) -> None:
    torch.manual_seed(3)
    net = NETS[name][0]().eval()
    perm = permuted_copy(name, net, seed=4)
    _check_same_function(name, net, perm)
    structure = describe_module(net)
    graphs = [build_graph(m.state_dict(), structure, max_edges_per_layer=10) for m in (net, perm)]
    assert graphs[0].subsampled and graphs[0].num_edges < graphs[0].num_edges_full // 2
    assert graphs[0].num_edges == graphs[1].num_edges
    # Same multiset of (value, layer, type) edges.
    for g in graphs:
        assert g.edge_attr.shape[0] == g.edge_index.shape[1]
    a, b = (torch.sort(g.edge_attr[:, 0] * 1000 + g.edge_attr[:, 2]).values for g in graphs)
    assert torch.equal(a, b)
    with torch.no_grad():
        emb = gmn(graphs)
    assert _rel(emb[0], emb[1]) < 1e-5


def test_gradient_flows_to_every_parameter() -> None:
    torch.manual_seed(5)
    gmn = GraphMetanetwork(out_dim=4)
    graphs = [build_graph(NETS["mlp"][0]().state_dict()) for _ in range(3)]
    out = gmn(graphs)
    assert out.shape == (3, 4) and out.requires_grad
    out.pow(2).sum().backward()
    for name, p in gmn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # A gradient step changes the embedding.
    with torch.no_grad():
        before = gmn(graphs).clone()
        for p in gmn.parameters():
            p -= 0.1 * p.grad  # type: ignore[operator]
        assert not torch.allclose(before, gmn(graphs))


def test_pyg_conversion_and_batch_are_cached() -> None:
    gmn = GraphMetanetwork()
    graphs = [build_graph(NETS["cnn"][0]().state_dict()) for _ in range(2)]
    data = graphs[0].to_pyg()
    assert data is graphs[0].to_pyg()
    assert data.num_nodes == graphs[0].num_nodes
    gmn(graphs)
    batch = gmn._batch
    gmn(list(graphs))
    assert gmn._batch is batch
    out = gmn(graphs[::-1])
    assert gmn._batch is not batch
    assert torch.allclose(out[0], gmn(graphs)[1], atol=1e-6)
    assert gmn([]).shape == (0, 16)


def test_batched_embedding_equals_single() -> None:
    torch.manual_seed(6)
    gmn = GraphMetanetwork().eval()
    graphs = [build_graph(NETS[n][0]().state_dict(), describe_module(NETS[n][0]())) for n in NETS]
    with torch.no_grad():
        together = gmn(graphs)
        alone = torch.cat([gmn([g]) for g in graphs])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_param_graph_is_plain_tensors() -> None:
    g = build_graph(NETS["mlp"][0]().state_dict())
    assert isinstance(g, ParamGraph)
    assert g.x.dtype == torch.float32 and g.edge_attr.dtype == torch.float32
    assert g.edge_index.dtype == torch.long
    assert int(g.edge_index.max()) < g.num_nodes


@pytest.mark.parametrize("name", sorted(NETS))
def test_weight_statistics_fixed_size_and_invariant(name: str) -> None:
    torch.manual_seed(7)
    net = NETS[name][0]().eval()
    perm = permuted_copy(name, net, seed=8)
    a, b = weight_statistics(net.state_dict()), weight_statistics(perm.state_dict())
    assert a.shape == (STATS_DIM,) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    other = weight_statistics(NETS[name][0]().state_dict())
    assert not torch.allclose(a, other)


def test_weight_statistics_values() -> None:
    sd = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.tensor([1.0, -1.0])}
    s = weight_statistics(sd)
    # Slot 0 holds the only matrix: log1p(12), mean 5.5, std, mean |w|, quantiles 0..11.
    assert s[0] == pytest.approx(torch.tensor(12.0).log1p().item())
    assert s[1] == pytest.approx(5.5) and s[3] == pytest.approx(5.5)
    assert s[2] == pytest.approx(torch.arange(12.0).std(unbiased=False).item(), rel=1e-5)
    assert s[4] == 0.0 and s[10] == 11.0
    assert torch.all(s[11:44] == 0)  # empty slots 1-3
    assert s[44] == pytest.approx(torch.tensor(2.0).log1p().item()) and s[45] == 0.0


def test_stats_featurizer_contract() -> None:
    torch.manual_seed(9)
    feat = StatsFeaturizer(out_dim=8)
    stats = [weight_statistics(NETS[n][0]().state_dict()) for n in NETS]
    out = feat(stats)
    assert out.shape == (len(NETS), 8)
    torch.testing.assert_close(out, feat(torch.stack(stats)))
    out.sum().backward()
    assert all(p.grad is not None for p in feat.parameters())
    assert feat([]).shape == (0, 8)
