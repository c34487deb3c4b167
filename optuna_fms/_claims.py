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


def take_claim(storage: BaseStorage, claim_id: int, child: FrozenTrial) -> bool:
    """Atomically take a claim for ``child``; ``False`` if another worker was first."""
    if not _compare_and_set_running(storage, claim_id):
        return False
    storage.set_trial_user_attr(claim_id, "continued_by", child.number)
    storage.set_trial_state_values(claim_id, TrialState.COMPLETE, values=[float(child.number)])
    return True
