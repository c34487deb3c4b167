"""The small networks trained in the benchmark hubs.

The image networks map a batch of 8x8 grey images ``[B, 1, 8, 8]`` to logits (10 by
default); the :class:`MLP` also reads feature vectors ``[B, n_in]`` (the tabular and
modular-arithmetic hubs). All are traceable by :mod:`torch.fx` (no data-dependent control
flow) so that :func:`optuna_fms.metanet.describe_module` can describe them. A network is
identified by an architecture name and a JSON-serialisable ``spec`` of constructor arguments,
both stored in the hub index, so that :func:`build_module` can rebuild it when a hub is read.
An architecture name is a class key (``"mlp"``), optionally followed by ``/`` and a label
(``"mlp/d2-w64"``) where one hub holds several specs of one class.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


N_CLASSES = 10


class _ConvTrunk(nn.Module):
    """Three 3x3 convolutions (the last two with stride 2), each with a ReLU, and global average
    pooling: the feature extractor :class:`SimpleCNN` and :class:`ConvMLP` share."""

    def __init__(self, channels: tuple[int, int, int] | list[int]) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features, ``[batch, channels[2]]``."""
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.act(self.conv3(x))
        return self.flatten(self.pool(x))


class SimpleCNN(_ConvTrunk):
    """Three 3x3 convolutions (the last two with stride 2), global average pooling, a linear head.

    The shape of the CNN zoos of Unterthiner et al. (2020) used by the FMS paper, sized for
    8x8 inputs.
    """

    def __init__(
        self, channels: tuple[int, int, int] | list[int] = (8, 16, 16), n_classes: int = N_CLASSES
    ) -> None:
        super().__init__(channels)
        self.fc = nn.Linear(channels[2], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class ConvMLP(_ConvTrunk):
    """:class:`SimpleCNN`'s convolutions and pooling, then a hidden linear layer and the head.

    The CNN of the fine-tuning hub: its linear layers (``hidden``, ``fc``) are where a LoRA
    adapter goes (LoRA on convolutions is not read by the metanetwork).
    """

    def __init__(
        self,
        channels: tuple[int, int, int] | list[int] = (8, 16, 16),
        hidden: int = 32,
        n_classes: int = N_CLASSES,
    ) -> None:
        super().__init__(channels)
        self.hidden = nn.Linear(channels[2], hidden)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.hidden(self.features(x))))


class Square(nn.Module):
    """Elementwise ``x * x`` (the quadratic activation under which modular addition groks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "square": Square}


class MLP(nn.Module):
    """Flatten, then fully connected layers with an activation (and dropout after each).

    ``dropout`` layers are built with ``p=0``; training sets their rate (a training
    hyper-parameter, inactive in evaluation), so networks that differ only in dropout share an
    architecture.
    """

    def __init__(
        self,
        hidden: tuple[int, ...] | list[int] = (64, 64),
        n_classes: int = N_CLASSES,
        n_in: int = 64,
        activation: str = "relu",
        dropout: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            if dropout:
                layers.append(nn.Dropout(0.0))
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU()
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    """A conv stem with BatchNorm, one residual block per stage, average pooling, linear head."""

    def __init__(
        self, widths: tuple[int, ...] | list[int] = (16, 32), n_classes: int = N_CLASSES
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks = []
        c = widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(c, w, stride=1 if i == 0 else 2))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


class PatchTransformer(nn.Module):
    """A small vision transformer: 2x2 patches, pre-norm encoder layers, mean pooling.

    The encoder layers are standard :class:`torch.nn.TransformerEncoderLayer` modules, whose
    attention and feed-forward projections are linear layers.
    """

    def __init__(
        self,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp: int = 64,
        n_classes: int = N_CLASSES,
    ) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)  # 8x8 -> 4x4 = 16 tokens
        self.pos = nn.Parameter(torch.zeros(1, 16, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, heads, mlp, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for layer in self.layers:
            tokens = layer(tokens)
        return self.fc(self.norm(tokens.mean(dim=1)))


class AttentionBlock(nn.Module):
    """A pre-norm transformer block written with plain linear layers.

    Self-attention with separate ``query``, ``key``, ``value`` and ``out`` projections, then a
    ReLU feed-forward layer (``fc1``, ``fc2``), each with a residual connection. Unlike
    :class:`torch.nn.TransformerEncoderLayer`, whose evaluation fast path reads the projection
    weights directly, every projection is called as a module, so a LoRA adapter on it acts.
    """

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(mlp, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        q, k, v = self._split(self.query(h)), self._split(self.key(h)), self._split(self.value(h))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        attended = (weights @ v).transpose(1, 2).flatten(2)
        x = x + self.out(attended)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class LinearViT(nn.Module):
    """A small vision transformer of :class:`AttentionBlock` s: 2x2 patches (16 tokens),
    learned positions, mean pooling, a linear head (the transformer of the fine-tuning hub)."""

    def __init__(
        self,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp: int = 64,
        n_classes: int = N_CLASSES,
    ) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.pos = nn.Parameter(torch.zeros(1, 16, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*(AttentionBlock(dim, heads, mlp) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.fc(self.norm(self.blocks(tokens).mean(dim=1)))


_ARCHS: dict[str, type[nn.Module]] = {
    "simple_cnn": SimpleCNN,
    "mlp": MLP,
    "resnet": ResNet,
    "transformer": PatchTransformer,
    "conv_mlp": ConvMLP,
    "linear_vit": LinearViT,
}


def build_module(arch: str, spec: dict[str, Any] | None = None) -> nn.Module:
    """A freshly initialised network of architecture ``arch`` (see the module docstring).

    Parameters
    ----------
    arch:
        ``"simple_cnn"``, ``"mlp"``, ``"resnet"``, ``"transformer"``, ``"conv_mlp"`` or
        ``"linear_vit"``, optionally followed by ``/`` and a label (``"mlp/d2-w64"``) that
        tells specs of one class apart in a hub.
    spec:
        Keyword arguments of the constructor (widths, depth...).
    """
    try:
        cls = _ARCHS[arch.split("/", 1)[0]]
    except KeyError:
        raise ValueError(
            f"Unknown architecture {arch!r}; expected one of {sorted(_ARCHS)}."
        ) from None
    return cls(**(spec or {}))


def set_dropout(module: nn.Module, rate: float) -> None:
    """Set the rate of every :class:`torch.nn.Dropout` in ``module`` (a training setting)."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = float(rate)


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
