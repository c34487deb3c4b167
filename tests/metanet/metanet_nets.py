"""Tiny networks and their function-preserving hidden-neuron permutations, for metanet tests."""

from __future__ import annotations

from collections.abc import Callable

import torch


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(5, 7),
        torch.nn.ReLU(),
        torch.nn.Linear(7, 6),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 3),
    )


def cnn() -> torch.nn.Module:
    # Input [B, 2, 6, 6] -> conv 4x4x4 -> conv 3x4x4 -> pool 3x2x2 -> flatten 12 -> linear 5.
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 3, 3, padding=1),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(12, 5),
    )


class BasicBlock(torch.nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c_out)
        self.conv2 = torch.nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c_out)
        self.downsample: torch.nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(c_in, c_out, 1, stride, bias=False), torch.nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class ResNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.block1 = BasicBlock(4, 4)
        self.block2 = BasicBlock(4, 6, stride=2)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet() -> torch.nn.Module:
    net = ResNet()
    # Non-trivial BatchNorm statistics and affine parameters.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return net


class Transformer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(3, 8)
        layer = torch.nn.TransformerEncoderLayer(
            8, 2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.inp(x)).mean(1))


def transformer() -> torch.nn.Module:
    net = Transformer()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    return net


class ViT(torch.nn.Module):
    """Patches, a class token, a learned positional embedding, one pre-norm encoder layer and a
    learned output scale: parameters read directly in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(1, 8, 2, stride=2)  # 4x4 -> 4 tokens
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.pos = torch.nn.Parameter(torch.randn(1, 5, 8))
        self.scale = torch.nn.Parameter(torch.rand(8) + 0.5)
        self.layer = torch.nn.TransformerEncoderLayer(
            8, 2, dim_feedforward=16, dropout=0.0, batch_first=True, norm_first=True
        )
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.layer(t)[:, 0] * self.scale)


def vit() -> torch.nn.Module:
    return ViT()


def sample_input(name: str) -> torch.Tensor:
    shapes = {
        "mlp": (4, 5),
        "cnn": (4, 2, 6, 6),
        "resnet": (4, 3, 8, 8),
        "transformer": (4, 5, 3),
        "vit": (4, 1, 4, 4),
    }
    return torch.randn(*shapes[name])


# A permutation acts on (state-dict key, dim, block): index j of the dim is moved in blocks of
# ``block`` entries (block > 1 for a linear layer after a flatten, or for q/k/v inside in_proj).
_Target = tuple[str, int]


def _permute(sd: dict[str, torch.Tensor], perm: torch.Tensor, targets: list[_Target]) -> None:
    for key, dim in targets:
        t = sd[key]
        size = t.shape[dim]
        block = size // perm.numel()
        # Entry j*block + r moves to perm-position: out[i*block + r] = t[perm[i]*block + r].
        idx = (perm[:, None] * block + torch.arange(block)[None, :]).reshape(-1)
        sd[key] = t.index_select(dim, idx)


def _randperm(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation that is not the identity."""
    while True:
        p = torch.randperm(n, generator=generator)
        if not torch.equal(p, torch.arange(n)):
            return p


def permute_mlp(sd: dict[str, torch.Tensor], g: torch.Generator) -> None:
    p = _randperm(7, generator=g)
    _permute(sd, p, [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)])
    p = _randperm(6, generator=g)
    _permute(sd, p, [("2.weight", 0), ("2.bias", 0), ("4.weight", 1)])


def permute_cnn(sd: dict[str, torch.Tensor], g: torch.Generator) -> None:
    p = _randperm(4, generator=g)
    _permute(sd, p, [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)])
    p = _randperm(3, generator=g)
    _permute(sd, p, [("2.weight", 0), ("2.bias", 0), ("5.weight", 1)])  # 4 columns/channel


def _bn(prefix: str) -> list[_Target]:
    return [(f"{prefix}.{k}", 0) for k in ("weight", "bias", "running_mean", "running_var")]


