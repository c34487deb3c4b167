"""benchmarks/suite.py's comparisons: a candidate against its baseline on the same seeds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from optuna_fms.bench._replay import RunResult


@pytest.fixture(scope="module")
def suite():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "suite.py"
    spec = importlib.util.spec_from_file_location("_suite_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(method: str, seed: int, best: float) -> RunResult:
    return RunResult(
        hub="h",
        method=method,
        seed=seed,
        budget=100,
        best_final_score=1.0,
        best_observed=[best] * 100,
    )


def test_a_candidate_is_compared_with_the_baseline_on_its_own_seeds(suite) -> None:
    # The baseline ran seeds 0-9 and did badly on 5-9; the candidate ran 0-4 and equals the
    # baseline there: a tie (score 0, ratio 1), not a win bought with the baseline's extra seeds.
    base = [_run("tpe-hyperband", s, 0.9 if s < 5 else 0.1) for s in range(10)]
    cand = [_run("fms-x", s, 0.9) for s in range(5)]
    assert suite._score(cand, base, [50, 100]) == pytest.approx(0.0)
    row = suite._targets("h", "fms-x", cand, base, [50, 100], None)
    assert row.split(" | ")[3] == "1.00"
    # With the same seeds on both sides a real difference still shows.
    better = [_run("fms-x", s, 0.95) for s in range(5)]
    assert suite._score(better, base, [50, 100]) < -0.5
