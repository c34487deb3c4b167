"""What a test needs from the ``dev`` extra, shared by the tests."""

from __future__ import annotations

import importlib.util
import os

import pytest


def under_ci() -> bool:
    """Whether the tests run in CI (``CI`` set to ``1``, ``true`` or ``yes``)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Fail under CI, else skip, when something a test needs cannot be had."""
    if under_ci():
        pytest.fail(f"CI must provide it: {reason}")
    pytest.skip(reason)


def require(module: str) -> None:
    """Fail under CI, else skip, when ``module`` (a ``dev`` extra) is not installed."""
    if importlib.util.find_spec(module) is None:
        unavailable(f"{module} is needed (pip install -c constraints.txt -e '.[dev]')")
