"""Every normalisation handler: the module types it claims, and its folded scale and shift."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from optuna_fms.metanet import EDGE_FEATURES
from optuna_fms.metanet import EDGE_TYPES
from optuna_fms.metanet import build_graph
from optuna_fms.metanet import describe_module
from optuna_fms.metanet.layers import LAYERS
from optuna_fms.metanet.layers import BatchNorm
from optuna_fms.metanet.layers import GroupNorm
from optuna_fms.metanet.layers import InstanceNorm
from optuna_fms.metanet.layers import LayerNorm
from optuna_fms.metanet.layers import Normalization
from optuna_fms.metanet.layers import RMSNorm


_NORMS: dict[str, tuple[type[Normalization], Callable[[], torch.nn.Module]]] = {
    "BatchNorm1d": (BatchNorm, lambda: torch.nn.BatchNorm1d(4)),
    "BatchNorm2d": (BatchNorm, lambda: torch.nn.BatchNorm2d(4)),
    "BatchNorm3d": (BatchNorm, lambda: torch.nn.BatchNorm3d(4, affine=False)),
    "SyncBatchNorm": (BatchNorm, lambda: torch.nn.SyncBatchNorm(4)),
    "InstanceNorm1d": (InstanceNorm, lambda: torch.nn.InstanceNorm1d(4, affine=True)),
    "InstanceNorm2d": (
        InstanceNorm,
        lambda: torch.nn.InstanceNorm2d(4, affine=True, track_running_stats=True),
    ),
    "InstanceNorm3d": (InstanceNorm, lambda: torch.nn.InstanceNorm3d(4, affine=True)),
    "LayerNorm": (LayerNorm, lambda: torch.nn.LayerNorm(4)),
    "GroupNorm": (GroupNorm, lambda: torch.nn.GroupNorm(2, 4)),
    "RMSNorm": (RMSNorm, lambda: torch.nn.RMSNorm(4)),
}


def _randomised(norm: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, t in [*norm.named_parameters(), *norm.named_buffers()]:
            if name == "running_var":
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.normal_()
    return norm.eval()


@pytest.mark.parametrize("name", sorted(_NORMS))
def test_norm_is_a_scale_and_a_shift_with_statistics_folded_in(name: str) -> None:
    handler, factory = _NORMS[name]
    assert type(LAYERS.get(name)) is handler
    torch.manual_seed(0)
    norm = _randomised(factory())
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), norm)
    g = build_graph(net.state_dict(), describe_module(net))
    etype = g.edge_attr[:, 3 : 3 + len(EDGE_TYPES)].argmax(1)
    values = g.edge_attr[:, EDGE_FEATURES.index("value")]
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    mean = getattr(norm, "running_mean", None)
    var = getattr(norm, "running_var", None)
    scale = weight.detach() if weight is not None else None
    shift = bias.detach() if bias is not None else None
    if mean is not None and var is not None:
        inv = torch.rsqrt(var + getattr(norm, "eps", 1e-5))
        scale = inv if scale is None else scale * inv
        shift = (shift if shift is not None else 0.0) - mean * scale
    for kind, expected in (("gamma", scale), ("beta", shift)):
        drawn = values[etype == EDGE_TYPES.index(kind)]
        if expected is None:
            assert drawn.numel() == 0
        else:
            torch.testing.assert_close(drawn, expected, rtol=0, atol=0)
