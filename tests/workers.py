"""Objectives and worker entry points that the freeze-thaw tests run, also in subprocesses."""

from __future__ import annotations

from collections.abc import Callable
import functools
import hashlib
import json
import math
import os
from pathlib import Path
import signal
import time
import traceback
from typing import Any

import optuna
import torch

import optuna_fms


STEPS = 8


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh()
    return x, y


def train_model(trial: optuna.Trial) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model and optimizer of :func:`train_objective` (the learning rate from ``trial``)."""
    lr = trial.suggest_float("lr", 1e-3, 0.5, log=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def train_epoch(
    model: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int, batch_size: int = 16
) -> float:
    """One epoch of training on :func:`_data` (batches in an order seeded by ``epoch``); the
    loss on all the data after it."""
    x, y = _data()
    order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch))
    for batch in order.split(batch_size):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[batch]), y[batch]).backward()
        opt.step()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(x), y).item()


def train_objective(
    trial: optuna.Trial,
    checks: int = 1,
    stall: str | None = None,
    ignore: Callable[[], bool] | None = None,
) -> float:
    """Deterministic CPU training with momentum SGD, checkpointing every epoch.

    ``checks`` is how often ``should_prune`` is asked per step (a logging callback or a
    user's extra check ask more than once); the last answer decides. With ``stall`` (a file
    path) a continuation writes its trial number there after its first new epoch and then
    hangs, for a test to kill its process. With ``ignore``, a pause is ignored (as by a user
    who logs instead of raising): ``ignore()`` is called instead, and says whether to go on
    asking ``should_prune``.
    """
    model, opt = train_model(trial)
    start = optuna_fms.resume(trial, model, opt)
    loss = math.nan
    asking = True
    for epoch in range(start, STEPS):
        loss = train_epoch(model, opt, epoch)
        optuna_fms.save_checkpoint(trial, model, step=epoch, optimizer=opt)
        trial.report(loss, epoch)
        if stall is not None and start > 0:
            Path(stall).write_text(str(trial.number))
            time.sleep(600)
        if asking and [trial.should_prune() for _ in range(checks)][-1]:
            if ignore is None:
                raise optuna.TrialPruned()
            asking = ignore()
    return loss


class _Holder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))


def curve_objective(trial: optuna.Trial, checks: int = 1) -> float:
    """Cheap synthetic curves with a tiny checkpoint per step; resumes when continued.

    ``checks``: how often ``should_prune`` is asked per step, as in :func:`train_objective`.
    """
    q = trial.suggest_float("q", 0.0, 1.0)
    holder = _Holder()
    start = optuna_fms.resume(trial, holder)
    value = 0.0
    for step in range(start, STEPS):
        value = q * (1 - math.exp(-0.5 * (step + 1)))
        with torch.no_grad():
            holder.w += 1.0
        # The weights count the epochs trained, so a continuation must carry them on.
        assert holder.w[0].item() == step + 1
        optuna_fms.save_checkpoint(trial, holder, step=step)
        trial.report(value, step)
        if [trial.should_prune() for _ in range(checks)][-1]:
            raise optuna.TrialPruned()
    return value


def run_worker(storage_url: str, study_name: str, artifact_dir: str, n_trials: int, seed: int):
    """One process of the parallel freeze-thaw test."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = optuna.artifacts.FileSystemArtifactStore(artifact_dir)
    study = optuna.load_study(
        study_name=study_name,
        storage=storage_url,
        sampler=optuna_fms.FMSSampler(
            seed=seed,
            n_startup_trials=3,
            artifact_store=store,
            n_candidates=64,
            n_scratch_epochs=60,
            n_warm_epochs=10,
        ),
        pruner=optuna_fms.FMSPruner(max_steps=STEPS, n_startup_trials=3, tolerance=1.0),
    )
    study.optimize(curve_objective, n_trials=n_trials)


