"""The freeze-thaw module's API (optuna_fms._freeze_thaw), driven directly on storages.

Run this file first when changing optuna_fms/_freeze_thaw/: the stories (a real objective
paused and continued, killed workers, many workers) are tests/test_freeze_thaw.py,
tests/test_freeze_thaw_defects.py and tests/test_many_workers.py.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest
import workers

from optuna_fms import _attrs
from optuna_fms._freeze_thaw import MAX_ATTEMPTS
from optuna_fms._freeze_thaw import FreezeThaw
from optuna_fms._freeze_thaw import _claims


def _study(storage: BaseStorage | str | None = None) -> tuple[optuna.Study, FreezeThaw]:
    study = optuna.create_study(storage=storage)
    return study, FreezeThaw(study._storage, study._study_id)


def _frozen(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    return study._storage.get_trial(trial._trial_id)


def _paused_at(
    study: optuna.Study, ft: FreezeThaw, step: int = 2, *, checkpoint: bool = True
) -> FrozenTrial:
    """A trial that reported up to ``step`` (with its checkpoint there), paused there, PRUNED."""
    trial = study.ask()
    for s in range(step + 1):
        trial.report(float(s), s)
    if checkpoint:
        trial.set_user_attr(_attrs.CHECKPOINTS, {str(step): f"ckpt-{trial.number}"})
    ft.pause(_frozen(study, trial))
    study.tell(trial, state=TrialState.PRUNED)
    return _frozen(study, trial)


def _take_open(study: optuna.Study, ft: FreezeThaw) -> FrozenTrial:
    """A new trial that takes the study's only open pause."""
    paused = {t._trial_id: t for t in study._storage.get_all_trials(study._study_id)}
    ((claim, parent),) = ft.open_pauses(paused)
    child = _frozen(study, study.ask())
    assert ft.take(child, claim, parent, heartbeat=False)
    return child


def _claim_states(ft: FreezeThaw, study: optuna.Study) -> list[TrialState]:
    return [c.state for c in study._storage.get_all_trials(ft.claims_id)]


# ---------------------------------------------------------------------------------- pauses


def test_a_pause_with_its_checkpoint_opens_one_claim() -> None:
    study, ft = _study()
    trial = study.ask()
    trial.report(0.1, 0)
    trial.set_user_attr(_attrs.CHECKPOINTS, {"0": "a"})
    assert not ft.continuable(_frozen(study, trial), 1)
    assert ft.continuable(_frozen(study, trial), 0)
    assert ft.pause(_frozen(study, trial)) is False  # continuable: waits for nothing
    pause = _attrs.read_pause(_frozen(study, trial).user_attrs)
    assert pause is not None and pause.step == 0 and pause.claim is not None
    ft.pause(_frozen(study, trial))  # asked again at the same step: the same claim
    (claim,) = ft.open_claims()
    assert claim._trial_id == pause.claim
    assert _attrs.read_claim(claim.user_attrs) == _attrs.ClaimRecord(
        trial_id=trial._trial_id, step=0, trial_number=0
    )
    # Not continuable while the paused trial still runs.
    assert not ft.take(_frozen(study, study.ask()), claim, _frozen(study, trial), heartbeat=False)


def test_a_pause_without_its_checkpoint_waits_for_it() -> None:
    study, ft = _study()
    trial = study.ask()
    trial.report(0.1, 3)
    assert ft.pause(_frozen(study, trial)) is True
    assert _frozen(study, trial).user_attrs[_attrs.PAUSED] == {"step": 3}
    assert ft.open_claims() == []
    trial.set_user_attr(_attrs.CHECKPOINTS, {"3": "a"})
    assert ft.pause(_frozen(study, trial)) is False
    assert len(ft.open_claims()) == 1


