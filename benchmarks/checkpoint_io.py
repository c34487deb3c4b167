"""Checkpoint IO benchmark: optuna-fms safetensors artifacts vs ``torch.save`` / ``torch.load``.

For each size (float32 parameters) and each method, a fresh Python subprocess builds the state
dict, resets its peak resident set size (``/proc/self/clear_refs`` = 5, Linux), runs the
operation and reads the peak back (``VmHWM``). "Peak extra" is that peak minus the resident set
size just before the operation, so it counts every byte the operation itself kept resident:
copies of tensors, serialisation buffers and, for loads, the loaded tensors themselves. Where
``clear_refs`` cannot be written the lifetime peak (``ru_maxrss``) is used instead and the
table says so.

"ours" is :func:`optuna_fms.save_checkpoint` / :func:`optuna_fms.load_checkpoint` through a
:class:`optuna.artifacts.FileSystemArtifactStore` with a SQLite storage (safetensors to a
temporary file, upload into the store, record the step, retention with the default
``keep_last=2``); "torch" is ``torch.save`` to a file in the same directory and
``torch.load(weights_only=True)``. Files are read back from the page cache in both cases, and
every loaded tensor is summed inside the timed region (safetensors maps the file lazily, copy
on write, so an untouched load would look free).

Usage::

    python benchmarks/checkpoint_io.py                  # 1M, 10M and 100M parameters
    python benchmarks/checkpoint_io.py --sizes 1e6 1e7 --rounds 1  # a quicker run
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any


_CHUNK = 1 << 20  # Parameters per tensor (like a 1024 x 1024 layer).


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kib(reset_ok: bool) -> int:
    if reset_ok:
        return _rss_kib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _state_dict(n_params: int) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    sd = {}
    i = 0
    left = n_params
    while left > 0:
        n = min(_CHUNK, left)
        sd[f"layers.{i}.weight"] = torch.empty(n, dtype=torch.float32).uniform_()
        left -= n
        i += 1
    return sd


def _child(args: argparse.Namespace) -> None:
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from optuna_fms._checkpoint import load_checkpoint
    from optuna_fms._checkpoint import save_checkpoint

    work = Path(args.dir)
    store = optuna.artifacts.FileSystemArtifactStore(work / "artifacts")
    storage = f"sqlite:///{work / 'db.sqlite3'}"
    torch_path = work / "torch.pt"
    results = []
    if args.op == "save":
        sd = _state_dict(args.params)
        if args.method == "ours":
            study = optuna.create_study(storage=storage, study_name="bench", load_if_exists=True)
            trial = study.ask()
        for rep in range(args.repeat):
            before = _rss_kib("VmRSS")
            reset_ok = _reset_peak()
            t0 = time.perf_counter()
            if args.method == "ours":
                save_checkpoint(trial, sd, step=rep, artifact_store=store)
            else:
                torch.save(sd, torch_path)
            seconds = time.perf_counter() - t0
            results.append((seconds, _peak_kib(reset_ok) - before, reset_ok))
        if args.method == "ours":
            latest = trial.user_attrs["fms:checkpoints"][str(args.repeat - 1)]
            size = os.path.getsize(work / "artifacts" / latest)
            study.tell(trial, 0.0)
        else:
            size = os.path.getsize(torch_path)
    else:
        if args.method == "ours":
            frozen = optuna.load_study(study_name="bench", storage=storage).trials[-1]
        for _ in range(args.repeat):
            before = _rss_kib("VmRSS")
            reset_ok = _reset_peak()
            t0 = time.perf_counter()
            if args.method == "ours":
                loaded = load_checkpoint(frozen, artifact_store=store)
            else:
                loaded = torch.load(torch_path, weights_only=True)
            # Read every byte (safetensors maps the file lazily; torch.load reads eagerly).
            total = sum(float(t.sum()) for t in loaded.values())
            seconds = time.perf_counter() - t0
            results.append((seconds, _peak_kib(reset_ok) - before, reset_ok))
            assert total == total
            del loaded
        size = 0
    best = min(r[0] for r in results)
    peak = max(r[1] for r in results)
    print(json.dumps({"seconds": best, "peak_kib": peak, "reset": results[0][2], "size": size}))


def _run_child(op: str, method: str, params: int, work: Path, repeat: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        op,
        "--method",
        method,
        "--params",
        str(params),
        "--dir",
        str(work),
        "--repeat",
        str(repeat),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{op}/{method}/{params} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8], help="parameter counts"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per subprocess")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved subprocess rounds (best time kept)"
    )
    parser.add_argument("--dir", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--child", choices=["save", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=["ours", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--params", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.op = args.child
        _child(args)
        return

    rows = []
    reset_everywhere = True
    with tempfile.TemporaryDirectory(prefix="fms-ckpt-bench-", dir=args.dir) as root:
        for size in args.sizes:
            params = int(size)
            work = Path(root) / str(params)
            (work / "artifacts").mkdir(parents=True)
            r: dict[tuple[str, str], dict[str, Any]] = {}
            for _ in range(args.rounds):  # Interleaved, so that load spikes hit both methods.
                for method in ("ours", "torch"):
                    for op in ("save", "load"):
                        got = _run_child(op, method, params, work, args.repeat)
                        reset_everywhere &= got["reset"]
                        old = r.setdefault((method, op), got)
                        old["seconds"] = min(old["seconds"], got["seconds"])
                        old["peak_kib"] = max(old["peak_kib"], got["peak_kib"])
            rows.append((params, r))

    def mbps(params: int, seconds: float) -> float:
        return params * 4 / 1e6 / seconds

    print(
        "| params | MB | save MB/s ours | save MB/s torch | ours/torch | load MB/s ours "
        "| load MB/s torch | ours/torch | save peak extra ours | save peak extra torch "
        "| load peak extra ours | load peak extra torch | file MB ours / torch |"
    )
    print("|" + "---|" * 13)
    for params, r in rows:
        mb = params * 4 / 1e6
        s_o, s_t = (
            mbps(params, r["ours", "save"]["seconds"]),
            mbps(params, r["torch", "save"]["seconds"]),
        )
        l_o, l_t = (
            mbps(params, r["ours", "load"]["seconds"]),
            mbps(params, r["torch", "load"]["seconds"]),
        )

        def peak(key: tuple[str, str], r: dict = r, mb: float = mb) -> str:
            extra = max(r[key]["peak_kib"], 0) * 1024 / 1e6
            return f"{extra:.0f} MB ({extra / mb:.2f}x)"

        print(
            f"| {_fmt_size(params)} | {mb:.0f} | {s_o:.0f} | {s_t:.0f} | {s_o / s_t:.2f} "
            f"| {l_o:.0f} | {l_t:.0f} | {l_o / l_t:.2f} "
            f"| {peak(('ours', 'save'))} | {peak(('torch', 'save'))} "
            f"| {peak(('ours', 'load'))} | {peak(('torch', 'load'))} "
            f"| {r['ours', 'save']['size'] / 1e6:.1f} / {r['torch', 'save']['size'] / 1e6:.1f} |"
        )
    print()
    print(
        f"Best time of {args.rounds} interleaved rounds x {args.repeat} repetitions, each round "
        "of each case in a fresh subprocess; peak extra = largest peak RSS "
        + (
            "during the operation (VmHWM reset via /proc/self/clear_refs)"
            if reset_everywhere
            else "over the process lifetime (ru_maxrss; clear_refs unavailable)"
        )
        + " minus RSS before it, in MB and in copies of the state dict. Loads include the "
        "loaded tensors (1.00x is the minimum)."
    )


if __name__ == "__main__":
    main()