def permute_resnet(sd: dict[str, torch.Tensor], g: torch.Generator) -> None:
    # Residual stream of width 4: stem, block1's output, block2's inputs.
    p = _randperm(4, generator=g)
    _permute(
        sd,
        p,
        [("stem.weight", 0), *_bn("bn"), ("block1.conv1.weight", 1)]
        + [("block1.conv2.weight", 0), *_bn("block1.bn2")]
        + [("block2.conv1.weight", 1), ("block2.downsample.0.weight", 1)],
    )
    p = _randperm(4, generator=g)  # inside block1
    _permute(sd, p, [("block1.conv1.weight", 0), *_bn("block1.bn1"), ("block1.conv2.weight", 1)])
    p = _randperm(6, generator=g)  # inside block2
    _permute(sd, p, [("block2.conv1.weight", 0), *_bn("block2.bn1"), ("block2.conv2.weight", 1)])
    p = _randperm(6, generator=g)  # block2's output stream
    _permute(
        sd,
        p,
        [("block2.conv2.weight", 0), *_bn("block2.bn2")]
        + [("block2.downsample.0.weight", 0), *_bn("block2.downsample.1"), ("fc.weight", 1)],
    )


def _permute_rows(sd: dict[str, torch.Tensor], key: str, rows: torch.Tensor) -> None:
    sd[key] = sd[key][rows]


def permute_transformer(sd: dict[str, torch.Tensor], g: torch.Generator) -> None:
    stream: list[_Target] = [("inp.weight", 0), ("inp.bias", 0), ("head.weight", 1)]
    _permute_encoder(sd, g, ["encoder.layers.0", "encoder.layers.1"], stream)


def permute_vit(sd: dict[str, torch.Tensor], g: torch.Generator) -> None:
    stream: list[_Target] = [("patch.weight", 0), ("patch.bias", 0), ("cls", 2), ("pos", 2)]
    stream += [("scale", 0), ("head.weight", 1)]
    _permute_encoder(sd, g, ["layer"], stream)


def _permute_encoder(
    sd: dict[str, torch.Tensor], g: torch.Generator, layers: list[str], stream: list[_Target]
) -> None:
    e, heads, hd = 8, 2, 4
    # Residual stream (d_model): every tensor reading or writing it.
    p = _randperm(e, generator=g)
    for pre in layers:
        stream += [
            (f"{pre}.self_attn.in_proj_weight", 1),
            (f"{pre}.self_attn.out_proj.weight", 0),
            (f"{pre}.self_attn.out_proj.bias", 0),
            (f"{pre}.linear1.weight", 1),
            (f"{pre}.linear2.weight", 0),
            (f"{pre}.linear2.bias", 0),
        ] + [(f"{pre}.norm{j}.{k}", 0) for j in (1, 2) for k in ("weight", "bias")]
    _permute(sd, p, stream)
    for pre in layers:
        # Feed-forward hidden neurons.
        p = _randperm(16, generator=g)
        _permute(
            sd, p, [(f"{pre}.linear1.weight", 0), (f"{pre}.linear1.bias", 0),
                    (f"{pre}.linear2.weight", 1)]
        )  # fmt: skip
        # Heads, and dims inside each head (the same for q and k; another one for v).
        head_perm = _randperm(heads, generator=g)
        qk = torch.cat([_randperm(hd, generator=g) + h * hd for h in range(heads)])
        v = torch.cat([_randperm(hd, generator=g) + h * hd for h in range(heads)])
        qk = torch.cat([qk[h * hd : (h + 1) * hd] for h in head_perm.tolist()])
        v = torch.cat([v[h * hd : (h + 1) * hd] for h in head_perm.tolist()])
        rows = torch.cat([qk, qk + e, v + 2 * e])
        _permute_rows(sd, f"{pre}.self_attn.in_proj_weight", rows)
        _permute_rows(sd, f"{pre}.self_attn.in_proj_bias", rows)
        w = sd[f"{pre}.self_attn.out_proj.weight"]
        sd[f"{pre}.self_attn.out_proj.weight"] = w[:, v]


NETS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[..., None]]] = {
    "mlp": (mlp, permute_mlp),
    "cnn": (cnn, permute_cnn),
    "resnet": (resnet, permute_resnet),
    "transformer": (transformer, permute_transformer),
    "vit": (vit, permute_vit),
}


def permuted_copy(name: str, net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of ``net`` with its hidden neurons permuted (same function)."""
    factory, permute = NETS[name]
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    permute(sd, torch.Generator().manual_seed(seed))
    other = factory()
    other.load_state_dict(sd)
    return other.eval()
