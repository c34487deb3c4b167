"""Benchmark checkpoint featurisation (parameter graph + GMN, and weight statistics) on CPU.

Prints a markdown table: for MLP- and CNN-shaped state dicts of 10k to 100M parameters, the
time to build the parameter graph (default per-layer edge bound), one GMN forward pass
(``GraphMetanetwork()``, hidden 32, 4 layers, including the PyG conversion), the weight
statistics, and the peak extra resident memory (RSS) during featurisation. A second table
gives the cost of one GMN training step (forward + backward) on a batch of 32 small graphs,
for several edge bounds, which is what a surrogate refit pays per epoch.

Each size runs in a fresh subprocess. Memory is the peak of the process RSS, sampled every
millisecond by a background thread while featurising, minus the RSS just before (the state
dict itself is excluded); torch's CPU allocations are not seen by ``tracemalloc``, so RSS is
used.

Usage::

    python benchmarks/featurize.py                    # 10k .. 100M
    python benchmarks/featurize.py --max-params 1e6   # quick run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time

import torch


SIZES = (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _PeakRSS:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __enter__(self) -> _PeakRSS:
        self.start = _rss()
        self.peak = self.start
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _state_dict(shape: str, n: int) -> dict[str, torch.Tensor]:
    """Four layers of equal width holding about ``n`` parameters in all."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    if shape == "mlp":
        w = max(2, round(math.sqrt(n / 4)))
        for i in range(4):
            sd[f"{i}.weight"] = torch.randn(w, w, generator=g) / math.sqrt(w)
            sd[f"{i}.bias"] = torch.randn(w, generator=g) * 0.01
    else:
        c = max(2, round(math.sqrt(n / 36)))
        for i in range(4):
            sd[f"{i}.weight"] = torch.randn(c, c, 3, 3, generator=g) / math.sqrt(9 * c)
            sd[f"{i}.bias"] = torch.randn(c, generator=g) * 0.01
    return sd


def _child(shape: str, n: int, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    from optuna_fms.metanet import GraphMetanetwork
    from optuna_fms.metanet import build_graph
    from optuna_fms.metanet import weight_statistics

    torch.manual_seed(0)
    gmn = GraphMetanetwork().eval()
    warm = build_graph(_state_dict(shape, 1000))  # import and first-call costs out of the way
    with torch.no_grad():
        gmn([warm])
    sd = _state_dict(shape, n)
    params = sum(t.numel() for t in sd.values())
    with _PeakRSS() as mem:
        t0 = time.perf_counter()
        graph = build_graph(sd)
        t1 = time.perf_counter()
        with torch.no_grad():
            gmn([graph])
        t2 = time.perf_counter()
        weight_statistics(sd)
        t3 = time.perf_counter()
    return {
        "params": params,
        "nodes": graph.num_nodes,
        "edges": graph.num_edges,
        "build_s": t1 - t0,
        "gmn_s": t2 - t1,
        "stats_s": t3 - t2,
        "peak_mb": (mem.peak - mem.start) / 2**20,
    }


def _train_child(threads: int) -> dict[str, float]:
    """Forward + backward of a batch of 32 digits-MLP (64-128-128-10) graphs, per bound."""
    torch.set_num_threads(threads)
    from optuna_fms.metanet import GraphMetanetwork
    from optuna_fms.metanet import build_graph

    torch.manual_seed(0)
    nets = [
        torch.nn.Sequential(
            torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
            torch.nn.ReLU(), torch.nn.Linear(128, 10),
        )
        for _ in range(32)
    ]  # fmt: skip
    out: dict[str, float] = {}
    for bound in (256, 1024, None):
        graphs = [build_graph(n.state_dict(), max_edges_per_layer=bound) for n in nets]
        gmn = GraphMetanetwork()
        gmn(graphs).sum().backward()  # conversion and batching happen once, here
        t0 = time.perf_counter()
        for _ in range(5):
            gmn.zero_grad()
            gmn(graphs).sum().backward()
        out[str(bound)] = (time.perf_counter() - t0) / 5
        out[f"{bound}_edges"] = graphs[0].num_edges
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-params", type=float, default=1e8)
    parser.add_argument("--shapes", default="mlp,cnn")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--train-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_child:
        print(json.dumps(_train_child(args.threads)))
        return
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.threads)))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU")
    print()
    print(
        "| shape | params | nodes | edges kept | graph build (s) | GMN forward (s) "
        "| weight stats (s) | peak extra RSS (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for shape in args.shapes.split(","):
        for n in SIZES:
            if n > args.max_params:
                break
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    shape,
                    str(n),
                    "--threads",
                    str(args.threads),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"| {shape} | {r['params']:,} | {r['nodes']:,} | {r['edges']:,} "
                f"| {r['build_s']:.3f} | {r['gmn_s']:.3f} | {r['stats_s']:.3f} "
                f"| {r['peak_mb']:.0f} |",
                flush=True,
            )
    out = subprocess.run(
        [sys.executable, __file__, "--train-child", "--threads", str(args.threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print()
    print("GMN forward + backward, batch of 32 digits-MLP graphs (64-128-128-10, 26,122 params):")
    print()
    print("| max_edges_per_layer | edges per graph | seconds per step |")
    print("|---|---:|---:|")
    for bound in ("256", "1024", "None"):
        print(f"| {bound} | {r[bound + '_edges']:,} | {r[bound]:.3f} |")


if __name__ == "__main__":
    main()
