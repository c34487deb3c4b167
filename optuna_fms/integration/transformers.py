"""Hugging Face ``transformers``: a ``Trainer`` callback that reports to an FMS trial and
checkpoints it, and :class:`FMSTrainer`, whose ``hyperparameter_search`` pauses and continues
trials (freeze-thaw)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from typing import Any

import optuna


try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without the extra.
    raise ImportError(
        "optuna_fms.integration.transformers needs Hugging Face transformers: "
        "pip install optuna-fms[transformers]"
    ) from e

from optuna_fms._checkpoint import DEFAULT_KEEP_LAST
from optuna_fms.integration._hf_state import trainer_extra_state
from optuna_fms.integration._reporting import _Reporting
from optuna_fms.integration._trainer import FMSTrainer


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from transformers import TrainerControl
    from transformers import TrainerState
    from transformers import TrainingArguments


__all__ = ["FMSTrainer", "FMSTrainerCallback"]


def _epoch_index(epoch: float) -> int:
    """0-based index of the epoch an evaluation at ``state.epoch == epoch`` belongs to.

    ``state.epoch`` is 1.0 at the end of the first epoch (index 0) and 0.5 in its middle.
    """
    nearest = round(epoch)
    whole = nearest if abs(epoch - nearest) < 1e-6 else math.ceil(epoch)
    return max(int(whole) - 1, 0)


class FMSTrainerCallback(TrainerCallback, _Reporting):
    """Report an evaluation metric to a trial, checkpoint the model, and stop when pruned.

    On each ``on_evaluate`` (on the main process) the callback, in this order,

    1. saves the model's checkpoint at the current step with :func:`optuna_fms.save_checkpoint`
       (of a ``peft.PeftModel``, only the adapter: see docs/checkpoints.md), with the
       Trainer's state unless ``save_optimizer=False``: optimizer, LR scheduler, random
       states and ``TrainerState``, all that :class:`FMSTrainer` needs to continue the trial,
    2. reports ``metrics[metric]`` at that step with ``trial.report``,
    3. asks ``trial.should_prune()``; if so, it sets ``control.should_training_stop`` so the
       Trainer ends cleanly, and remembers it in ``pruned_step``.

    The Trainer does not know about Optuna, so the objective raises the pruning itself after
    ``trainer.train()`` returns, with :meth:`check_pruned` (see the example). Forgetting it
    records a stopped trial as COMPLETE.

    The step is, with ``step="epoch"`` (default), the 0-based index of the epoch the
    evaluation belongs to (use ``eval_strategy="epoch"``: then 0 after the first epoch, like a
    hand-written ``for epoch in range(n)`` loop); with ``step="global_step"``,
    ``state.global_step`` (optimizer steps so far; for ``eval_strategy="steps"``). Either way
    ``step_offset`` is added. Evaluations outside ``trainer.train()`` (such as a final
    ``trainer.evaluate()``) are ignored: they would repeat the last step.

    Parameters
    ----------
    trial:
        The running trial.
    metric:
        Key of the metric in the evaluation's ``metrics``, e.g. ``"eval_accuracy"`` (the
        Trainer prefixes ``compute_metrics``' keys with ``eval_``).
    step:
        ``"epoch"`` or ``"global_step"``, as above.
    save_checkpoints:
        Save a checkpoint at each evaluation.
    save_optimizer:
        Include the Trainer's state (optimizer, LR scheduler, random states, ``TrainerState``)
        in the checkpoint.
    artifact_store, keep_last, keep_every:
        Passed to :func:`optuna_fms.save_checkpoint`.
    step_offset:
        Added to the step; the step returned by :func:`optuna_fms.resume` when the trial
        continues a paused one.

    Examples
    --------
    >>> import contextlib, io, tempfile
    >>> import optuna
    >>> import torch
    >>> import transformers
    >>> from optuna_fms.integration.transformers import FMSTrainerCallback
    >>> config = transformers.BertConfig(
    ...     vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...     intermediate_size=32, max_position_embeddings=16,
    ... )
    >>> ids = torch.randint(1, 50, (16, 8))
    >>> data = [{"input_ids": x, "labels": int(x[0] > 25)} for x in ids]
    >>> store = optuna.artifacts.FileSystemArtifactStore(tempfile.mkdtemp())
    >>> def objective(trial):
    ...     args = transformers.TrainingArguments(
    ...         output_dir=tempfile.mkdtemp(), num_train_epochs=2, eval_strategy="epoch",
    ...         save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    ...         learning_rate=trial.suggest_float("lr", 1e-4, 1e-2, log=True),
    ...     )
    ...     callback = FMSTrainerCallback(trial, metric="eval_loss", artifact_store=store)
    ...     trainer = transformers.Trainer(
    ...         model=transformers.BertForSequenceClassification(config), args=args,
    ...         train_dataset=data, eval_dataset=data, callbacks=[callback],
    ...     )
    ...     trainer.train()
    ...     callback.check_pruned()  # raises optuna.TrialPruned if the trial was pruned
    ...     return trainer.evaluate()["eval_loss"]
    >>> study = optuna.create_study()
    >>> with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its metrics
    ...     study.optimize(objective, n_trials=1)
    >>> trial = study.trials[0]
    >>> sorted(trial.intermediate_values), sorted(trial.user_attrs["fms:checkpoints"])
    ([0, 1], ['0', '1'])
    """

    def __init__(
        self,
        trial: optuna.trial.Trial,
        metric: str = "eval_accuracy",
        *,
        step: str = "epoch",
        save_checkpoints: bool = True,
        save_optimizer: bool = True,
        artifact_store: ArtifactStore | None = None,
        keep_last: int | None = DEFAULT_KEEP_LAST,
        keep_every: int | None = None,
        step_offset: int = 0,
    ) -> None:
        if step not in ("epoch", "global_step"):
            raise ValueError(f"step must be 'epoch' or 'global_step', got {step!r}.")
        self.metric = metric
        self.step = step
        self._init_reporting(
            trial,
            save_checkpoints=save_checkpoints,
            save_optimizer=save_optimizer,
            artifact_store=artifact_store,
            keep_last=keep_last,
            keep_every=keep_every,
            step_offset=step_offset,
        )
        self._training = False
        self._strict = False
        """Set by :class:`FMSTrainer`: a missing metric or a misconfigured Trainer raises."""

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._strict:
            _check_arguments(args, self.step, self.trial)
        self._training = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._training = False

    def _current_step(self, state: TrainerState) -> int:
        if self.step == "global_step":
            return self.step_offset + int(state.global_step)
        return self.step_offset + _epoch_index(float(state.epoch or 0.0))

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        model: Any = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> TrainerControl:
        if not self._training or not state.is_world_process_zero:
            return control  # e.g. trainer.evaluate() after training: already reported.
        step = self._current_step(state)
        module = getattr(model, "module", model)  # DistributedDataParallel wrapper.
        metrics = dict(metrics or {})
        if self._strict:
            _check_metric(self.metric, metrics)
        extra = trainer_extra_state(state, kwargs.get("lr_scheduler"))
        if self._report_step(
            step, self.metric, metrics, module, optimizer, "the evaluation metrics", extra
        ):
            control.should_training_stop = True
        return control

    def check_pruned(self) -> None:
        """Raise :class:`optuna.TrialPruned` if the trial was pruned during training.

        Call it right after ``trainer.train()`` in the objective.

        Examples
        --------
        >>> import optuna
        >>> from optuna_fms.integration.transformers import FMSTrainerCallback
        >>> callback = FMSTrainerCallback(optuna.create_study().ask())
        >>> callback.check_pruned()  # not pruned: nothing happens
        >>> callback.pruned_step = 3
        >>> callback.check_pruned()
        Traceback (most recent call last):
        ...
        optuna.exceptions.TrialPruned: Trial was pruned at step 3.
        """
        if self.pruned_step is not None:
            raise optuna.TrialPruned(f"Trial was pruned at step {self.pruned_step}.")


def _check_metric(metric: str, metrics: dict[str, Any]) -> None:
    if metric not in metrics:
        raise ValueError(
            f"FMSTrainer(metric={metric!r}): the evaluation metrics are {sorted(metrics)}. Pass "
            "one of them as metric=, or a compute_metrics= that returns it (the Trainer "
            "prefixes its keys with 'eval_')."
        )


def _check_arguments(args: TrainingArguments, step: str, trial: optuna.trial.Trial) -> None:
    """A ValueError saying what to change when FMS cannot pause and continue with ``args``."""
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    if strategy == "no":
        raise ValueError(
            "FMSTrainer reports at each evaluation and the Trainer never evaluates: set "
            "TrainingArguments(eval_strategy='epoch') (or 'steps' with step='global_step')."
        )
    if args.load_best_model_at_end:
        raise ValueError(
            "TrainingArguments(load_best_model_at_end=True) reloads an earlier checkpoint when "
            "a trial ends, also when FMS pauses it, so the paused state and the weights differ: "
            "set load_best_model_at_end=False (FMS keeps each trial's checkpoints; "
            "optuna_fms.load_checkpoint reads the best trial's)."
        )
    if step == "epoch" and (strategy != "epoch" or args.eval_on_start):
        raise ValueError(
            f"FMSTrainer(step='epoch') reports once per epoch, but eval_strategy={strategy!r}"
            f"{' with eval_on_start=True' if args.eval_on_start else ''} evaluates more often: "
            "use eval_strategy='epoch' without eval_on_start, or step='global_step'."
        )
    if len(trial.study.directions) > 1:
        raise ValueError("FMSTrainer searches one objective; the study has several directions.")
    max_steps = getattr(trial.study.pruner, "max_steps", None)
    epochs = args.num_train_epochs
    if step == "epoch" and args.max_steps <= 0 and max_steps not in (None, epochs):
        raise ValueError(
            f"The pruner's max_steps is {max_steps} but the Trainer trains {epochs} epochs "
            "(TrainingArguments(num_train_epochs), possibly set by hp_space): make them equal, "
            "since FMS counts epochs as steps."
        )
