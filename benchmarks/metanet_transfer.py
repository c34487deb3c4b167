"""How well a pretrained metanetwork reads the checkpoints of a hub it was not trained on.

For the checkpoints of sampled runs after a few epochs (full fine-tuning: the whole network;
LoRA: the adapter alone, read as its canonical update), the metanetwork's first prediction
(``run_quantile``: where the run ends among the hub's final scores) is ranked against the
truth by Kendall's tau, beside the simplest predictor from the same data: the run's own score
at that epoch. Seeds choose the sampled runs; mean and standard error over seeds.

    python benchmarks/metanet_transfer.py --hub finetune --seeds 5
    python benchmarks/metanet_transfer.py --hub finetune --metanetwork none   # untrained

The untrained metanetwork (``--metanetwork none``) has no prediction to rank; its row reports
the best of its embedding's 16 coordinates chosen with the truth known (an upper bound).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import kendalltau
from scipy.stats import rankdata
import torch

from optuna_fms.bench._cli import resolve_hub
from optuna_fms.bench._hub import Hub
from optuna_fms.metanet import GraphMetanetwork
from optuna_fms.metanet import PretrainedMetanetwork
from optuna_fms.metanet import build_graph
from optuna_fms.metanet._pretrained import MAX_EDGES_PER_LAYER


def _quantiles(values: np.ndarray) -> np.ndarray:
    return (rankdata(values) - 0.5) / len(values) - 0.5


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    return float(kendalltau(a, b).statistic) if len(a) > 2 else float("nan")


def _predict(
    net: PretrainedMetanetwork | GraphMetanetwork, graphs: list, truth: np.ndarray
) -> np.ndarray:
    with torch.no_grad():
        if isinstance(net, PretrainedMetanetwork):
            return np.concatenate(
                [net.predict(graphs[i : i + 64])[:, 0].numpy() for i in range(0, len(graphs), 64)]
            )
        emb = np.concatenate([net(graphs[i : i + 64]).numpy() for i in range(0, len(graphs), 64)])
    # Untrained: the coordinate that ranks best with the truth known (an upper bound).
    taus = [_tau(emb[:, j], truth) for j in range(emb.shape[1])]
    best = int(np.nanargmax(np.abs(taus)))
    return emb[:, best] * np.sign(taus[best])


def evaluate(net, hub: Hub, n_runs: int, epochs: tuple[int, ...], seed: int) -> dict[str, float]:
    q = _quantiles(hub.final_scores())
    rng = np.random.default_rng(seed)
    runs = np.sort(rng.choice(hub.n_configs, size=min(n_runs, hub.n_configs), replace=False))
    out: dict[str, float] = {}
    for kind in ("full", "lora"):
        chosen = [c for c in runs if (hub.adapter(int(c)) is None) == (kind == "full")]
        if len(chosen) < 3:
            continue  # a hub without adapters (or without full fine-tuning)
        for e in epochs:
            e = min(e, hub.n_epochs - 1)
            graphs = [
                build_graph(
                    hub.checkpoint(int(c), e),
                    hub.checkpoint_structure(int(c)),
                    max_edges_per_layer=MAX_EDGES_PER_LAYER,
                )
                for c in chosen
            ]
            truth = q[chosen]
            out[f"{kind} @{e + 1} metanetwork"] = _tau(_predict(net, graphs, truth), truth)
            out[f"{kind} @{e + 1} score then"] = _tau(hub.scores[chosen, e], truth)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hub", default="finetune")
    p.add_argument(
        "--metanetwork", default="pretrained", help="'pretrained' (shipped), a file, or 'none'"
    )
    p.add_argument("--runs", type=int, default=120)
    p.add_argument("--epochs", default="0,2,9", help="0-based epochs whose checkpoints are read")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    hub = Hub.load(resolve_hub(args.hub))
    if args.metanetwork == "none":
        torch.manual_seed(0)
        net = GraphMetanetwork()
        net.eval()
        trained_on = "untrained (best coordinate, hindsight)"
    else:
        net = PretrainedMetanetwork.load(
            None if args.metanetwork == "pretrained" else args.metanetwork
        )
        trained_on = ", ".join(net.info.get("hubs", [])) or "?"
    if args.hub in trained_on.split(", "):
        raise SystemExit(f"the metanetwork was trained on {args.hub}: not a transfer")
    epochs = tuple(int(e) for e in args.epochs.split(","))
    t0 = time.perf_counter()
    rows = [evaluate(net, hub, args.runs, epochs, s) for s in range(args.seeds)]
    print(
        f"hub {hub.name}, metanetwork trained on: {trained_on}; "
        f"{args.seeds} seeds x {args.runs} runs; {time.perf_counter() - t0:.0f} s"
    )
    print()
    print("| checkpoints | predictor | Kendall's tau with the final quantile |")
    print("|---|---|---|")
    for key in rows[0]:
        v = np.array([r[key] for r in rows])
        kind, rest = key.split(" ", 1)
        epoch, predictor = rest.split(" ", 1)
        print(
            f"| {kind} {epoch} | {predictor} | {np.nanmean(v):.3f} "
            f"± {np.nanstd(v, ddof=1) / np.sqrt(len(v)):.3f} |"
        )


if __name__ == "__main__":
    main()
