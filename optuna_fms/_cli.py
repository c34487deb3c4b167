"""The ``optuna-fms`` console script."""

from __future__ import annotations

import argparse
from collections.abc import Callable
import sys


def _demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optuna-fms demo",
        description="FMS on real training: small MLPs on scikit-learn's digits.",
    )
    parser.add_argument("--storage", default="sqlite:///fms.db")
    parser.add_argument("--artifact-dir", default="artifacts")
    parser.add_argument("--study-name", default="fms-digits")
    parser.add_argument("--epochs", type=int, default=500, help="total epochs to train")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _demo(argv: list[str]) -> int:
    from optuna_fms._demo import run_demo
    from optuna_fms._demo import summarize

    args = _demo_parser().parse_args(argv)
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


def _build_hub_parser() -> argparse.ArgumentParser:
    from optuna_fms.bench._build import build_parser

    return build_parser()


def _pretrain_parser() -> argparse.ArgumentParser:
    from optuna_fms.bench._pretrain import build_parser

    return build_parser()


def _bench_parser() -> argparse.ArgumentParser:
    from optuna_fms.bench._cli import build_parser

    return build_parser()


def _gc_claims_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optuna-fms gc-claims",
        description=(
            "Delete the companion study '<study>:fms-claims' that FMS keeps its pauses in, once "
            "the study has no open pause (run it when no worker runs the study)."
        ),
    )
    parser.add_argument("--storage", required=True, help="the study's storage URL")
    parser.add_argument("--study", required=True, help="the study's name")
    return parser


def _gc_claims(argv: list[str]) -> int:
    import optuna

    from optuna_fms._freeze_thaw import claims_study_name
    from optuna_fms._freeze_thaw import delete_claims_study

    args = _gc_claims_parser().parse_args(argv)
    storage = optuna.storages.get_storage(args.storage)
    name = claims_study_name(args.study)
    kept = delete_claims_study(storage, args.study)
    if kept is not None:
        print(f"kept {name!r}: {kept}", file=sys.stderr)
        return 1
    print(f"{name!r} removed (or there was none)")
    return 0


# A command: (run it on its arguments, its parser, one line of help).
_Command = tuple[Callable[[list[str]], int], Callable[[], argparse.ArgumentParser], str]
_COMMANDS: dict[str, _Command] = {
    "demo": (_demo, _demo_parser, "run an FMS study on real training (digits)"),
    "build-hub": (
        _build_hub,
        _build_hub_parser,
        "train a benchmark hub (learning curves + checkpoints)",
    ),
    "pretrain-metanet": (
        _pretrain,
        _pretrain_parser,
        "pretrain the graph metanetwork on hubs' checkpoints",
    ),
    "bench": (
        _bench,
        _bench_parser,
        "replay a hub with several methods; regret and Kendall's tau",
    ),
    "gc-claims": (
        _gc_claims,
        _gc_claims_parser,
        "delete a study's companion claims study once no pause is open",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The whole command line as one parser, one subcommand per command (for the docs).

    :func:`main` dispatches on the first argument itself, so that a command imports only what
    it needs; each command parses its arguments with the same parser as here.
    """
    parser = argparse.ArgumentParser(
        prog="optuna-fms",
        description="Forecasting Model Search for Optuna: demo, benchmark hubs and maintenance.",
    )
    commands = parser.add_subparsers(title="commands", metavar="command")
    for name, (_, command_parser, text) in _COMMANDS.items():
        command = command_parser()
        commands.add_parser(
            name,
            help=text,
            description=command.description,
            parents=[command],
            add_help=False,
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in _COMMANDS:
        print("usage: optuna-fms {" + ",".join(_COMMANDS) + "} [options]\n")
        for name, (_, _, text) in _COMMANDS.items():
            print(f"  {name:<17} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, _, _ = _COMMANDS[argv[0]]
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
