"""Pretraining the graph metanetwork on the hubs' checkpoints (``optuna-fms pretrain-metanet``).

Every example is one checkpoint of a hub: a start (the weights every configuration of a zoo
member or pretrained architecture fine-tunes from) or the weights after some epoch of a
fine-tuning run. Its targets (:data:`optuna_fms.metanet.TARGETS`) say how the runs it belongs
to end, as centred quantiles of the hub's final scores, so that targets of hubs with different
score ranges mean the same. The metanetwork learns, across hubs, which weights fine-tune well.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import json
from pathlib import Path
import platform
import shlex
import sys
import time
from typing import Any

import numpy as np
from scipy.stats import kendalltau
from scipy.stats import rankdata
import torch

from optuna_fms.bench._hub import Hub
from optuna_fms.metanet import PretrainedMetanetwork
from optuna_fms.metanet import build_graph
from optuna_fms.metanet._pretrained import MAX_EDGES_PER_LAYER
from optuna_fms.metanet._pretrained import reference_network


@dataclass
class _Examples:
    """Checkpoint graphs of one hub with their targets; ``is_start`` marks start weights."""

    hub: str
    graphs: list[Any]
    targets: np.ndarray  # (n, 2)
    is_start: np.ndarray  # (n,) bool


def _graph(state: dict[str, torch.Tensor], structure: dict[str, Any] | None) -> Any:
    return build_graph(state, structure, max_edges_per_layer=MAX_EDGES_PER_LAYER)


def _quantiles(values: np.ndarray) -> np.ndarray:
    """Centred quantile of each value among ``values`` (ties share their mean rank)."""
    return (rankdata(values) - 0.5) / len(values) - 0.5


def _hub_examples(hub: Hub, n_runs: int, epochs: list[int], rng: np.random.Generator) -> _Examples:
    q = _quantiles(hub.final_scores())
    start_of = np.array([hub.start_key(c) for c in range(hub.n_configs)])
    first: dict[str, int] = {}
    for c, key in enumerate(start_of):
        first.setdefault(str(key), c)
    run_mean, top = {}, {}
    for key in first:
        qs = np.sort(q[start_of == key])[::-1]
        run_mean[key] = float(qs.mean())
        top[key] = float(qs[: max(1, len(qs) // 4)].mean())
    graphs, targets, is_start = [], [], []
    for key, c in first.items():
        graphs.append(_graph(hub.start_weights(c), hub.structure(c)))
        targets.append((run_mean[key], top[key]))
        is_start.append(True)
    runs = rng.choice(hub.n_configs, size=min(n_runs, hub.n_configs), replace=False)
    for c in np.sort(runs):
        key = str(start_of[c])
        for e in epochs:
            e = min(e, hub.n_epochs - 1)
            graphs.append(_graph(hub.checkpoint(int(c), e), hub.checkpoint_structure(int(c))))
            targets.append((q[c], top[key]))
            is_start.append(False)
    return _Examples(hub.name, graphs, np.array(targets), np.array(is_start))


def _weights(examples: list[_Examples]) -> list[np.ndarray]:
    """Loss weights: every hub weighs the same, half on its starts and half on its runs."""
    out = []
    for ex in examples:
        w = np.where(ex.is_start, 0.5 / max(1, ex.is_start.sum()), 0.0)
        n_runs = (~ex.is_start).sum()
        w = w + np.where(~ex.is_start, 0.5 / max(1, n_runs), 0.0)
        out.append(w / w.sum() / len(examples))
    return out


def _evaluate(net: PretrainedMetanetwork, ex: _Examples) -> dict[str, float]:
    """Kendall's tau between predicted and true targets: over starts and over run checkpoints."""
    pred = np.concatenate(
        [net.predict(ex.graphs[i : i + 64]).numpy() for i in range(0, len(ex.graphs), 64)]
    )
    out: dict[str, float] = {}
    for name, mask in (("starts", ex.is_start), ("runs", ~ex.is_start)):
        if mask.sum() > 2:
            out[f"tau_{name}"] = float(kendalltau(pred[mask, 0], ex.targets[mask, 0]).statistic)
    return out