def postgres_url(*, required: bool) -> str | None:
    """The PostgreSQL server's URL that the test command provides (``OPTUNA_FMS_POSTGRES_URL``,
    set by scripts/_postgres.sh).

    Without it a test fails under CI (``CI`` set); elsewhere it is skipped when ``required``,
    and otherwise runs without PostgreSQL (``None``).
    """
    import pytest

    url = os.environ.get("OPTUNA_FMS_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail("CI must provide OPTUNA_FMS_POSTGRES_URL (scripts/_postgres.sh)")
    if required:
        pytest.skip("OPTUNA_FMS_POSTGRES_URL is not set (scripts/_postgres.sh starts a server)")
    return None


def make_storage(spec: str) -> optuna.storages.BaseStorage:
    """An RDB storage from a URL, or a journal file storage from ``journal:<path>``."""
    if spec.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(spec[len("journal:") :])
        return optuna.storages.JournalStorage(backend)
    return optuna.storages.RDBStorage(spec)


def race_for_claims(storage_url: str, study_id: int, claim_ids: list[int], out: str) -> None:
    """Try to take every claim; write the ids this process won."""
    from optuna_fms._freeze_thaw import _claims

    storage = make_storage(storage_url)
    me = storage.get_all_trials(study_id)[0]
    won = [c for c in claim_ids if _claims.take_claim(storage, c, me)]
    with open(out, "w") as f:
        f.write(",".join(map(str, won)))


_MODERN = hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
"""Optuna 4.9 renamed RetryFailedTrialCallback and RDBStorage's failed_trial_callback."""


def retry_callback() -> Any:
    """Optuna's callback that re-enqueues a trial the heartbeat failed (up to 3 times)."""
    if _MODERN:
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    return optuna.storages.RetryFailedTrialCallback(max_retry=3)


def heartbeat_storage(
    url: str, *, interval: int = 1, grace_period: int = 2, retry: bool = False
) -> optuna.storages.RDBStorage:
    """An RDB storage with Optuna's heartbeat, and with ``retry`` its retry callback."""
    key = "heartbeat_stale_trial_callback" if _MODERN else "failed_trial_callback"
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=interval,
        grace_period=grace_period,
        **{key: retry_callback() if retry else None},
    )


def continue_and_stall(url: str, study_name: str, artifact_dir: str, marker: str) -> None:
    """Continue the paused trial of a test study, then hang mid-training (to be killed)."""
    import test_freeze_thaw

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = optuna.artifacts.FileSystemArtifactStore(artifact_dir)
    study = optuna.load_study(
        study_name=study_name,
        storage=heartbeat_storage(url),
        sampler=test_freeze_thaw._ContinueWhenPossible(
            seed=0, artifact_store=store, n_startup_trials=0
        ),
        pruner=test_freeze_thaw._PauseTrialZero(max_steps=STEPS),
    )
    study.optimize(functools.partial(train_objective, stall=marker), n_trials=1)


class PauseTrialZeroAtThree(optuna_fms.FMSPruner):
    """Decides to pause trial 0 at step 3 and nothing else, through the pruner's whole path
    (a later ``should_prune`` of a trial that went on withdraws its claim)."""

    def _should_pause(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, step: int):
        return trial.number == 0 and step == 3


def ignore_pause(
    url: str, study_name: str, artifact_dir: str, paused: str, go: str, ask_again: bool
) -> None:
    """Run trial 0 of a test study, which ignores its pause at step 3: write the file
    ``paused``, wait for the file ``go``, then train to the end (asking ``should_prune`` again
    at each step if ``ask_again``)."""
    import test_freeze_thaw

    def on_pause() -> bool:
        Path(paused).write_text("paused")
        deadline = time.monotonic() + 120
        while not Path(go).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return ask_again

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_name,
        storage=url,
        sampler=test_freeze_thaw._ContinueWhenPossible(
            seed=0,
            artifact_store=optuna.artifacts.FileSystemArtifactStore(artifact_dir),
            n_startup_trials=0,
        ),
        pruner=PauseTrialZeroAtThree(max_steps=STEPS),
    )
    study.enqueue_trial({"lr": 0.05})
    study.optimize(functools.partial(train_objective, ignore=on_pause), n_trials=1)


def continue_and_die(url: str, study_name: str, artifact_dir: str, point: str) -> None:
    """Continue the paused trial of a test study and SIGKILL this process at ``point``:
    ``"cas"`` right after the claim moved to RUNNING (before its holder is recorded),
    ``"take"`` right after ``before_trial`` took the claim, ``"ask"`` when ``study.ask``
    returns the continuation (before Optuna's heartbeat thread starts). The patches are made
    in this (child) process only."""
    import test_freeze_thaw

    from optuna_fms import _attrs
    from optuna_fms._freeze_thaw import _claims

    if point == "cas":
        _claims._compare_and_set_running = _die_after(  # type: ignore[assignment]
            _claims._compare_and_set_running
        )
    elif point == "take":
        _claims.take_claim = _die_after(_claims.take_claim)  # type: ignore[assignment]
    else:
        ask = optuna.Study.ask

        def ask_and_die(self: optuna.Study, *args: Any) -> optuna.Trial:
            trial = ask(self, *args)
            if _attrs.CONTINUES in self._storage.get_trial_user_attrs(trial._trial_id):
                os.kill(os.getpid(), signal.SIGKILL)
            return trial

        optuna.Study.ask = ask_and_die  # type: ignore[method-assign,assignment]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_name,
        storage=heartbeat_storage(url),
        sampler=test_freeze_thaw._ContinueWhenPossible(
            seed=0,
            artifact_store=optuna.artifacts.FileSystemArtifactStore(artifact_dir),
            n_startup_trials=0,
        ),
        pruner=test_freeze_thaw._PauseTrialZero(max_steps=STEPS),
    )
    study.optimize(train_objective, n_trials=1)


