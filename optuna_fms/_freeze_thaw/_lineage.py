"""Which trial continues which: freeze-thaw's family tree, read once from a study's trials."""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms import _attrs


class Lineage:
    """The continuation links between a study's trials.

    A continuation is a trial whose :data:`~optuna_fms._attrs.CONTINUES` names a paused
    trial. When it *resumed* (restored the parent's checkpoint), it reported the parent's
    values up to the pause step again, so its curve extends the parent's; otherwise it
    trained the same configuration from scratch.

    Parameters
    ----------
    trials:
        All trials of one study.

    Examples
    --------
    >>> import optuna
    >>> study = optuna.create_study()
    >>> parent = study.ask()
    >>> parent.report(0.5, 0)
    >>> _ = study.tell(parent, state=optuna.trial.TrialState.PRUNED)
    >>> child = study.ask()
    >>> child.set_user_attr("fms:continues", {"trial": 0, "trial_id": parent._trial_id,
    ...                                        "step": 0})
    >>> child.set_user_attr("fms:resumed", True)
    >>> lineage = Lineage(study.trials)
    >>> [[t.number for t in chain] for chain in lineage.chains()]
    [[0, 1]]
    >>> lineage.superseded() == {parent._trial_id}, lineage.copied_steps(study.trials[1])
    (True, 0)
    """

    def __init__(self, trials: Sequence[FrozenTrial]) -> None:
        self._trials = list(trials)
        self._by_id = {t._trial_id: t for t in self._trials}
        by_number = {t.number: t for t in self._trials}
        self._link: dict[int, _attrs.Continuation] = {}
        self._child_of: dict[int, FrozenTrial] = {}
        for t in self._trials:
            link = _attrs.read_continuation(t.user_attrs)
            if link is not None:
                parent = self._by_id.get(link.trial_id)
                if parent is None or parent.number != link.trial:
                    # A copied study (``optuna.copy_study``): trial ids are the storage's own
                    # and change with the copy, trial numbers do not.
                    parent = by_number.get(link.trial)
                    if parent is not None:
                        link = dataclasses.replace(link, trial_id=parent._trial_id)
                self._link[t._trial_id] = link
                if link.trial_id in self._by_id:
                    self._child_of[link.trial_id] = t

    def continuation(self, trial: FrozenTrial) -> _attrs.Continuation | None:
        """What ``trial`` continues, or ``None``."""
        return self._link.get(trial._trial_id)

    def continuations(self) -> list[FrozenTrial]:
        """Trials that continue a paused trial, in order."""
        return [t for t in self._trials if t._trial_id in self._link]

    def child(self, trial: FrozenTrial) -> FrozenTrial | None:
        """The (latest) trial that continues ``trial``, or ``None``."""
        return self._child_of.get(trial._trial_id)

    def copied_steps(self, trial: FrozenTrial) -> int:
        """The last step ``trial`` copied from its parent when it resumed, else ``-1``."""
        link = self._link.get(trial._trial_id)
        if link is None or not _attrs.read_resumed(trial.user_attrs):
            return -1
        return link.step

    def superseded(self) -> set[int]:
        """Ids of paused trials whose curve a resumed continuation carries on (unless that
        continuation failed: its parent is then continued again).

        A parent that did not stop at its pause (COMPLETE, or still RUNNING: its objective
        ignored ``should_prune``) is never superseded: its own curve goes further than the
        continuation's copy of it (continuations of such trials are no longer started; this
        keeps the curves of studies that have one).
        """
        return {
            link.trial_id
            for tid, link in self._link.items()
            if _attrs.read_resumed(self._by_id[tid].user_attrs)
            and self._by_id[tid].state != TrialState.FAIL
            and self._parent_state(link) not in (TrialState.COMPLETE, TrialState.RUNNING)
        }

    def _parent_state(self, link: _attrs.Continuation) -> TrialState | None:
        parent = self._by_id.get(link.trial_id)
        return None if parent is None else parent.state

    def chains(self) -> list[list[FrozenTrial]]:
        """Each configuration's trials: a fresh trial, then the continuations that followed."""
        out = []
        for root in self._trials:
            link = self._link.get(root._trial_id)
            if link is not None and link.trial_id in self._by_id:
                continue  # Part of its parent's chain.
            chain = [root]
            while (child := self._child_of.get(chain[-1]._trial_id)) is not None:
                chain.append(child)
            out.append(chain)
        return out
