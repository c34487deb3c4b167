"""Claim paused trials through the storage, so that each is continued at most once.

Optuna storages offer one atomic compare-and-set that every backend implements (RDB with a
row lock, journal by log order, in-memory under a lock, gRPC by forwarding): moving a trial
from WAITING to RUNNING, which returns ``False`` to all callers but one. Study.ask relies on
it to hand each enqueued trial to one worker. (On SQLite, Optuna's read-then-write of that
transition is not atomic: pysqlite runs the SELECT outside the transaction. For RDB storages
we therefore issue one conditional ``UPDATE ... WHERE state = 'WAITING'`` and read its row
count, which is atomic on every SQL database.) We use it the same way: when FMSPruner pauses
a continuable trial it creates a WAITING *claim trial* in a companion study named
``"<study name>:fms-claims"``; a sampler that wants to continue the paused trial must win the
WAITING -> RUNNING transition of that claim trial first. The companion study keeps the claim
trials out of the user's study, where ``ask`` would pop them as ordinary trials.

A claim's life: WAITING (open; one per pause, recorded in the paused trial's ``fms:paused``),
RUNNING while its continuation runs (``continued_by_id`` names it), then COMPLETE when the
continuation finished, back to WAITING when it failed (the paused trial stays continuable),
or FAIL when it was withdrawn (the paused trial went on) or its continuations kept failing.
"""

from __future__ import annotations

from optuna.exceptions import DuplicatedStudyError
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
from optuna.trial import create_trial
import sqlalchemy


_SUFFIX = ":fms-claims"


def claims_study_id(storage: BaseStorage, study_id: int) -> int:
    """Id of the companion study holding claim trials; created on first use."""
    name = storage.get_study_name_from_id(study_id) + _SUFFIX
    try:
        return storage.create_new_study([StudyDirection.MINIMIZE], study_name=name)
    except DuplicatedStudyError:
        return storage.get_study_id_from_name(name)


def open_claim(storage: BaseStorage, claims_id: int, paused: FrozenTrial, step: int) -> int:
    """Create the WAITING claim trial for ``paused``, continuable from ``step``."""
    template = create_trial(
        state=TrialState.WAITING,
        user_attrs={"trial_id": paused._trial_id, "trial_number": paused.number, "step": step},
    )
    return storage.create_new_trial(claims_id, template_trial=template)


def open_claims(storage: BaseStorage, claims_id: int) -> list[FrozenTrial]:
    """Claim trials not yet taken: each stands for one continuable paused trial."""
    return storage.get_all_trials(claims_id, deepcopy=False, states=(TrialState.WAITING,))


def _rdb_backend(storage: BaseStorage) -> RDBStorage | None:
    backend = getattr(storage, "_backend", storage)  # Unwrap Optuna's _CachedStorage.
    return backend if isinstance(backend, RDBStorage) else None


def _compare_and_set_running(storage: BaseStorage, claim_id: int) -> bool:
    rdb = _rdb_backend(storage)
    if rdb is None:
        try:
            return storage.set_trial_state_values(claim_id, TrialState.RUNNING)
        except UpdateFinishedTrialError:
            return False
    statement = sqlalchemy.text(
        "UPDATE trials SET state = :running WHERE trial_id = :trial_id AND state = :waiting"
    )
    with rdb.engine.begin() as connection:
        result = connection.execute(
            statement,
            {
                "running": TrialState.RUNNING.name,
                "waiting": TrialState.WAITING.name,
                "trial_id": claim_id,
            },
        )
        return result.rowcount == 1


def is_claim_of(storage: BaseStorage, claim_id: int, paused: FrozenTrial) -> bool:
    """Whether ``claim_id`` is a claim opened for the trial ``paused``."""
    try:
        claim = storage.get_trial(claim_id)
    except KeyError:
        return False
    return claim.user_attrs.get("trial_id") == paused._trial_id


def withdraw_claim(storage: BaseStorage, claim_id: int) -> bool:
    """Close an open claim nobody took (its trial went on); ``False`` if it was taken."""
    if not _compare_and_set_running(storage, claim_id):
        return False
    storage.set_trial_user_attr(claim_id, "withdrawn", True)
    storage.set_trial_state_values(claim_id, TrialState.FAIL)
    return True


MAX_ATTEMPTS = 2
"""Continuations of one pause that may fail before the paused trial is given up."""


def take_claim(storage: BaseStorage, claim_id: int, child: FrozenTrial) -> bool:
    """Atomically take a claim for ``child``; ``False`` if another worker was first.

    The claim stays RUNNING while ``child`` runs: :func:`finish_claim` closes it once the
    continuation finished, :func:`release_claim` opens it again if the continuation failed.
    """
    if not _compare_and_set_running(storage, claim_id):
        return False
    storage.set_trial_user_attr(claim_id, "continued_by", child.number)
    storage.set_trial_user_attr(claim_id, "continued_by_id", child._trial_id)
    return True


def is_held_by(storage: BaseStorage, claim_id: int, child_id: int) -> bool:
    """Whether the trial with storage id ``child_id`` took the claim ``claim_id`` (and it was
    not released since)."""
    try:
        claim = storage.get_trial(claim_id)
    except KeyError:
        return False
    held = claim.state in (TrialState.RUNNING, TrialState.COMPLETE)
    return held and claim.user_attrs.get("continued_by_id") == child_id


def finish_claim(storage: BaseStorage, claim_id: int, child: FrozenTrial) -> None:
    """Close the claim that ``child`` used: the paused trial has been continued."""
    storage.set_trial_state_values(claim_id, TrialState.COMPLETE, values=[float(child.number)])


def release_claim(storage: BaseStorage, claim_id: int) -> bool:
    """Open the claim again after its continuation failed; ``True`` if it is open again.

    After :data:`MAX_ATTEMPTS` failed continuations of the same pause the claim is closed
    instead (a continuation that fails every time, e.g. on a checkpoint that no longer fits
    the model, must not take every later trial).
    """
    attempts = storage.get_trial(claim_id).user_attrs.get("failed_continuations", 0) + 1
    storage.set_trial_user_attr(claim_id, "failed_continuations", attempts)
    if attempts >= MAX_ATTEMPTS:
        storage.set_trial_state_values(claim_id, TrialState.FAIL)
        return False
    storage.set_trial_state_values(claim_id, TrialState.WAITING)
    return True
