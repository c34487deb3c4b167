"""Lightning callback that reports to an FMS trial, checkpoints it and prunes it."""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

import optuna


try:
    from lightning.pytorch import Callback
except ImportError as e:  # pragma: no cover - exercised only without the extra.
    raise ImportError(
        "optuna_fms.integration.lightning needs Lightning (the 'lightning' package): "
        "pip install optuna-fms[lightning]"
    ) from e

from optuna_fms._checkpoint import DEFAULT_KEEP_LAST
from optuna_fms.integration._reporting import _Reporting


if TYPE_CHECKING:
    from lightning.pytorch import LightningModule
    from lightning.pytorch import Trainer
    from optuna.artifacts._protocol import ArtifactStore


__all__ = ["FMSCallback"]


class FMSCallback(Callback, _Reporting):
    """Report a validation metric to a trial each epoch, checkpoint the model, and prune.

    At the end of each validation run (sanity checks excluded) the callback, in this order,

    1. saves the checkpoint of ``pl_module`` (and of the optimizer) at
       ``step = step_offset + trainer.current_epoch`` with :func:`optuna_fms.save_checkpoint`,
    2. reports ``trainer.callback_metrics[monitor]`` at that step with ``trial.report``,
    3. asks ``trial.should_prune()``; if so, it stops the trainer and raises
       :class:`optuna.TrialPruned`, which Lightning lets through ``trainer.fit`` to the
       objective, so Optuna records the trial as pruned (the FMS pruner's "paused").

    The checkpoint is saved before the pruner is asked, so a paused trial always has the
    checkpoint it would resume from. Use one validation per epoch (the default
    ``val_check_interval``): a second report at the same step is ignored by Optuna. Only the
    global rank zero reports and saves; multi-process (DDP) training is not tested.

    Parameters
    ----------
    trial:
        The running trial.
    monitor:
        The logged metric to report, e.g. ``"val_acc"`` (``self.log("val_acc", ...)``).
    save_checkpoints:
        Save a checkpoint at each validation end.
    save_optimizer:
        Include the optimizer's state (one optimizer: its state dict; several:
        ``{"optimizers": [state dict, ...]}``).
    artifact_store, keep_last, keep_every:
        Passed to :func:`optuna_fms.save_checkpoint`.
    step_offset:
        Added to ``trainer.current_epoch``; set it to the step returned by
        :func:`optuna_fms.resume` when a trial continues a paused one, so that steps continue
        where the paused trial stopped.

    Examples
    --------
    >>> import tempfile
    >>> import lightning.pytorch as pl
    >>> import optuna
    >>> import torch
    >>> from optuna_fms.integration.lightning import FMSCallback
    >>> class Net(pl.LightningModule):
    ...     def __init__(self, lr):
    ...         super().__init__()
    ...         self.lr = lr
    ...         self.layer = torch.nn.Linear(4, 2)
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         return torch.nn.functional.cross_entropy(self.layer(x), y)
    ...     def validation_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         self.log("val_acc", (self.layer(x).argmax(1) == y).float().mean())
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=self.lr)
    >>> data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    >>> loader = torch.utils.data.DataLoader(data, batch_size=8)
    >>> store = optuna.artifacts.FileSystemArtifactStore(tempfile.mkdtemp())
    >>> def objective(trial):
    ...     model = Net(lr=trial.suggest_float("lr", 1e-3, 1e-1, log=True))
    ...     callback = FMSCallback(trial, "val_acc", artifact_store=store)
    ...     trainer = pl.Trainer(
    ...         max_epochs=2, logger=False, enable_checkpointing=False,
    ...         enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    ...     )
    ...     trainer.fit(model, loader, loader)  # raises optuna.TrialPruned when pruned
    ...     return trainer.callback_metrics["val_acc"].item()
    >>> study = optuna.create_study(direction="maximize")
    >>> study.optimize(objective, n_trials=1)
    >>> trial = study.trials[0]
    >>> sorted(trial.intermediate_values), sorted(trial.user_attrs["fms:checkpoints"])
    ([0, 1], ['0', '1'])
    """

    def __init__(
        self,
        trial: optuna.trial.Trial,
        monitor: str = "val_acc",
        *,
        save_checkpoints: bool = True,
        save_optimizer: bool = True,
        artifact_store: ArtifactStore | None = None,
        keep_last: int | None = DEFAULT_KEEP_LAST,
        keep_every: int | None = None,
        step_offset: int = 0,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self._init_reporting(
            trial,
            save_checkpoints=save_checkpoints,
            save_optimizer=save_optimizer,
            artifact_store=artifact_store,
            keep_last=keep_last,
            keep_every=keep_every,
            step_offset=step_offset,
        )

    def _optimizer_state(self, trainer: Trainer) -> Any:
        optimizers = list(getattr(trainer, "optimizers", []) or [])
        if not self.save_optimizer or not optimizers:
            return None
        if len(optimizers) == 1:
            return optimizers[0].state_dict()
        return {"optimizers": [o.state_dict() for o in optimizers]}

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        step = self.step_offset + trainer.current_epoch
        metrics = dict(trainer.callback_metrics)
        optimizer = self._optimizer_state(trainer) if self.save_checkpoints else None
        if self._report_step(
            step, self.monitor, metrics, pl_module, optimizer, "trainer.callback_metrics"
        ):
            trainer.should_stop = True
            raise optuna.TrialPruned(f"Trial was pruned at step {step}.")