def test_a_later_pause_withdraws_the_earlier_claim_and_going_on_withdraws_it() -> None:
    study, ft = _study()
    trial = study.ask()
    trial.set_user_attr(_attrs.CHECKPOINTS, {"0": "a", "1": "b"})
    trial.report(0.1, 0)
    ft.pause(_frozen(study, trial))
    first = ft.open_claims()[0]._trial_id
    trial.report(0.2, 1)  # the objective went on after the pause
    ft.pause(_frozen(study, trial))
    (second,) = ft.open_claims()
    assert second._trial_id != first
    assert _frozen(study, trial).user_attrs[_attrs.PAUSED]["claim"] == second._trial_id
    ft.go_on(_frozen(study, trial))
    assert ft.open_claims() == []
    assert _frozen(study, trial).user_attrs[_attrs.PAUSED] == {"step": 1}
    assert study._storage.get_trial(second._trial_id).user_attrs[_attrs.CLAIM_WITHDRAWN]


@pytest.mark.parametrize(
    ("state", "withdrawn"),
    [(TrialState.COMPLETE, True), (TrialState.FAIL, True), (TrialState.PRUNED, False)],
)
def test_a_trial_that_ends_without_stopping_at_its_pause_withdraws_the_claim(
    state: TrialState, withdrawn: bool
) -> None:
    study, ft = _study()
    trial = study.ask()
    trial.set_user_attr(_attrs.CHECKPOINTS, {"0": "a"})
    trial.report(0.1, 0)
    ft.pause(_frozen(study, trial))
    if state != TrialState.PRUNED:
        trial.report(0.2, 1)  # ignored the pause
    ft.end_pause(_frozen(study, trial), state)
    assert (ft.open_claims() == []) == withdrawn


def test_continuation_off_closes_every_pause() -> None:
    study, ft = _study()
    paused = _paused_at(study, ft)
    study._storage.set_study_system_attr(study._study_id, _attrs.CONTINUATION_OFF, True)
    assert ft.continuation_off() and ft.nothing_to_continue()
    assert not ft.continuable(paused, 2)
    assert ft.open_pauses({paused._trial_id: paused}) == []
    later = study.ask()
    later.report(0.0, 0)
    later.set_user_attr(_attrs.CHECKPOINTS, {"0": "a"})
    assert ft.pause(_frozen(study, later)) is False  # a final stop, no claim
    assert _frozen(study, later).user_attrs[_attrs.PAUSED] == {"step": 0}


def test_open_pauses_only_for_the_recorded_pause() -> None:
    study, ft = _study()
    paused = _paused_at(study, ft)
    assert not ft.nothing_to_continue()
    ((claim, parent),) = ft.open_pauses({paused._trial_id: paused})
    assert parent is paused
    assert ft.open_pauses({}) == []  # the paused trial is not among those asked about
    # A claim the trial's record does not name (a stale one) does not stand for it.
    _claims.open_claim(study._storage, ft.claims_id, paused, 2)
    assert [c for c, _ in ft.open_pauses({paused._trial_id: paused})] == [claim]


# ---------------------------------------------------------------------------- continuations


def test_one_continuation_takes_a_pause_and_closes_it() -> None:
    study, ft = _study()
    paused = _paused_at(study, ft)
    child = _take_open(study, ft)
    link = ft.continuation_of(child._trial_id)
    assert link == _attrs.Continuation(
        trial=paused.number, trial_id=paused._trial_id, step=2, claim=link.claim
    )
    assert child.user_attrs[_attrs.CONTINUES] == link.to_json()  # on the FrozenTrial too
    assert ft.holds(child._trial_id, link)
    assert ft.open_claims() == [] and ft.nothing_to_continue()
    ft.record_resumed(child._trial_id)
    assert ft.end_continuation(_frozen(study, child), TrialState.COMPLETE) is None
    assert _claim_states(ft, study) == [TrialState.PRUNED]
    assert not ft.continuation_off()


def test_a_continuation_that_never_resumed_turns_continuation_off() -> None:
    study, ft = _study()
    paused = _paused_at(study, ft)
    child = _take_open(study, ft)
    unresumed = ft.end_continuation(_frozen(study, child), TrialState.COMPLETE)
    assert unresumed is not None and unresumed.trial == paused.number
    assert ft.continuation_off()


