"""Fixtures shared by the benchmark tests: one torch thread, a tiny hub per module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optuna_fms.bench import build_hub


@pytest.fixture
def one_thread():
    # Evaluation must run like the build workers do for bit-identical scores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_hub("tiny", tmp_path_factory.mktemp("a"), workers=1, progress=False)