def pretrain_metanetwork(
    hubs: list[Hub],
    *,
    eval_hubs: list[Hub] = (),  # type: ignore[assignment]
    epochs: int = 60,
    n_runs: int = 200,
    checkpoint_epochs: tuple[int, ...] = (0, 4, 29),
    seed: int = 0,
    lr: float = 2e-3,
    batch_size: int = 32,
    log: Any = None,
) -> PretrainedMetanetwork:
    """Train a :class:`~optuna_fms.metanet.PretrainedMetanetwork` on the checkpoints of ``hubs``.

    Parameters
    ----------
    hubs:
        Hubs whose starts and run checkpoints are the training data.
    eval_hubs:
        Hubs only evaluated (Kendall's tau of the predictions), never trained on.
    epochs:
        Passes over the training examples (Adam, weight decay 1e-4).
    n_runs:
        Fine-tuning runs sampled per hub; each contributes its checkpoints after the
        ``checkpoint_epochs`` (0-based, clipped to the hub's length).
    seed:
        Initialisation, run sampling and example order.
    log:
        Optional ``str -> None`` for progress lines.

    Returns
    -------
    PretrainedMetanetwork
        In evaluation mode; ``info`` records the data, the settings, the time, the fit and
        evaluation taus and the recorded prediction of :func:`reference_network`.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from optuna_fms.bench import Hub, build_hub
    >>> hub = Hub.load(build_hub("tiny", Path(tempfile.mkdtemp()), workers=1, progress=False))
    >>> net = pretrain_metanetwork([hub], epochs=2, n_runs=4, checkpoint_epochs=(0, 5))
    >>> net.info["n_examples"], len(net.info["reference_prediction"])
    ({'tiny': 11}, 2)
    """
    t0 = time.perf_counter()
    say = log or (lambda s: None)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    train = [_hub_examples(h, n_runs, list(checkpoint_epochs), rng) for h in hubs]
    held = [_hub_examples(h, n_runs, list(checkpoint_epochs), rng) for h in eval_hubs]
    t_data = time.perf_counter() - t0
    say(f"graphs built in {t_data:.0f} s: " + ", ".join(f"{e.hub} {len(e.graphs)}" for e in train))
    graphs = [g for ex in train for g in ex.graphs]
    targets = torch.as_tensor(np.concatenate([ex.targets for ex in train]), dtype=torch.float32)
    weights = torch.as_tensor(np.concatenate(_weights(train)), dtype=torch.float32)
    net = PretrainedMetanetwork()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(graphs), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            pred = net([graphs[int(j)] for j in idx])
            w = weights[idx]
            loss = (w[:, None] * (pred - targets[idx]) ** 2).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * float(w.sum())
        sched.step()
        if epoch % 10 == 9 or epoch == epochs - 1:
            say(f"epoch {epoch + 1}/{epochs}: weighted mse {total / float(weights.sum()):.4f}")
    net.eval()
    ref = _graph(*reference_network())
    net.info = {
        "hubs": [h.name for h in hubs],
        "eval_hubs": [h.name for h in eval_hubs],
        "n_examples": {ex.hub: len(ex.graphs) for ex in train},
        "settings": {
            "epochs": epochs,
            "n_runs": n_runs,
            "checkpoint_epochs": list(checkpoint_epochs),
            "seed": seed,
            "lr": lr,
            "batch_size": batch_size,
        },
        "fit": {ex.hub: _evaluate(net, ex) for ex in train},
        "eval": {ex.hub: _evaluate(net, ex) for ex in held},
        "seconds": round(time.perf_counter() - t0, 1),
        "graph_seconds": round(t_data, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reference_prediction": net.predict([ref])[0].tolist(),
    }
    return net


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``optuna-fms pretrain-metanet``."""
    parser = argparse.ArgumentParser(
        prog="optuna-fms pretrain-metanet",
        description="Train the graph metanetwork to predict how checkpoints fine-tune, on the "
        "checkpoints of built hubs; writes a safetensors file for "
        "FMSSampler(metanetwork=...).",
    )
    parser.add_argument("--hubs", nargs="+", default=["zoo", "zoo-mnist", "arch"])
    parser.add_argument("--eval", nargs="*", default=[], help="hubs only evaluated")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--runs", type=int, default=200, help="runs sampled per hub")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    return parser


def main_pretrain(argv: list[str] | None = None) -> int:
    """``optuna-fms pretrain-metanet``: pretrain the metanetwork on built hubs."""
    from optuna_fms.bench._cli import resolve_hub

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    hubs = [Hub.load(resolve_hub(h)) for h in args.hubs]
    held = [Hub.load(resolve_hub(h)) for h in args.eval]
    net = pretrain_metanetwork(
        hubs,
        eval_hubs=held,
        epochs=args.epochs,
        n_runs=args.runs,
        seed=args.seed,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    net.info["command"] = "optuna-fms pretrain-metanet " + shlex.join(argv or sys.argv[2:])
    net.save(args.out)
    size = Path(args.out).stat().st_size
    summary = {k: net.info[k] for k in ("hubs", "eval_hubs", "n_examples", "fit", "eval")}
    json.dump({**summary, "seconds": net.info["seconds"], "bytes": size}, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0
