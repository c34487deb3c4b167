"""What a test needs from the ``dev`` extra, shared by the tests."""

from __future__ import annotations

import importlib.util
import os

import pytest


def require(module: str) -> None:
    """Fail under CI, else skip, when ``module`` (a ``dev`` extra) is not installed."""
    if importlib.util.find_spec(module) is not None:
        return
    reason = f"{module} is needed (pip install -c constraints.txt -e '.[dev]')"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must provide it: {reason}")
    pytest.skip(reason)
