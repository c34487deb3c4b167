"""What a test needs from the ``dev`` extra, shared by the tests."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

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


def tiny_bert_config(**overrides: Any) -> Any:
    """A ``transformers.BertConfig`` small enough for CPU tests (one layer, width 16, a
    50-token vocabulary, 16 positions); ``overrides`` change any field."""
    import transformers

    fields: dict[str, Any] = dict(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    return transformers.BertConfig(**{**fields, **overrides})


def cpu_training_args(output_dir: str, **overrides: Any) -> Any:
    """``transformers.TrainingArguments`` of the tests: CPU, evaluation every epoch, no
    Trainer checkpoints, logging, reporting or progress bars; ``overrides`` change any."""
    import transformers

    fields: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=8,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    return transformers.TrainingArguments(**{**fields, **overrides})
