"""Benchmark hubs: learning curves and per-epoch checkpoints of really trained configurations.

Build a hub once (``optuna-fms build-hub --hub zoo``), then replay it: :class:`Hub` answers
"what score, and what weights, would configuration ``c`` have after epoch ``e``" without
training. See ``docs/hubs.md``.
"""

from __future__ import annotations

from optuna_fms.bench._build import build_hub
from optuna_fms.bench._build import main_build
from optuna_fms.bench._build import summarize
from optuna_fms.bench._hub import Hub


__all__ = ["Hub", "build_hub", "main_build", "summarize"]
