"""The ``optuna-fms`` console script."""

from __future__ import annotations

import argparse
import sys


def _demo(argv: list[str]) -> int:
    from optuna_fms._demo import run_demo
    from optuna_fms._demo import summarize

    parser = argparse.ArgumentParser(
        prog="optuna-fms demo",
        description="FMS on real training: small MLPs on scikit-learn's digits.",
    )
    parser.add_argument("--storage", default="sqlite:///fms.db")
    parser.add_argument("--artifact-dir", default="artifacts")
    parser.add_argument("--study-name", default="fms-digits")
    parser.add_argument("--epochs", type=int, default=500, help="total epochs to train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    study = run_demo(
        storage=args.storage,
        artifact_dir=args.artifact_dir,
        study_name=args.study_name,
        epochs=args.epochs,
        seed=args.seed,
    )
    print(summarize(study, args.storage, args.artifact_dir))
    return 0


def _build_hub(argv: list[str]) -> int:
    from optuna_fms.bench._build import main_build

    return main_build(argv)


def _pretrain(argv: list[str]) -> int:
    from optuna_fms.bench._pretrain import main_pretrain

    return main_pretrain(argv)


def _bench(argv: list[str]) -> int:
    from optuna_fms.bench._cli import main as bench_main

    return bench_main(argv)


def _gc_claims(argv: list[str]) -> int:
    import optuna

    from optuna_fms._freeze_thaw import claims_study_name
    from optuna_fms._freeze_thaw import delete_claims_study

    parser = argparse.ArgumentParser(
        prog="optuna-fms gc-claims",
        description=(
            "Delete the companion study '<study>:fms-claims' that FMS keeps its pauses in, once "
            "the study has no open pause (run it when no worker runs the study)."
        ),
    )
    parser.add_argument("--storage", required=True, help="the study's storage URL")
    parser.add_argument("--study", required=True, help="the study's name")
    args = parser.parse_args(argv)
    storage = optuna.storages.get_storage(args.storage)
    name = claims_study_name(args.study)
    kept = delete_claims_study(storage, args.study)
    if kept is not None:
        print(f"kept {name!r}: {kept}", file=sys.stderr)
        return 1
    print(f"{name!r} removed (or there was none)")
    return 0


_COMMANDS = {
    "demo": (_demo, "run an FMS study on real training (digits)"),
    "build-hub": (_build_hub, "train a benchmark hub (learning curves + checkpoints)"),
    "pretrain-metanet": (_pretrain, "pretrain the graph metanetwork on hubs' checkpoints"),
    "bench": (_bench, "replay a hub with several methods; regret and Kendall's tau"),
    "gc-claims": (_gc_claims, "delete a study's companion claims study once no pause is open"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in _COMMANDS:
        print("usage: optuna-fms {" + ",".join(_COMMANDS) + "} [options]\n")
        for name, (_, text) in _COMMANDS.items():
            print(f"  {name:<17} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, _ = _COMMANDS[argv[0]]
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
