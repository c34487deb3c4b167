"""``FMSTrainer``: a ``transformers.Trainer`` whose Optuna search pauses and continues trials.

Exported by :mod:`optuna_fms.integration.transformers`, which documents it. This module does not
import that one at import time (it imports this one), so either can be imported first.
"""

from __future__ import annotations

from collections.abc import Callable
import shutil
import tempfile
from typing import TYPE_CHECKING
from typing import Any

import optuna
import transformers

from optuna_fms._checkpoint import DEFAULT_KEEP_LAST
from optuna_fms._resume import open_continuation
from optuna_fms.integration._hf_state import NotResumableError
from optuna_fms.integration._hf_state import write_resume_dir


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore


if not hasattr(transformers.Trainer, "_report_to_hp_search"):  # pragma: no cover
    raise ImportError(
        f"FMSTrainer does not support transformers {transformers.__version__}: its Trainer has "
        "no _report_to_hp_search, which FMSTrainer replaces so that trials are not reported "
        "twice."
    )


class FMSTrainer(transformers.Trainer):
    """A :class:`transformers.Trainer` for ``hyperparameter_search`` with FMS freeze-thaw.

    ``trainer.hyperparameter_search(backend="optuna", sampler=FMSSampler(...),
    pruner=FMSPruner(...), ...)`` runs one trial per ``train(trial=...)`` call of the
    Trainer's Optuna backend. For each trial, FMSTrainer

    - reports ``metrics[metric]`` at each evaluation, checkpoints the model (a ``peft``
      model's adapter only) with the optimizer, LR scheduler, random states and
      ``TrainerState``, and stops the trial when :class:`~optuna_fms.FMSPruner` pauses it,
      through an :class:`FMSTrainerCallback` it adds for that trial; the Trainer's own
      per-evaluation report to Optuna (at ``global_step``, with ``compute_objective``) is
      switched off, so each evaluation is reported once;
    - when :class:`~optuna_fms.FMSSampler` made the trial a continuation of a paused one,
      copies the paused trial's curve into it and resumes from its checkpoint with the
      Trainer's own ``resume_from_checkpoint`` (weights or adapter, optimizer, scheduler,
      random states, epoch and step, skipping the data already seen): the continued curve is
      the one an uninterrupted run gives;
    - returns ``metrics[metric]`` of the last evaluation as the trial's value, and raises
      :class:`optuna.TrialPruned` when the trial was paused.

    Hyperparameters of the model, such as LoRA's rank, alpha and target modules, are
    suggested in ``model_init(trial)``; ``hp_space`` sets ``TrainingArguments`` fields (its
    default here sets none). A continuation gets the paused trial's parameters, so
    ``model_init`` builds the same model; it must build the same base model each time
    (pretrained, or from a fixed seed: the Trainer seeds with ``args.seed`` before calling it),
    since an adapter's checkpoint does not hold the base. ``trainer.train(trial=trial)`` in an
    objective of your own does the same for that trial.

    Misconfigurations raise :class:`ValueError` before the first step, or at the first
    evaluation: no evaluation (``eval_strategy="no"``), ``load_best_model_at_end=True``
    (reloading an earlier checkpoint at the end of a paused trial), ``step="epoch"`` with
    evaluations more often than each epoch, an :class:`~optuna_fms.FMSPruner` whose
    ``max_steps`` is not ``num_train_epochs``, ``metric`` missing from the evaluation metrics,
    a ``compute_objective`` (FMS forecasts ``metric``), and a multi-objective study.

    Parameters
    ----------
    *args, **kwargs:
        Passed to :class:`transformers.Trainer` (``model_init=`` for a search).
    metric:
        Key of the evaluation metric FMS optimizes, e.g. ``"eval_accuracy"``; give the
        search's ``direction`` to match.
    step, artifact_store, keep_last, keep_every:
        As in :class:`FMSTrainerCallback`. The default store is the study's
        :class:`~optuna_fms.FMSSampler`'s.

    Notes
    -----
    Callback states (``EarlyStoppingCallback``'s patience counter) and a mixed-precision
    gradient scaler are not restored in a continuation. Each trial's evaluation runs in
    ``train``; ``trainer.state.log_history`` of a continuation holds the paused trial's
    entries before its own.

    Examples
    --------
    >>> import contextlib, io, tempfile
    >>> import optuna, peft, torch, transformers
    >>> import optuna_fms
    >>> from optuna_fms.integration.transformers import FMSTrainer
    >>> config = transformers.BertConfig(
    ...     vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    ...     intermediate_size=32, max_position_embeddings=16,
    ... )
    >>> ids = torch.randint(1, 50, (16, 8), generator=torch.Generator().manual_seed(0))
    >>> data = [{"input_ids": x, "labels": int(x[0] > 25)} for x in ids]
    >>> def model_init(trial):
    ...     base = transformers.BertForSequenceClassification(config)
    ...     if trial is None:  # the Trainer's first call, before the search
    ...         return base
    ...     rank = trial.suggest_categorical("r", [2, 4])
    ...     lora = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["query"],
    ...                            task_type="SEQ_CLS")
    ...     return peft.get_peft_model(base, lora)
    >>> args = transformers.TrainingArguments(
    ...     output_dir=tempfile.mkdtemp(), num_train_epochs=3, eval_strategy="epoch",
    ...     save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    ... )
    >>> trainer = FMSTrainer(
    ...     model_init=model_init, args=args, train_dataset=data, eval_dataset=data,
    ...     metric="eval_loss",
    ... )
    >>> folder = tempfile.mkdtemp()
    >>> store = optuna.artifacts.FileSystemArtifactStore(folder)
    >>> storage = f"sqlite:///{folder}/fms.db"
    >>> with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its metrics
    ...     best = trainer.hyperparameter_search(
    ...         backend="optuna", n_trials=4, direction="minimize",
    ...         sampler=optuna_fms.FMSSampler(artifact_store=store, seed=0, n_startup_trials=2),
    ...         pruner=optuna_fms.FMSPruner(max_steps=3, n_startup_trials=2),
    ...         storage=storage, study_name="lora",
    ...     )
    >>> sorted(best.hyperparameters)
    ['r']
    >>> study = optuna.load_study(study_name="lora", storage=storage)
    >>> [(t.state.name, t.user_attrs.get("fms:continues", {}).get("trial")) for t in study.trials]
    [('PRUNED', None), ('PRUNED', None), ('COMPLETE', 1), ('COMPLETE', 0)]
    """

    def __init__(
        self,
        *args: Any,
        metric: str = "eval_loss",
        step: str = "epoch",
        artifact_store: ArtifactStore | None = None,
        keep_last: int | None = DEFAULT_KEEP_LAST,
        keep_every: int | None = None,
        **kwargs: Any,
    ) -> None:
        if step not in ("epoch", "global_step"):
            raise ValueError(f"step must be 'epoch' or 'global_step', got {step!r}.")
        super().__init__(*args, **kwargs)
        self.metric = metric
        self.step = step
        self.artifact_store = artifact_store
        self.keep_last = keep_last
        self.keep_every = keep_every
        self._n_completed = 0
        self._raised: Exception | None = None
        self.objective: float | None = None

    def hyperparameter_search(  # type: ignore[override]
        self,
        hp_space: Callable[[optuna.trial.Trial], dict[str, Any]] | None = None,
        compute_objective: Callable[[dict[str, float]], float] | None = None,
        n_trials: int = 20,
        direction: str | list[str] = "minimize",
        backend: str | None = "optuna",
        hp_name: Callable[[optuna.trial.Trial], str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run :meth:`transformers.Trainer.hyperparameter_search` with the Optuna backend.

        Parameters
        ----------
        hp_space:
            ``trial -> {TrainingArguments field: value}``; default: no field (the model's
            hyperparameters are suggested in ``model_init``).
        compute_objective:
            Must be ``None``: the objective is ``metrics[metric]``.
        n_trials, direction, hp_name, **kwargs:
            As for the Trainer: ``timeout=``, ``n_jobs=``, ``gc_after_trial=`` and ``catch=``
            go to :meth:`optuna.study.Study.optimize`, every other keyword to
            :func:`optuna.create_study` (``sampler=``, ``pruner=``, ``storage=``,
            ``study_name=``, ``load_if_exists=``). The Trainer passes no ``callbacks=`` to
            ``optimize``, so they are refused (a ``ValueError``).
        backend:
            ``"optuna"`` (the only one supported).

        Returns
        -------
        transformers.trainer_utils.BestRun
            The best trial's number, value and parameters.
        """
        if str(getattr(backend, "value", backend)) != "optuna":
            raise ValueError(f"FMSTrainer searches with backend='optuna', got {backend!r}.")
        if compute_objective is not None:
            raise ValueError(
                "FMSTrainer reports and returns metrics[metric]: pass FMSTrainer(metric=...) "
                "(compute_metrics= can add a derived metric) instead of compute_objective."
            )
        if "callbacks" in kwargs:
            raise ValueError(
                "Trainer.hyperparameter_search passes no callbacks= to study.optimize (its "
                "Optuna backend forwards only timeout, n_jobs, gc_after_trial and catch): bound "
                "the search with timeout= or n_trials=, and write the dashboard note after it "
                "with optuna_fms.DashboardReport(max_steps=...).write(study)."
            )
        self._n_completed = 0
        try:
            return super().hyperparameter_search(
                hp_space=hp_space if hp_space is not None else _no_arguments,
                compute_objective=self._objective_value,
                n_trials=n_trials,
                direction=direction,
                backend="optuna",
                hp_name=hp_name,
                **kwargs,
            )
        except ValueError as e:  # The backend asks the study for its best trial.
            if self._n_completed or e is self._raised:
                raise
            raise ValueError(
                f"FMSTrainer: no trial completed in n_trials={n_trials} (FMS pauses trials and "
                "continues them in later trials), so there is no best run. Search longer: more "
                "n_trials, or the same storage= and study_name= with load_if_exists=True."
            ) from e

    def train(  # type: ignore[override]
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Train; with an Optuna ``trial``, report to it, checkpoint it and continue it.

        Parameters
        ----------
        resume_from_checkpoint, ignore_keys_for_eval, **kwargs:
            As for :meth:`transformers.Trainer.train`. A trial that continues a paused one
            resumes from the paused trial's checkpoint instead.
        trial:
            The running :class:`optuna.trial.Trial` (the search passes it), or ``None`` (or a
            Ray/W&B dict) to train as the Trainer does.

        Returns
        -------
        transformers.trainer_utils.TrainOutput
            What the Trainer returns.

        Raises
        ------
        optuna.TrialPruned
            The trial was paused (or pruned).
        """
        if not isinstance(trial, optuna.trial.Trial):
            return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        from optuna_fms.integration.transformers import FMSTrainerCallback

        callback = FMSTrainerCallback(
            trial,
            metric=self.metric,
            step=self.step,
            artifact_store=self.artifact_store,
            keep_last=self.keep_last,
            keep_every=self.keep_every,
        )
        callback._strict = True
        self.add_callback(callback)
        folder = None
        try:
            if not resume_from_checkpoint:
                folder = self._continue(trial)
            output = super().train(
                folder or resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs
            )
        except Exception as e:
            self._raised = e  # Not the search's "no best trial" (see hyperparameter_search).
            raise
        finally:
            self.remove_callback(callback)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        callback.check_pruned()
        self._n_completed += 1
        return output

    def _continue(self, trial: optuna.trial.Trial) -> str | None:
        """A Trainer checkpoint folder of the paused trial ``trial`` continues, or ``None``."""
        continuation = open_continuation(trial, self.artifact_store)
        if continuation is None:
            return None
        folder = tempfile.mkdtemp(prefix="optuna-fms-resume-")
        try:
            write_resume_dir(folder, continuation.checkpoint)
        except NotResumableError as e:
            shutil.rmtree(folder, ignore_errors=True)
            continuation.give_up(str(e))
            return None
        continuation.adopt()
        return folder

    def _objective_value(self, metrics: dict[str, float]) -> float:
        if self.metric not in metrics:
            raise ValueError(
                f"FMSTrainer(metric={self.metric!r}): the evaluation metrics are "
                f"{sorted(metrics)}; pass one of them as metric=."
            )
        return float(metrics[self.metric])

    def _report_to_hp_search(self, trial: Any, step: int, metrics: dict[str, float]) -> None:
        # The trial's FMSTrainerCallback has reported (at the epoch) and asked the pruner:
        # only the value the search returns is kept here.
        if not isinstance(trial, optuna.trial.Trial):
            super()._report_to_hp_search(trial, step, metrics)
            return
        self.objective = self._objective_value(metrics)


def _no_arguments(trial: optuna.trial.Trial) -> dict[str, Any]:
    return {}
