from __future__ import annotations

from collections.abc import Mapping
import json
from typing import Any

from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms import _attrs
from optuna_fms._freeze_thaw import _claims


class FreezeThaw:
    """Freeze-thaw of one study, through its storage: pauses, claims and continuations.

    Every record FMS keeps on a study's trials goes through this class: the pause of a trial
    (and the claim that lets one continuation take it up), the continuation of a paused
    trial (the claim taken, ``fms:continues``, the end of the continuation), the claims of
    continuations whose worker died, the records a retried trial copied from the failed one,
    and the sampler's and pruner's records (the proposal, a restart, the pruner's forecast).
    :class:`~optuna_fms.FMSSampler` and :class:`~optuna_fms.FMSPruner` call it from Optuna's
    hooks; the claims themselves are trials of a companion study (:mod:`._claims`).

    It holds no state beyond the id of the claims study: every worker builds its own, and
    they agree through the storage.

    Parameters
    ----------
    storage:
        The study's storage.
    study_id:
        The study's id in ``storage``.

    Examples
    --------
    A trial paused at step 1 with a checkpoint there opens a claim; a continuation takes it
    and says which trial it continues; its end closes the claim:

    >>> import optuna
    >>> from optuna.trial import TrialState
    >>> study = optuna.create_study()
    >>> ft = FreezeThaw(study._storage, study._study_id)
    >>> parent = study.ask()
    >>> parent.report(0.5, 1)
    >>> parent.set_user_attr("fms:checkpoints", {"1": "artifact-id"})
    >>> ft.pause(study._storage.get_trial(parent._trial_id))
    False
    >>> _ = study.tell(parent, state=TrialState.PRUNED)
    >>> (claim, paused), = ft.open_pauses({parent._trial_id: study.trials[0]})
    >>> child = study.ask()
    >>> ft.take(study._storage.get_trial(child._trial_id), claim, paused, heartbeat=False)
    True
    >>> link = ft.continuation_of(child._trial_id)
    >>> link.trial, link.step, link.claim == claim._trial_id
    (0, 1, True)
    >>> ft.open_claims()
    []
    >>> ft.record_resumed(child._trial_id)
    >>> ft.end_continuation(study._storage.get_trial(child._trial_id), TrialState.COMPLETE)
    >>> study._storage.get_trial(claim._trial_id).state.name
    'PRUNED'
    """

    def __init__(self, storage: BaseStorage, study_id: int) -> None:
        self._storage = storage
        self._study_id = study_id
        self._claims_id: int | None = None

    @property
    def claims_id(self) -> int:
        """Id of the study's companion claims study (created on first use)."""
        if self._claims_id is None:
            self._claims_id = _claims.claims_study_id(self._storage, self._study_id)
        return self._claims_id

    # ------------------------------------------------------------------ the study
    def trial(self, trial_id: int) -> FrozenTrial:
        """The study's trial with storage id ``trial_id``, as stored now (for the pruner, which
        reads a trial by id outside Optuna's hooks). Raises :class:`KeyError` if there is none.
        """
        return self._storage.get_trial(trial_id)

    def continuation_off(self) -> bool:
        """Whether continuations are off for the study: an objective finished a continued
        trial without calling :func:`~optuna_fms.resume` (see :meth:`end_continuation`)."""
        return _attrs.read_continuation_off(self._storage.get_study_system_attrs(self._study_id))

    def open_claims(self) -> list[FrozenTrial]:
        """The claims nobody has taken (claim trials; see :mod:`._claims`)."""
        return _claims.open_claims(self._storage, self.claims_id)

    def open_pauses(
        self, trials: Mapping[int, FrozenTrial]
    ) -> list[tuple[FrozenTrial, FrozenTrial]]:
        """The open claims that stand for a pause of one of ``trials`` (by storage id), each
        with its paused trial: what a continuation may take. Only the claim of the pause the
        trial records (or a claim that reopens it) stands for it. Empty with continuations
        off."""
        if self.continuation_off():
            return []
        out = []
        for claim in self.open_claims():
            record = _attrs.read_claim(claim.user_attrs)
            paused = None if record is None else trials.get(record.trial_id)
            if paused is None:
                continue
            pause = _attrs.read_pause(paused.user_attrs)
            if pause is not None and pause.claim == _claims.pause_claim(claim):
                out.append((claim, paused))
        return out

    def nothing_to_continue(self) -> bool:
        """Whether no paused trial can be continued: continuations are off or no claim is
        open."""
        return self.continuation_off() or not self.open_claims()

    # ------------------------------------------------------------------ pauses (the pruner)
    def continuable(self, trial: FrozenTrial, step: int) -> bool:
        """Whether a pause of ``trial`` at ``step`` could be continued: its checkpoint at
        ``step`` is recorded and the study's continuations are on."""
        if step not in _attrs.read_checkpoints(trial.user_attrs):
            return False
        return not self.continuation_off()

    def pause(self, trial: FrozenTrial) -> bool:
        """Record the running ``trial`` as paused at its last step, continuable (a claim
        opened) if its checkpoint there is recorded; whether the pause waits for that
        checkpoint (recorded without a claim only because the checkpoint is not saved yet:
        calling this again once it is opens the claim).

        One pause opens at most one claim: pausing again at the same step keeps the claim
        already open, and pausing at a later step (the objective went on after an earlier
        pause) first withdraws the earlier claim. If that claim was already taken, the trial
        is being continued and no second claim is opened.
        """
        storage = self._storage
        step = trial.last_step
        assert step is not None
        user_attrs = storage.get_trial_user_attrs(trial._trial_id)
        previous = _attrs.read_pause(user_attrs)
        if (
            previous is not None
            and previous.claim is not None
            and _claims.is_claim_of(storage, previous.claim, trial)
        ):
            if previous.step == step:
                return False
            if not self._withdraw(trial, previous):
                return False
        claim = None
        off = self.continuation_off()
        if step in _attrs.read_checkpoints(user_attrs) and not off:
            claim = _claims.open_claim(storage, self.claims_id, trial, step)
        pause = _attrs.Pause(step=step, claim=claim)
        storage.set_trial_user_attr(trial._trial_id, _attrs.PAUSED, pause.to_json())
        return claim is None and not off

    def go_on(self, trial: FrozenTrial) -> None:
        """``trial`` keeps running: the claim of an earlier pause (as ``trial`` records it)
        no longer stands for it and is withdrawn, unless it was taken."""
        pause = _attrs.read_pause(trial.user_attrs)
        if pause is not None and pause.claim is not None:
            self._withdraw(trial, pause)

    def end_pause(self, trial: FrozenTrial, state: TrialState) -> None:
        """``trial`` ends in ``state``: withdraw the open claim of a pause it did not stop at.

        A trial whose objective went on after ``should_prune`` returned ``True`` (it logged
        instead of raising) keeps its claim open until its next ``should_prune``; when it
        ends without one (COMPLETE, FAIL, or PRUNED at a later step), its end withdraws the
        claim, so that no continuation forks it.
        """
        pause = _attrs.read_pause(self._storage.get_trial_user_attrs(trial._trial_id))
        if pause is None or pause.claim is None:
            return
        if state == TrialState.PRUNED and trial.last_step == pause.step:
            return  # Paused: the claim stands for the trial's continuation.
        self._withdraw(trial, pause)

    def _withdraw(self, trial: FrozenTrial, pause: _attrs.Pause) -> bool:
        """Withdraw the claim of ``trial``'s ``pause``; ``False`` if it was taken.

        A claim that is not ``trial``'s own (the attribute was copied, e.g. by
        :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`) is left alone.
        """
        assert pause.claim is not None
        if not _claims.is_claim_of(self._storage, pause.claim, trial):
            return True
        if not _claims.withdraw_claim(self._storage, pause.claim):
            return False
        self._storage.set_trial_user_attr(
            trial._trial_id, _attrs.PAUSED, _attrs.Pause(step=pause.step).to_json()
        )
        return True

    def record_forecast(self, trial_id: int, forecast: _attrs.ForecastRecord) -> None:
        """Record the pruner's latest forecast of the trial's final score
        (:data:`~optuna_fms._attrs.FORECAST`)."""
        self._storage.set_trial_user_attr(trial_id, _attrs.FORECAST, forecast.to_json())

    # ------------------------------------------------------------------ new trials (the sampler)
    def disown_copied(self, trial: FrozenTrial) -> _attrs.Continuation | None:
        """Clear the FMS records a trial starts with; the continuation they named, if any.

        A trial owns no checkpoint, pause or continuation when it starts: records it carries
        then were copied from another trial
        (:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` copies every attribute of
        the failed trial, ``add_trial`` and ``enqueue_trial`` take ``user_attrs``). Left in
        place they would make the failed trial's checkpoints this trial's (its retention
        would delete them) and its continuation this trial's. Each is overwritten with
        ``None``; the copied artifact records of those checkpoints are marked removed on this
        trial only, as the dashboard marks a deleted artifact.
        """
        storage = self._storage
        copied = _attrs.set_records(trial.user_attrs)
        proposal = _attrs.PROPOSAL in _attrs.set_records(trial.system_attrs)
        if not copied and not proposal:
            return None
        link = _attrs.read_continuation(trial.user_attrs)
        for artifact_id in _attrs.read_checkpoints(trial.user_attrs).values():
            key = _attrs.artifact_record(artifact_id)
            if trial.system_attrs.get(key) is not None:
                storage.set_trial_system_attr(trial._trial_id, key, json.dumps(None))
        for key in copied:
            storage.set_trial_user_attr(trial._trial_id, key, None)
            trial.set_user_attr(key, None)
        if proposal:
            storage.set_trial_system_attr(trial._trial_id, _attrs.PROPOSAL, None)
        return link

    def recover(self) -> int:
        """Close the claims whose continuation ended without closing them (its worker was
        killed); the number closed (see :func:`._claims.recover_claims`)."""
        return _claims.recover_claims(self._storage, self.claims_id)

    def propose(self, trial_id: int, params: Mapping[str, Any]) -> None:
        """Record the parameters the sampler chose for the trial
        (:data:`~optuna_fms._attrs.PROPOSAL`), which its ``suggest_*`` calls return."""
        self._storage.set_trial_system_attr(
            trial_id, _attrs.PROPOSAL, _attrs.proposal_json(params)
        )

    def proposal(self, trial_id: int) -> dict[str, Any] | None:
        """The parameters recorded by :meth:`propose` for the trial, if any."""
        return _attrs.read_proposal(self._storage.get_trial_system_attrs(trial_id))

    def record_restart(self, trial_id: int, furthest: FrozenTrial) -> None:
        """Record that the trial trains ``furthest``'s configuration again from scratch
        (:data:`~optuna_fms._attrs.RESTART`): the pruner lets it pass the step where
        ``furthest`` was pruned."""
        restart = _attrs.Restart(trial=furthest.number, step=furthest.last_step)
        self._storage.set_trial_system_attr(trial_id, _attrs.RESTART, restart.to_json())

    # ------------------------------------------------------------------ continuations
    def take(
        self, trial: FrozenTrial, claim: FrozenTrial, paused: FrozenTrial, *, heartbeat: bool
    ) -> bool:
        """Take the open ``claim`` for ``trial`` and record that it continues ``paused``
        (:data:`~optuna_fms._attrs.CONTINUES`, in storage and on ``trial``).

        ``False`` when another worker took it first, or while ``paused`` has not stopped at
        the claim's step (see :func:`._claims.can_continue`). With ``heartbeat`` (inside
        ``study.optimize``) and a storage with Optuna's heartbeat, ``trial``'s first
        heartbeat is recorded before the claim is taken: Optuna's heartbeat thread starts
        only once ``ask`` has returned, and ``fail_stale_trials`` skips a trial without one,
        so a worker killed in between would otherwise hold the claim for good.
        """
        storage = self._storage
        if not _claims.can_continue(storage, claim):
            return False
        if heartbeat and is_heartbeat_enabled(storage):
            assert isinstance(storage, BaseHeartbeat)
            storage.record_heartbeat(trial._trial_id)
        if not _claims.take_claim(storage, claim._trial_id, trial):
            return False
        record = _attrs.read_claim(claim.user_attrs)
        assert record is not None  # can_continue read it
        link = _attrs.Continuation(
            trial=paused.number, trial_id=paused._trial_id, step=record.step, claim=claim._trial_id
        )
        storage.set_trial_user_attr(trial._trial_id, _attrs.CONTINUES, link.to_json())
        trial.set_user_attr(_attrs.CONTINUES, link.to_json())
        return True

    def retake(self, trial: FrozenTrial, copied: _attrs.Continuation, *, heartbeat: bool) -> bool:
        """Let a re-run of a continuation (a retry, which copied ``copied``) continue the same
        paused trial, and propose its parameters; whether it does.

        It does when it has the paused trial's own parameters and the pause's claim is open
        (its failed holder released it); otherwise it trains its parameters from step 0.
        """
        if self.continuation_off():
            return False
        try:
            paused = self._storage.get_trial(copied.trial_id)
        except KeyError:
            return False
        if paused.params != trial.params:
            return False
        claim = _claims.open_claim_of(self._storage, self.claims_id, paused)
        record = None if claim is None else _attrs.read_claim(claim.user_attrs)
        if claim is None or record is None or record.step != copied.step:
            return False
        if not self.take(trial, claim, paused, heartbeat=heartbeat):
            return False
        self.propose(trial._trial_id, dict(paused.params))
        return True

    def continuation_of(self, trial_id: int) -> _attrs.Continuation | None:
        """What the trial continues (:data:`~optuna_fms._attrs.CONTINUES`), if anything; see
        :meth:`holds` for whether it took the claim itself."""
        return _attrs.read_continuation(self._storage.get_trial_user_attrs(trial_id))

    def holds(self, trial_id: int, link: _attrs.Continuation) -> bool:
        """Whether the trial took the claim of its continuation ``link`` (and still holds
        it): a retry copies the record of the trial that did, and is no continuation."""
        return link.claim is None or _claims.is_held_by(self._storage, link.claim, trial_id)

    def record_resumed(self, trial_id: int) -> None:
        """Record that the continuation restored its parent's checkpoint
        (:data:`~optuna_fms._attrs.RESUMED`)."""
        self._storage.set_trial_user_attr(trial_id, _attrs.RESUMED, True)

    def record_resume_failed(self, trial_id: int, reason: str) -> None:
        """Record why the continuation could not restore its parent's checkpoint
        (:data:`~optuna_fms._attrs.RESUME_FAILED`; it trains from step 0)."""
        self._storage.set_trial_user_attr(trial_id, _attrs.RESUME_FAILED, reason)

    def end_continuation(
        self, trial: FrozenTrial, state: TrialState
    ) -> _attrs.Continuation | None:
        """``trial`` ends in ``state``: close the claim it holds; the continuation whose
        objective never called :func:`~optuna_fms.resume`, if it is one (continuations are
        then switched off for the study).

        A failed continuation says nothing about the objective: its claim is released and
        the paused trial stays continuable (up to :data:`._claims.MAX_ATTEMPTS` failures).
        """
        storage = self._storage
        attrs = storage.get_trial_user_attrs(trial._trial_id)
        link = _attrs.read_continuation(attrs)
        if link is None or not self.holds(trial._trial_id, link):
            return None  # A copy of another trial's record (a retry): no continuation.
        if state == TrialState.FAIL:
            if link.claim is not None:
                _claims.release_claim(storage, self.claims_id, storage.get_trial(link.claim))
            return None
        if link.claim is not None:
            _claims.finish_claim(storage, link.claim)
        if _attrs.read_resume_attempted(attrs):
            return None
        storage.set_study_system_attr(self._study_id, _attrs.CONTINUATION_OFF, True)
        return link
