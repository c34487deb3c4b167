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

A claim's life: WAITING (open), RUNNING once a continuation took it (``continued_by_id`` names
that trial, its *holder*), then PRUNED when the holder finished (not COMPLETE: a complete
trial without a value breaks ``optuna.get_all_study_summaries``; claims of older versions
are COMPLETE and read the same), or FAIL when it was withdrawn
(the paused trial went on) or its holder failed. A claim has at most one holder: when the holder
fails (an exception, or a killed worker whose trial Optuna's heartbeat marked FAIL), whoever
first moves the claim from RUNNING to FAIL (an atomic compare-and-set, like taking it) opens a
new WAITING claim for the same pause, so the paused trial stays continuable, up to
:data:`MAX_ATTEMPTS` failed continuations. Every claim records the pause's first claim
(``pause_claim``, the id in the paused trial's ``fms:paused``), which is how a reopened claim
is recognised as the pause's own. A claim is never moved back to WAITING: that would let a
worker with a stale view release a claim that another continuation has taken since.

A claim is taken only once its paused trial has stopped (:func:`can_continue`): a trial whose
objective ignored ``should_prune`` is never forked. A worker killed after taking a claim, even
inside ``study.ask`` (before Optuna's heartbeat thread starts), leaves a holder that Optuna's
heartbeat fails: FMSSampler records the holder's first heartbeat before it takes the claim, so
``fail_stale_trials`` sees it, and :func:`recover_claims` then releases the claim.
"""

from __future__ import annotations

from datetime import datetime
from datetime import timedelta
import json
from typing import Any

from optuna.exceptions import DuplicatedStudyError
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
from optuna.trial import create_trial
import sqlalchemy

from optuna_fms import _attrs


_SUFFIX = ":fms-claims"


def claims_study_name(study_name: str) -> str:
    """Name of the companion claims study of the study ``study_name`` (it sorts beside it)."""
    return study_name + _SUFFIX


def claims_study_id(storage: BaseStorage, study_id: int) -> int:
    """Id of the companion study holding claim trials; created on first use.

    The companion study says what it is wherever studies are listed (``optuna studies``,
    optuna-dashboard): its user attribute :data:`~optuna_fms._attrs.CLAIMS_OF` names the
    study it serves.
    """
    study_name = storage.get_study_name_from_id(study_id)
    name = claims_study_name(study_name)
    try:
        claims_id = storage.create_new_study([StudyDirection.MINIMIZE], study_name=name)
    except DuplicatedStudyError:
        return storage.get_study_id_from_name(name)
    storage.set_study_user_attr(claims_id, _attrs.CLAIMS_OF, study_name)
    storage.set_study_user_attr(
        claims_id,
        _attrs.CLAIMS_DESCRIPTION,
        f"optuna-fms bookkeeping of study {study_name!r}: one trial per pause (which paused "
        "trial may be continued, and by which trial). Remove it once the study is done with "
        f"`optuna-fms gc-claims --storage URL --study {study_name}`.",
    )
    return claims_id


def delete_claims_study(storage: BaseStorage, study_name: str) -> str | None:
    """Delete the companion claims study of the study ``study_name`` if it holds no open pause.

    Returns ``None`` when it was deleted (or there was none), else why it was kept: a claim
    still stands for a pause (open, or taken by a running continuation), or a trial of the
    study is running or waiting (it may pause and open a claim in the deleted study). Run it
    once no worker runs the study; a later pause creates a new companion study.
    """
    try:
        claims_id = storage.get_study_id_from_name(claims_study_name(study_name))
    except KeyError:
        return None
    unfinished = (TrialState.WAITING, TrialState.RUNNING)
    standing = storage.get_all_trials(claims_id, deepcopy=False, states=unfinished)
    if standing:
        return f"{len(standing)} paused trial(s) of study {study_name!r} can still be continued"
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        study_id = None
    if study_id is not None and storage.get_all_trials(
        study_id, deepcopy=False, states=unfinished
    ):
        return f"study {study_name!r} has running or waiting trials"
    storage.delete_study(claims_id)
    return None


def open_claim(
    storage: BaseStorage,
    claims_id: int,
    paused: FrozenTrial,
    step: int,
    *,
    reopens: FrozenTrial | None = None,
    failed: int = 0,
) -> int:
    """Create a WAITING claim trial for ``paused``, continuable from ``step``.

    ``reopens`` is the claim this one replaces after ``failed`` continuations of the same
    pause failed (see :func:`release_claim`).
    """
    record = _attrs.ClaimRecord(
        trial_id=paused._trial_id,
        step=step,
        trial_number=paused.number,
        pause_claim=None if reopens is None else pause_claim(reopens),
        failed_continuations=failed,
    )
    template = create_trial(state=TrialState.WAITING, user_attrs=record.to_json())
    return storage.create_new_trial(claims_id, template_trial=template)


def pause_claim(claim: FrozenTrial) -> int:
    """The pause's first claim, recorded in the paused trial's ``fms:paused``."""
    record = _attrs.read_claim(claim.user_attrs)
    first = None if record is None else record.pause_claim
    return first if first is not None else claim._trial_id


def open_claims(storage: BaseStorage, claims_id: int) -> list[FrozenTrial]:
    """Claim trials not yet taken: each stands for one continuable paused trial."""
    return _claims_in(storage, claims_id, TrialState.WAITING)


def _claims_in(storage: BaseStorage, claims_id: int, state: TrialState) -> list[FrozenTrial]:
    """The claim trials in ``state``, with their user attributes.

    On RDB one query: Optuna's cached storage re-reads every unfinished trial of a study with
    all its attributes on each ``get_all_trials``, and a study's open claims only grow (a
    paused trial that is never continued keeps its claim), which made each read cost a few
    queries per open claim.
    """
    rdb = _rdb_backend(storage)
    if rdb is None:
        return storage.get_all_trials(claims_id, deepcopy=False, states=(state,))
    statement = sqlalchemy.text(
        "SELECT t.trial_id, t.number, a.key, a.value_json FROM trials t "
        "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
        "WHERE t.study_id = :study_id AND t.state = :state ORDER BY t.trial_id"
    )
    rows: dict[int, tuple[int, dict[str, Any]]] = {}
    with rdb.engine.connect() as connection:
        for trial_id, number, key, value in connection.execute(
            statement, {"study_id": claims_id, "state": state.name}
        ):
            _, attrs = rows.setdefault(trial_id, (number, {}))
            if key is not None:
                attrs[key] = json.loads(value)
    return [
        FrozenTrial(
            number=number,
            state=state,
            value=None,
            datetime_start=None,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs=attrs,
            system_attrs={},
            intermediate_values={},
            trial_id=trial_id,
        )
        for trial_id, (number, attrs) in rows.items()
    ]


def open_claim_of(storage: BaseStorage, claims_id: int, paused: FrozenTrial) -> FrozenTrial | None:
    """The open claim of ``paused``'s pause (as recorded in its ``fms:paused``), if any."""
    pause = _attrs.read_pause(paused.user_attrs)
    if pause is None or pause.claim is None:
        return None
    for claim in open_claims(storage, claims_id):
        if _paused_id(claim) == paused._trial_id and pause_claim(claim) == pause.claim:
            return claim
    return None


def _rdb_backend(storage: BaseStorage) -> RDBStorage | None:
    backend = getattr(storage, "_backend", storage)  # Unwrap Optuna's _CachedStorage.
    return backend if isinstance(backend, RDBStorage) else None


def _compare_and_set_running(storage: BaseStorage, claim_id: int) -> bool:
    return _compare_and_set(storage, claim_id, TrialState.WAITING, TrialState.RUNNING)


def _compare_and_set(
    storage: BaseStorage, claim_id: int, old: TrialState, new: TrialState
) -> bool:
    """Move a claim from ``old`` to ``new``; ``True`` for exactly one of concurrent callers.

    Two moves are used: WAITING -> RUNNING (take or withdraw) and RUNNING -> a finished state
    (close). Storages refuse to start a trial that is not WAITING and to finish a finished
    one, atomically (row lock, log order, lock); on RDB one conditional ``UPDATE`` does it.
    """
    rdb = _rdb_backend(storage)
    if rdb is None:
        try:
            if new == TrialState.RUNNING:
                return storage.set_trial_state_values(claim_id, TrialState.RUNNING)
            # A RUNNING claim never goes back to WAITING: once it was seen RUNNING, only a
            # concurrent close can come first, and the storage refuses the second close.
            if storage.get_trial(claim_id).state != old:
                return False
            storage.set_trial_state_values(claim_id, new)
            return True
        except UpdateFinishedTrialError:
            return False
    column = "datetime_start" if new == TrialState.RUNNING else "datetime_complete"
    statement = sqlalchemy.text(
        f"UPDATE trials SET state = :new, {column} = :now "
        "WHERE trial_id = :trial_id AND state = :old"
    )
    with rdb.engine.begin() as connection:
        result = connection.execute(
            statement,
            {"new": new.name, "old": old.name, "now": datetime.now(), "trial_id": claim_id},
        )
        return result.rowcount == 1


def is_claim_of(storage: BaseStorage, claim_id: int, paused: FrozenTrial) -> bool:
    """Whether ``claim_id`` is a claim opened for the trial ``paused``."""
    try:
        claim = storage.get_trial(claim_id)
    except KeyError:
        return False
    return _paused_id(claim) == paused._trial_id


def _paused_id(claim: FrozenTrial) -> int | None:
    """The storage id of the paused trial ``claim`` stands for (``None`` if malformed)."""
    record = _attrs.read_claim(claim.user_attrs)
    return None if record is None else record.trial_id


def withdraw_claim(storage: BaseStorage, claim_id: int) -> bool:
    """Close an open claim nobody took (its trial went on); ``False`` if it was taken."""
    if not _compare_and_set_running(storage, claim_id):
        return False
    storage.set_trial_user_attr(claim_id, _attrs.CLAIM_WITHDRAWN, True)
    storage.set_trial_state_values(claim_id, TrialState.FAIL)
    return True


def can_continue(storage: BaseStorage, claim: FrozenTrial) -> bool:
    """Whether the paused trial of the open ``claim`` has stopped at the claim's step, so that
    a continuation may start from its checkpoint there.

    ``False`` while the paused trial is still RUNNING: between ``should_prune`` returning
    ``True`` and the trial becoming PRUNED, and for as long as an objective that ignored the
    pause goes on. The claim then stays open: the trial's next ``should_prune`` or its end
    withdraws it (an ignored pause), or it becomes PRUNED and the claim can be taken later.
    (A report cannot be hooked: ``Trial.report`` calls nothing but the storage.) A claim whose
    paused trial finished otherwise (COMPLETE, or it reported past the claim's step) is
    withdrawn here, since no continuation may fork a trial that went on.
    """
    record = _attrs.read_claim(claim.user_attrs)
    if record is None:
        return False
    try:
        paused = storage.get_trial(record.trial_id)
    except KeyError:
        return False
    if paused.state == TrialState.RUNNING:
        return False
    stopped = paused.state in (TrialState.PRUNED, TrialState.FAIL)
    if stopped and paused.last_step == record.step:
        return True
    withdraw_claim(storage, claim._trial_id)
    return False


MAX_ATTEMPTS = 2
"""Continuations of one pause that may fail before the paused trial is given up."""


def take_claim(storage: BaseStorage, claim_id: int, child: FrozenTrial) -> bool:
    """Atomically take a claim for ``child``; ``False`` if another worker was first.

    The claim stays RUNNING while ``child`` runs: :func:`finish_claim` closes it once the
    continuation finished, :func:`release_claim` closes it and opens a new claim for the same
    pause if the continuation failed.
    """
    if not _compare_and_set_running(storage, claim_id):
        return False
    storage.set_trial_user_attr(claim_id, _attrs.CLAIM_HOLDER_NUMBER, child.number)
    storage.set_trial_user_attr(claim_id, _attrs.CLAIM_HOLDER, child._trial_id)
    return True


def is_held_by(storage: BaseStorage, claim_id: int, child_id: int) -> bool:
    """Whether the trial with storage id ``child_id`` took the claim ``claim_id`` (and it was
    not released since)."""
    try:
        claim = storage.get_trial(claim_id)
    except KeyError:
        return False
    held = claim.state in (TrialState.RUNNING, TrialState.PRUNED, TrialState.COMPLETE)
    return held and _attrs.read_claim_holder(claim.user_attrs) == child_id


def finish_claim(storage: BaseStorage, claim_id: int) -> bool:
    """Close the claim whose holder finished: the paused trial has been continued.

    ``False`` when the claim was closed already (its holder had been marked failed).
    """
    return _compare_and_set(storage, claim_id, TrialState.RUNNING, TrialState.PRUNED)


def release_claim(storage: BaseStorage, claims_id: int, claim: FrozenTrial) -> bool:
    """Close the claim of a failed continuation and open the pause again; ``False`` if another
    caller closed it first.

    Of concurrent callers (the failed trial's own worker, workers that found it failed by the
    heartbeat) only the one that moves the claim from RUNNING to FAIL opens the new claim.
    After :data:`MAX_ATTEMPTS` failed continuations of the same pause none is opened (a
    continuation that fails every time, e.g. on a checkpoint that no longer fits the model,
    must not take every later trial).
    """
    if not _compare_and_set(storage, claim._trial_id, TrialState.RUNNING, TrialState.FAIL):
        return False
    record = _attrs.read_claim(claim.user_attrs)
    if record is None:
        return True
    failed = record.failed_continuations + 1
    if failed >= MAX_ATTEMPTS:
        return True
    paused = storage.get_trial(record.trial_id)
    open_claim(storage, claims_id, paused, record.step, reopens=claim, failed=failed)
    return True


def recover_claims(storage: BaseStorage, claims_id: int) -> int:
    """Close the claims whose holder finished without closing them; the number closed.

    A worker killed during a continuation never runs the sampler's ``after_trial``: its trial
    stays RUNNING until Optuna's heartbeat (``fail_stale_trials``) or a person marks it FAIL,
    and its claim stays RUNNING. Each such claim is released (:func:`release_claim`) when the
    holder failed, and completed when it finished otherwise. A claim that a killed worker had
    moved to RUNNING without recording its holder (killed between the two writes of
    :func:`take_claim` or :func:`withdraw_claim`) is released once it has been so for longer
    than the storage's heartbeat grace period (never without a heartbeat, as Optuna never
    fails a dead worker's trial then); a withdrawn pause it reopens is withdrawn again when a
    sampler would take it (:func:`can_continue`). Safe to run in every worker at once: each
    claim is closed by one of them.
    """
    closed = 0
    for claim in _claims_in(storage, claims_id, TrialState.RUNNING):
        holder = _attrs.read_claim_holder(claim.user_attrs)
        if holder is None:
            # Being taken or withdrawn right now, or the worker doing it was killed in between.
            if _orphaned(storage, claim):
                closed += release_claim(storage, claims_id, claim)
            continue
        try:
            state = storage.get_trial(holder).state
        except KeyError:
            continue
        if not state.is_finished():
            continue
        if state == TrialState.FAIL:
            closed += release_claim(storage, claims_id, claim)
        else:
            closed += finish_claim(storage, claim._trial_id)
    return closed


def _orphaned(storage: BaseStorage, claim: FrozenTrial) -> bool:
    """Whether the RUNNING ``claim`` without a holder has been so for longer than the
    storage's heartbeat grace period: the worker that moved it was killed."""
    grace = _grace_period_s(storage)
    if grace is None:
        return False
    try:
        started = storage.get_trial(claim._trial_id).datetime_start
    except KeyError:
        return False
    if started is None:
        return False
    # RDB storages keep naive local times (as this module's compare-and-set writes them),
    # the journal aware UTC ones.
    now = datetime.now(started.tzinfo) if started.tzinfo is not None else datetime.now()
    return now - started > timedelta(seconds=grace)


def _grace_period_s(storage: BaseStorage) -> float | None:
    """Optuna's heartbeat grace period of ``storage`` in seconds; ``None`` without heartbeat."""
    if not is_heartbeat_enabled(storage):
        return None
    interval = storage.get_heartbeat_interval()  # type: ignore[attr-defined]
    grace = getattr(getattr(storage, "_backend", storage), "grace_period", None)
    return float(grace if grace is not None else 2 * interval)