def test_a_failed_continuation_reopens_the_pause_up_to_max_attempts() -> None:
    study, ft = _study()
    paused = _paused_at(study, ft)
    first_claim = _attrs.read_pause(paused.user_attrs).claim
    for attempt in range(MAX_ATTEMPTS):
        child = _take_open(study, ft)
        ft.record_resume_failed(child._trial_id, "unreadable")
        assert ft.end_continuation(_frozen(study, child), TrialState.FAIL) is None
        reopened = ft.open_claims()
        if attempt + 1 < MAX_ATTEMPTS:
            (claim,) = reopened
            assert _claims.pause_claim(claim) == first_claim
        else:
            assert reopened == []
    assert not ft.continuation_off()  # a failure says nothing about the objective


def test_recover_releases_the_claim_of_a_continuation_whose_worker_died() -> None:
    study, ft = _study()
    _paused_at(study, ft)
    child = _take_open(study, ft)
    assert ft.recover() == 0  # still running
    study._storage.set_trial_state_values(child._trial_id, TrialState.FAIL)  # the heartbeat
    assert ft.recover() == 1
    assert ft.recover() == 0
    assert _claim_states(ft, study) == [TrialState.FAIL, TrialState.WAITING]


def test_a_retry_disowns_copied_records_and_retakes_the_released_pause() -> None:
    study, ft = _study()
    paused = _paused_at(study, ft)
    failed = _take_open(study, ft)
    study._storage.set_trial_param(
        failed._trial_id, "x", 0.0, optuna.distributions.FloatDistribution(0, 1)
    )
    study._storage.set_trial_state_values(failed._trial_id, TrialState.FAIL)
    ft.recover()
    # What RetryHeartbeatStaleTrialCallback does: a new trial with every attribute copied.
    copy = optuna.trial.create_trial(
        state=TrialState.WAITING,
        params={"x": 0.0},
        distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        user_attrs=_frozen(study, failed).user_attrs,
        system_attrs={_attrs.PROPOSAL: _attrs.proposal_json({"x": 0.0})},
    )
    retry = study._storage.get_trial(study._storage.create_new_trial(study._study_id, copy))
    link = ft.continuation_of(retry._trial_id)
    assert link is not None and not ft.holds(retry._trial_id, link)  # a copy: no claim held
    copied = ft.disown_copied(retry)
    assert copied == link
    assert ft.continuation_of(retry._trial_id) is None
    assert ft.proposal(retry._trial_id) is None
    # Different parameters from the paused trial: it trains them from step 0.
    assert not ft.retake(_frozen(study, retry), copied, heartbeat=False)
    # The paused trial's own parameters: it continues the paused trial again.
    assert paused.params == {}
    same = study._storage.get_trial(
        study._storage.create_new_trial(
            study._study_id, optuna.trial.create_trial(state=TrialState.WAITING)
        )
    )
    assert ft.retake(same, copied, heartbeat=False)
    assert ft.proposal(same._trial_id) == {}
    assert ft.holds(same._trial_id, ft.continuation_of(same._trial_id))


def test_a_retry_that_never_resumes_turns_continuation_off_despite_a_copied_failure() -> None:
    """The failed attempt's ``fms:resume_failed`` is copied to the retry and disowned (set to
    None): the retry's own objective never called resume, which must still switch
    continuations off (a key that is present but None is no record)."""
    study, ft = _study()
    paused = _paused_at(study, ft)
    failed = _take_open(study, ft)
    ft.record_resume_failed(failed._trial_id, "unreadable")
    study._storage.set_trial_state_values(failed._trial_id, TrialState.FAIL)
    ft.recover()
    copy = optuna.trial.create_trial(
        state=TrialState.WAITING,
        user_attrs=_frozen(study, failed).user_attrs,
        system_attrs={_attrs.PROPOSAL: _attrs.proposal_json({})},
    )
    retry = study._storage.get_trial(study._storage.create_new_trial(study._study_id, copy))
    copied = ft.disown_copied(retry)
    assert _frozen(study, retry).user_attrs[_attrs.RESUME_FAILED] is None
    assert copied is not None and ft.retake(_frozen(study, retry), copied, heartbeat=False)
    unresumed = ft.end_continuation(_frozen(study, retry), TrialState.COMPLETE)
    assert unresumed is not None and unresumed.trial == paused.number
    assert ft.continuation_off()


