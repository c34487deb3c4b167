"""The step both training-loop callbacks take: checkpoint, report, ask the pruner."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Any
import warnings

import optuna

from optuna_fms._checkpoint import DEFAULT_KEEP_LAST
from optuna_fms._checkpoint import save_checkpoint


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore


class _Reporting:
    """Settings and the per-evaluation step shared by the Lightning and transformers callbacks.

    The checkpoint is saved before the pruner is asked, so a paused trial always has the
    checkpoint it would resume from.
    """

    def _init_reporting(
        self,
        trial: optuna.trial.Trial,
        *,
        save_checkpoints: bool,
        save_optimizer: bool,
        artifact_store: ArtifactStore | None,
        keep_last: int | None = DEFAULT_KEEP_LAST,
        keep_every: int | None,
        step_offset: int,
    ) -> None:
        self.trial = trial
        self.save_checkpoints = save_checkpoints
        self.save_optimizer = save_optimizer
        self.artifact_store = artifact_store
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.step_offset = step_offset
        self.pruned_step: int | None = None
        """The step at which the trial was pruned, or ``None``."""

    def _report_step(
        self,
        step: int,
        name: str,
        metrics: dict[str, Any],
        module: Any,
        optimizer: Any,
        where: str,
        extra_state: dict[str, Any] | None = None,
    ) -> bool:
        """Checkpoint ``module`` (with ``extra_state``), report ``metrics[name]`` at ``step``;
        True if pruned."""
        value = metrics.get(name)
        if value is None:
            available: Iterable[str] = sorted(metrics)
            warnings.warn(
                f"The metric {name!r} is not in {where} ({list(available)}); nothing reported "
                f"at step {step}.",
                stacklevel=3,
            )
            return False
        if self.save_checkpoints and module is not None:
            save_checkpoint(
                self.trial,
                module,
                step,
                optimizer=optimizer if self.save_optimizer else None,
                artifact_store=self.artifact_store,
                keep_last=self.keep_last,
                keep_every=self.keep_every,
                extra_state=extra_state if self.save_optimizer else None,
            )
        self.trial.report(float(value), step=step)
        if self.trial.should_prune():
            self.pruned_step = step
            return True
        return False