def recover_claims(todo: list[tuple[str, int]], out: str) -> None:
    """Release the claims of failed continuations in each ``(storage, claims study id)``;
    write how many this process closed in each, as a JSON list."""
    from optuna_fms._freeze_thaw import _claims

    closed = [_claims.recover_claims(make_storage(spec), claims_id) for spec, claims_id in todo]
    Path(out).write_text(json.dumps(closed))


# ------------------------------------------------------------ many workers, some killed
FLEET_STEPS = 3
"""Epochs of :func:`fleet_objective` (few: the fleet tests run hundreds of trials)."""


def state_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and raw bytes: equal digests, bit-for-bit equal weights."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def fleet_objective(trial: optuna.Trial) -> float:
    """Tiny real training (a 4-8-1 MLP, momentum SGD) for the many-workers tests.

    Records the worker's pid (so a test can tell which trials a killed worker held) and, on a
    continuation, the digest of the weights ``resume`` restored.
    """
    trial.set_user_attr("worker", os.getpid())
    lr = trial.suggest_float("lr", 1e-3, 0.5, log=True)
    width = trial.suggest_int("width", 4, 16)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    start = optuna_fms.resume(trial, model, opt)
    if start > 0:
        trial.set_user_attr("resumed_digest", state_digest(model.state_dict()))
    loss = math.nan
    for epoch in range(start, FLEET_STEPS):
        loss = train_epoch(model, opt, epoch, batch_size=32)
        optuna_fms.save_checkpoint(trial, model.state_dict(), step=epoch, optimizer=opt)
        trial.report(loss, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loss


def fleet_study(spec: str, study_name: str, artifact_dir: str, seed: int) -> optuna.Study:
    """The many-workers study as one worker loads it: FMS with cheap settings."""
    if spec.startswith("journal:"):
        storage: optuna.storages.BaseStorage = make_storage(spec)
    else:
        storage = heartbeat_storage(spec, interval=1, grace_period=FLEET_GRACE, retry=True)
    return optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna_fms.FMSSampler(
            seed=seed,
            n_startup_trials=4,
            artifact_store=optuna.artifacts.FileSystemArtifactStore(artifact_dir),
            n_candidates=16,
            max_train_rows=64,
            retrain_growth=1.0,
        ),
        pruner=optuna_fms.FMSPruner(max_steps=FLEET_STEPS, n_startup_trials=4),
    )


FLEET_GRACE = 8
"""Heartbeat grace period (s) of the many-workers tests; the heartbeat beats every second."""


def _die_at_take(k: int, marker_dir: Path) -> None:
    """Patch, in this (child) process only, ``_freeze_thaw._claims.take_claim`` so that right
    after its ``k``-th successful take the process SIGKILLs itself: inside ``study.ask`` (the
    sampler's ``before_trial``), with the claim RUNNING and held by the new trial, before the
    objective starts. First writes ``died-in-ask-<pid>.json`` there: the trial's number and
    id, and the claim's id."""
    from optuna_fms._freeze_thaw import _claims

    def last_words(storage: Any, claim_id: int, child: optuna.trial.FrozenTrial) -> None:
        held = {"trial": child.number, "trial_id": child._trial_id, "claim": claim_id}
        (marker_dir / f"died-in-ask-{os.getpid()}.json").write_text(json.dumps(held))

    _claims.take_claim = _die_after(_claims.take_claim, k, last_words)  # type: ignore[assignment]


def _die_after(
    fn: Callable[..., bool], k: int = 1, last_words: Callable[..., None] | None = None
) -> Callable[..., bool]:
    """``fn`` made to SIGKILL this process right after its ``k``-th call that returned True
    (``last_words`` is called with the same arguments first)."""
    succeeded = 0

    def fn_then_die(*args: Any) -> bool:
        nonlocal succeeded
        if not fn(*args):
            return False
        succeeded += 1
        if succeeded < k:
            return True
        if last_words is not None:
            last_words(*args)
        os.kill(os.getpid(), signal.SIGKILL)
        return True  # not reached

    return fn_then_die


def fleet_worker(
    spec: str, study_name: str, artifact_dir: str, seed: int, target: int, die_at_take: int = 0
) -> None:
    """One worker process: run trials until ``target`` trials are complete or pruned.

    With ``die_at_take`` (k > 0) it SIGKILLs itself inside ``study.ask`` right after it took
    its k-th claim (see :func:`_die_at_take`).
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(1)
    if die_at_take:
        _die_at_take(die_at_take, Path(artifact_dir).parent)
    try:
        study = fleet_study(spec, study_name, artifact_dir, seed)
        done = optuna.study.MaxTrialsCallback(
            target, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        )
        study.optimize(fleet_objective, callbacks=[done])
    except BaseException:
        # The test reports it: a worker's exit code alone says nothing.
        err = Path(artifact_dir).parent / f"worker-{os.getpid()}.err"
        err.write_text(traceback.format_exc())
        raise
