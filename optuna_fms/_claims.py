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
"""

from __future__ import annotations

from datetime import datetime
import json
from typing import Any

from optuna.exceptions import DuplicatedStudyError
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
from optuna.trial import create_trial
import sqlalchemy

from optuna_fms import _attrs


_SUFFIX = ":fms-claims"


def claims_study_id(storage: BaseStorage, study_id: int) -> int:
    """Id of the companion study holding claim trials; created on first use."""
    name = storage.get_study_name_from_id(study_id) + _SUFFIX
    try:
        return storage.create_new_study([StudyDirection.MINIMIZE], study_name=name)
    except DuplicatedStudyError:
        return storage.get_study_id_from_name(name)


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
    user_attrs = {"trial_id": paused._trial_id, "trial_number": paused.number, "step": step}
    if reopens is not None:
        user_attrs["pause_claim"] = pause_claim(reopens)
        user_attrs["failed_continuations"] = failed
    template = create_trial(state=TrialState.WAITING, user_attrs=user_attrs)
    return storage.create_new_trial(claims_id, template_trial=template)


def pause_claim(claim: FrozenTrial) -> int:
    """The pause's first claim, recorded in the paused trial's ``fms:paused``."""
    first = claim.user_attrs.get("pause_claim")
    return first if isinstance(first, int) else claim._trial_id


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
        if (
            claim.user_attrs.get("trial_id") == paused._trial_id
            and pause_claim(claim) == pause.claim
        ):
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
    continuation finished, :func:`release_claim` closes it and opens a new claim for the same
    pause if the continuation failed.
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
    held = claim.state in (TrialState.RUNNING, TrialState.PRUNED, TrialState.COMPLETE)
    return held and claim.user_attrs.get("continued_by_id") == child_id


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
    failed = claim.user_attrs.get("failed_continuations", 0) + 1
    if failed >= MAX_ATTEMPTS:
        return True
    paused = storage.get_trial(claim.user_attrs["trial_id"])
    open_claim(
        storage,
        claims_id,
        paused,
        claim.user_attrs["step"],
        reopens=claim,
        failed=failed,
    )
    return True


def recover_claims(storage: BaseStorage, claims_id: int) -> int:
    """Close the claims whose holder finished without closing them; the number closed.

    A worker killed during a continuation never runs the sampler's ``after_trial``: its trial
    stays RUNNING until Optuna's heartbeat (``fail_stale_trials``) or a person marks it FAIL,
    and its claim stays RUNNING. Each such claim is released (:func:`release_claim`) when the
    holder failed, and completed when it finished otherwise. Safe to run in every worker at
    once: each claim is closed by one of them.
    """
    closed = 0
    for claim in _claims_in(storage, claims_id, TrialState.RUNNING):
        holder = claim.user_attrs.get("continued_by_id")
        if not isinstance(holder, int):
            continue  # Being taken or withdrawn right now.
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