def test_proposal_restart_and_forecast_records() -> None:
    study, ft = _study()
    furthest = study.ask()
    furthest.report(0.3, 4)
    study.tell(furthest, state=TrialState.PRUNED)
    trial = study.ask()
    ft.propose(trial._trial_id, {"x": 0.25, "c": "a"})
    assert ft.proposal(trial._trial_id) == {"x": 0.25, "c": "a"}
    ft.record_restart(trial._trial_id, _frozen(study, furthest))
    assert _attrs.read_restart_step(_frozen(study, trial).system_attrs) == 4
    ft.record_forecast(trial._trial_id, _attrs.ForecastRecord(step=1, mean=0.5, std=0.1))
    assert _attrs.read_forecast(_frozen(study, trial).user_attrs) == _attrs.ForecastRecord(
        1, 0.5, 0.1
    )


# ---------------------------------------------------------- claims across processes (storage)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_claims_are_atomic_across_processes(tmp_path: Path, kind: str) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'claims.db'}"
    else:
        url = f"journal:{tmp_path / 'claims.log'}"
    study = optuna.create_study(study_name="race", storage=workers.make_storage(url))
    study.ask()
    storage = study._storage
    claims_id = _claims.claims_study_id(storage, study._study_id)
    parent = storage.get_all_trials(study._study_id)[0]
    claim_ids = [_claims.open_claim(storage, claims_id, parent, 0) for _ in range(40)]
    ctx = multiprocessing.get_context("spawn")
    outs = [str(tmp_path / f"won{i}.txt") for i in range(4)]
    procs = [
        ctx.Process(target=workers.race_for_claims, args=(url, study._study_id, claim_ids, o))
        for o in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    won = [int(c) for o in outs for c in Path(o).read_text().split(",") if c]
    assert sorted(won) == sorted(claim_ids)


def _failed_continuations(storage, n: int) -> tuple[int, list[int]]:
    study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "race")
    claims_id = _claims.claims_study_id(storage, study_id)
    paused = storage.get_trial(storage.create_new_trial(study_id))
    claim_ids = []
    for _ in range(n):
        claim_id = _claims.open_claim(storage, claims_id, paused, 0)
        holder = storage.get_trial(storage.create_new_trial(study_id))
        assert _claims.take_claim(storage, claim_id, holder)
        storage.set_trial_state_values(holder._trial_id, TrialState.FAIL)  # As the heartbeat.
        claim_ids.append(claim_id)
    return claims_id, claim_ids


def _storage_specs(tmp_path: Path) -> list[str]:
    specs = [f"sqlite:///{tmp_path / 'claims.db'}", f"journal:{tmp_path / 'claims.log'}"]
    url = workers.postgres_url(required=False)
    return specs if url is None else [*specs, url]


def test_claims_of_failed_continuations_are_released_once_across_processes(
    tmp_path: Path,
) -> None:
    jobs = []
    for spec in _storage_specs(tmp_path):
        storage = workers.make_storage(spec)
        if spec.startswith("postgresql"):
            for name in ("race", "race:fms-claims"):
                try:
                    optuna.delete_study(study_name=name, storage=storage)
                except KeyError:
                    pass
        jobs.append((spec, *_failed_continuations(storage, 30)))
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"closed{k}.json" for k in range(4)]
    todo = [(spec, claims_id) for spec, claims_id, _ in jobs]
    procs = [ctx.Process(target=workers.recover_claims, args=(todo, str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    closed = [json.loads(o.read_text()) for o in outs]
    for k, (spec, claims_id, claim_ids) in enumerate(jobs):
        # Each claim was closed by exactly one process, which opened exactly one new claim.
        assert sum(c[k] for c in closed) == len(claim_ids), spec
        storage = workers.make_storage(spec)
        assert all(storage.get_trial(c).state == TrialState.FAIL for c in claim_ids)
        claims = storage.get_all_trials(claims_id)
        reopened = [c for c in claims if c.state == TrialState.WAITING]
        assert sorted(_claims.pause_claim(c) for c in reopened) == sorted(claim_ids), spec
