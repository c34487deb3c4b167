"""The layer registry as an extension point: a new module type is one handler in one place."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from optuna_fms.metanet import EDGE_FEATURES
from optuna_fms.metanet import EDGE_TYPES
from optuna_fms.metanet import NODE_TYPES
from optuna_fms.metanet import ParamGraph
from optuna_fms.metanet import PretrainedMetanetwork
from optuna_fms.metanet import UnsupportedArchitectureError
from optuna_fms.metanet import build_graph
from optuna_fms.metanet import describe_module
from optuna_fms.metanet.layers import LAYERS
from optuna_fms.metanet.layers import GraphWriter
from optuna_fms.metanet.layers import Layer
from optuna_fms.metanet.layers import Linear
from optuna_fms.metanet.layers import ModuleCall
from optuna_fms.metanet.layers import Neurons


class _PReLU(Layer):
    """Test-local handler: ``torch.nn.PReLU`` slopes as a learned scale of the neurons."""

    modules = ("PReLU",)
    edge_type = "gamma"

    def build(self, graph: GraphWriter, call: ModuleCall) -> Neurons:
        slope = graph.weight(call)
        src = graph.materialise(call.src, slope.numel())
        assert src.ids is not None
        layer = graph.next_layer()
        node = graph.add_nodes(1, layer, "gamma")
        graph.add_edges(node.expand(src.size), src.ids, slope, layer, self.edge_type)
        return src


class _PReLUOwnType(_PReLU):
    edge_types = ("prelu",)
    edge_type = "prelu"


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.PReLU(4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.uniform_(0.1, 0.4)
    return net


def _edge_type(g: ParamGraph, edge_types: tuple[str, ...]) -> torch.Tensor:
    return g.edge_attr[:, 3 : 3 + len(edge_types)].argmax(1)


def test_an_unsupported_layer_is_refused_with_its_name_and_type() -> None:
    net = _net()
    with pytest.raises(
        UnsupportedArchitectureError,
        match=r"module '1' of type PReLU \(parameters \['weight'\]\) cannot be expressed",
    ):
        build_graph(net.state_dict(), describe_module(net))


def test_a_layer_registered_in_one_place_is_built_into_the_graph() -> None:
    net = _net()
    layers = LAYERS.with_layers(_PReLU())
    g = build_graph(net.state_dict(), describe_module(net), layers=layers)
    # 3 inputs, 4 + 2 neurons, 2 bias nodes, 1 gamma node; 12 + 4, 4 slopes, 8 + 2 edges.
    assert (g.num_nodes, g.num_edges, g.num_layers) == (12, 30, 3)
    gamma = _edge_type(g, EDGE_TYPES) == EDGE_TYPES.index("gamma")
    assert torch.equal(g.edge_attr[gamma, 0], net[1].weight.detach())
    assert torch.all(g.edge_attr[gamma, EDGE_FEATURES.index("layer")] == 2)
    # The slopes scale the first layer's neurons, which the second layer reads.
    first = g.edge_index[1, g.edge_attr[:, EDGE_FEATURES.index("layer")] == 1]
    assert set(g.edge_index[1, gamma].tolist()) <= set(first.tolist())
    node_type = g.x[:, 3 : 3 + len(NODE_TYPES)].argmax(1)
    assert int((node_type == NODE_TYPES.index("gamma")).sum()) == 1
    # Drawn with existing edge types: same features, so the shipped metanetwork reads it.
    assert layers.edge_types == EDGE_TYPES and g.edge_attr.shape[1] == len(EDGE_FEATURES)
    assert PretrainedMetanetwork.load().predict([g]).shape == (1, 2)
    # Nothing global changed: the default table still refuses PReLU.
    assert "PReLU" in layers and "PReLU" not in LAYERS
    with pytest.raises(UnsupportedArchitectureError, match="PReLU"):
        build_graph(net.state_dict(), describe_module(net))


def test_a_layer_with_a_new_edge_type_adds_the_last_type_column() -> None:
    net = _net()
    layers = LAYERS.with_layers(_PReLUOwnType())
    assert layers.edge_types == (*EDGE_TYPES, "prelu")
    assert layers.edge_features[: 3 + len(EDGE_TYPES)] == EDGE_FEATURES[: 3 + len(EDGE_TYPES)]
    assert layers.edge_features[3 + len(EDGE_TYPES)] == "type_prelu"
    g = build_graph(net.state_dict(), describe_module(net), layers=layers)
    assert g.edge_attr.shape[1] == len(EDGE_FEATURES) + 1
    prelu = _edge_type(g, layers.edge_types) == len(EDGE_TYPES)
    assert torch.equal(g.edge_attr[prelu, 0], net[1].weight.detach())
    # Every other edge keeps its features, with a zero in the new column.
    plain = build_graph(
        net.state_dict(), describe_module(net), layers=LAYERS.with_layers(_PReLU())
    )
    n = 3 + len(EDGE_TYPES)
    assert torch.equal(g.edge_attr[~prelu, :n], plain.edge_attr[~prelu, :n])
    assert torch.all(g.edge_attr[~prelu, n] == 0)
    assert torch.equal(g.edge_attr[:, n + 1 :], plain.edge_attr[:, n:])


def test_an_undeclared_edge_type_is_refused() -> None:
    class Undeclared(_PReLU):
        edge_type = "prelu"

    net = _net()
    with pytest.raises(ValueError, match="edge type 'prelu' is not declared"):
        build_graph(
            net.state_dict(), describe_module(net), layers=LAYERS.with_layers(Undeclared())
        )


def test_two_handlers_for_one_module_type_are_refused() -> None:
    class OtherLinear(Linear):
        pass

    with pytest.raises(ValueError, match="'Linear' is claimed by both Linear"):
        LAYERS.with_layers(OtherLinear())


def test_without_a_structure_a_registered_handler_recognises_its_tensors() -> None:
    class Temperature(Layer):
        """A learned scalar multiplying every neuron (a 0-D ``weight``)."""

        def build(self, graph: GraphWriter, call: ModuleCall) -> Neurons:
            t = graph.weight(call)
            assert call.src.ids is not None
            layer = graph.next_layer()
            node = graph.add_nodes(1, layer, "gamma")
            size = call.src.size
            graph.add_edges(node.expand(size), call.src.ids, t.expand(size), layer, "gamma")
            return call.src

        def infer(self, tensors: Mapping[str, torch.Tensor]) -> bool:
            return set(tensors) == {"weight"} and tensors["weight"].dim() == 0

    sd = {"fc.weight": torch.randn(4, 3), "temp.weight": torch.tensor(0.5)}
    with pytest.raises(UnsupportedArchitectureError, match=r"'temp.weight' with shape \[\]"):
        build_graph(sd)
    g = build_graph(sd, layers=LAYERS.with_layers(Temperature()))
    assert (g.num_nodes, g.num_edges) == (3 + 4 + 1, 12 + 4)
    assert torch.all(g.edge_attr[12:, 0] == 0.5)


def test_the_edge_type_columns_are_the_shipped_metanetwork_format() -> None:
    # A saved metanetwork reads the one-hot columns by position: this order must not change.
    # Types added later go last (lora_a, lora_b: a file written before them reads them through
    # zero columns, metanet/_gmn.py FIRST_EDGE_FEATURES).
    assert EDGE_TYPES == (
        "linear",
        "conv",
        "embedding",
        "bias",
        "gamma",
        "beta",
        "residual",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_out",
        "lora_a",
        "lora_b",
    )
    assert NODE_TYPES == ("input", "hidden", "output", "bias", "gamma", "beta")
