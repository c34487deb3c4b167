"""The walk of one decision, from ``trial.report`` to a continuation, file by file (issue 23).

A study pauses trials and continues them; a profiler records which files of ``optuna_fms``
run inside the pruner call that pauses a trial, inside the sampler's calls that make a
continuation of it, and inside ``resume()`` in that continuation. docs/design.md ("The walk
of one decision") lists those files; this test fails when the code and that list part, so a
new hop on the walk is a visible change of the documented house.

The walk counts the files that decide or record. It leaves out what the decision treats as a
black box: the model's numerics behind fit / predict (``_surrogate/`` apart from
``acquisition.py`` and the allocation rules), checkpoint input/output (``_checkpoint/``) and
the names of the stored attributes (``_attrs.py``, ``_budget.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import re
import sys
from typing import Any

import optuna
import pytest

import optuna_fms
from optuna_fms import _attrs
from tests import workers


_PACKAGE = Path(optuna_fms.__file__).resolve().parent
_DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"
_BLACK_BOXES = re.compile(
    r"^(_checkpoint/|_attrs\.py$|_budget\.py$|_surrogate/(?!acquisition\.py$|allocation/))"
)

_ENGINE_RULE_CLAIMS = {
    "_engine/_engine.py",
    "_engine/_schedule.py",
    "_engine/_shared_training.py",
    "_engine/_curves.py",
    "_engine/_records.py",
    "_engine/_weights.py",
    "_engine/_decisions.py",
    "_surrogate/acquisition.py",
    "_surrogate/allocation/_base.py",
    "_surrogate/allocation/_one_step.py",
    "_surrogate/allocation/_promoting.py",
    "_surrogate/allocation/_rungs.py",
    "_freeze_thaw/_protocol.py",
    "_freeze_thaw/_claims.py",
    "_freeze_thaw/_lineage.py",
}
"""What the pruner's pause and the sampler's continuation both run: the fit brought up to
date, the decision, the allocation rule and the claims."""

WALK = {
    "pause": _ENGINE_RULE_CLAIMS
    | {
        "_pruner.py",
        "_sampler.py",  # FMSSampler.engine: the pruner decides with the sampler's engine
        "_engine/_forecasting.py",  # the forecast recorded with the decision
    },
    "continuation": _ENGINE_RULE_CLAIMS | {"_sampler.py"},
    "resume": {
        "_resume.py",
        "_sampler.py",  # FMSSampler.artifact_store: where the checkpoints are, by default
        "_freeze_thaw/_protocol.py",
        "_freeze_thaw/_claims.py",
    },
}
"""The files each part of the walk runs (docs/design.md lists them with what each does)."""


def _unit(file: str) -> str:
    """The module or package a file belongs to: ``_engine/``, ``_pruner.py``, and for the
    surrogate's decision parts ``_surrogate/acquisition.py`` and ``_surrogate/allocation/``."""
    parts = file.split("/")
    if parts[0] == "_surrogate":
        return "/".join(parts[:2]) + ("/" if len(parts) > 2 else "")
    return parts[0] + ("/" if len(parts) > 1 else "")


class _Tracer:
    """Files of ``optuna_fms`` entered while a label is set, per label and trial."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, int], set[str]] = {}
        self._label: tuple[str, int] | None = None

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call" and self._label is not None:
            name = frame.f_code.co_filename
            if name.startswith(str(_PACKAGE) + os.sep):
                rel = Path(name).relative_to(_PACKAGE).as_posix()
                self.files.setdefault(self._label, set()).add(rel)

    @contextlib.contextmanager
    def label(self, kind: str, number: int) -> Iterator[None]:
        outer, self._label = self._label, (kind, number)
        try:
            yield
        finally:
            self._label = outer

    def wrap(self, kind: str, fn: Callable[..., Any], number: Callable[..., int]) -> Any:
        def traced(*args: Any, **kwargs: Any) -> Any:
            with self.label(kind, number(*args, **kwargs)):
                return fn(*args, **kwargs)

        return traced


@pytest.fixture
def traced_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[optuna.Study, _Tracer]:
    monkeypatch.chdir(tmp_path)  # curve_objective saves to the sampler's default store
    tracer = _Tracer()
    sampler_cls, pruner_cls = optuna_fms.FMSSampler, optuna_fms.FMSPruner
    for name in ("before_trial", "infer_relative_search_space", "sample_relative"):
        monkeypatch.setattr(
            sampler_cls,
            name,
            tracer.wrap("continuation", getattr(sampler_cls, name), lambda s, st, t, *a: t.number),
        )
    monkeypatch.setattr(
        pruner_cls,
        "prune",
        tracer.wrap("pause", pruner_cls.prune, lambda p, study, trial: trial.number),
    )
    resume = optuna_fms.resume

    def traced_resume(trial: optuna.Trial, *args: Any, **kwargs: Any) -> int:
        with tracer.label("resume", trial.number):
            return resume(trial, *args, **kwargs)

    monkeypatch.setattr(workers.optuna_fms, "resume", traced_resume)
    study = optuna.create_study(
        direction="maximize",
        sampler=sampler_cls(seed=1, n_startup_trials=3, n_candidates=64),
        pruner=pruner_cls(max_steps=workers.STEPS, n_startup_trials=3, tolerance=1.0),
    )
    old = sys.getprofile()
    sys.setprofile(tracer._profile)
    try:
        study.optimize(workers.curve_objective, n_trials=20)
    finally:
        sys.setprofile(old)
    return study, tracer


def _walk_files(tracer: _Tracer, kind: str, numbers: list[int]) -> set[str]:
    files: set[str] = set()
    for n in numbers:
        files |= tracer.files.get((kind, n), set())
    return {f for f in files if not _BLACK_BOXES.match(f)}


def test_the_walk_from_report_to_continuation_is_the_documented_one(
    traced_study: tuple[optuna.Study, _Tracer],
) -> None:
    study, tracer = traced_study
    children = [t for t in study.trials if _attrs.CONTINUES in t.user_attrs]
    assert children, "no paused trial was continued: the walk was not taken"
    parents = [c.user_attrs[_attrs.CONTINUES]["trial"] for c in children]
    # The pruner call that paused a parent is its last one (it reported once more).
    walked = {
        "pause": _walk_files(tracer, "pause", parents),
        "continuation": _walk_files(tracer, "continuation", [c.number for c in children]),
        "resume": _walk_files(tracer, "resume", [c.number for c in children]),
    }
    assert walked == WALK
    units = {_unit(f) for files in walked.values() for f in files}
    assert units == {
        "_pruner.py",
        "_sampler.py",
        "_resume.py",
        "_engine/",
        "_freeze_thaw/",
        "_surrogate/acquisition.py",
        "_surrogate/allocation/",
    }


def test_design_md_lists_every_file_of_the_walk() -> None:
    text = _DESIGN.read_text(encoding="utf-8")
    section = text.split("## The walk of one decision", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", section))
    every = set().union(*WALK.values())
    assert every - listed == set(), "docs/design.md's walk misses these files"
