"""Names of the trial and study attributes that hold FMS's shared state.

Everything another worker needs lives in the study's storage under these keys (see
docs/design.md). User attributes are used where a person wants to see the value in
optuna-dashboard; system attributes where the value is bookkeeping only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from dataclasses import dataclass
import json
import math
from typing import Any


# Trial user attributes.
CHECKPOINTS = "fms:checkpoints"
"""``{str(step): artifact_id}`` of the checkpoints the trial has saved (and not yet removed)."""

PAUSED = "fms:paused"
"""``{"step": int, "claim": int}``: set by FMSPruner when it pauses the trial at ``step``;
``claim`` is the id of the lock trial whose WAITING->RUNNING transition claims the
continuation (see :mod:`optuna_fms._freeze_thaw`)."""

CONTINUES = "fms:continues"
"""``{"trial": number, "trial_id": id, "step": int, "claim": id}`` on a trial that continues a
paused trial from that trial's checkpoint at ``step``, having taken the claim ``claim``. A trial
that carries the attribute without holding the claim (a retry copies it) is no continuation."""

RESUMED = "fms:resumed"
"""``True`` once :func:`optuna_fms.resume` has restored the checkpoint of the parent."""

RESUME_FAILED = "fms:resume_failed"
"""Why :func:`optuna_fms.resume` could not restore the parent's checkpoint (the trial then
trained from step 0)."""

FORECAST = "fms:forecast"
"""``{"step": int, "mean": float, "std": float}``: the surrogate's forecast of the final score
at the last decision."""

# Trial system attributes.
PROPOSAL = "fms:proposal"
"""JSON of the parameters chosen for a fresh trial in ``before_trial``."""

CHECKPOINTS_OWNER = "fms:checkpoints_owner"
"""``{"trial": number}`` of the trial that saved the checkpoints in :data:`CHECKPOINTS`,
written with its first checkpoint. A trial whose stamp names another trial carries a copy (a
retry copies every attribute) and owns no checkpoint; ``optuna.copy_study`` keeps numbers, so
the trials of a copy read their checkpoints. (Stamps written before held the storage id.)"""

RESTART = "fms:restart"
"""``{"trial": number, "step": int}`` on a trial that trains again from scratch a configuration
whose furthest trial (``trial``) was pruned at ``step`` without a checkpoint to continue from:
FMSPruner does not pause it before it has passed that step."""


def artifact_record(artifact_id: str) -> str:
    """The trial system attribute in which ``optuna.artifacts.upload_artifact`` records an
    artifact (JSON ``null`` once deleted, as optuna-dashboard's own deletion leaves it).

    Examples
    --------
    >>> artifact_record("abc")
    'artifacts:abc'
    """
    return "artifacts:" + artifact_id


# Study system attributes.
CONTINUATION_OFF = "fms:continuation_off"
"""Set once an objective finished a continued trial without calling :func:`optuna_fms.resume`
(a failed continuation does not set it)."""

GP_TRAINING = "fms:gp_training"
"""``{"space": {name: distribution JSON}, "max_steps": int, "n_trained": int, "gp": {...}}``:
the hyperparameters of the study's latest GP training by any worker (``gp``, from
:meth:`~optuna_fms._surrogate.GPSurrogate.hyperparameters`), the search space and budget
they were fitted for and the observations they were fitted on. A worker whose own training
is older conditions on them instead of training its own GP (a new worker does not start
cold); a missing, foreign or malformed value is ignored."""

GP_TRAINING_STARTED = "fms:gp_training_started"
"""``{"n": int, "at": float, "space": {...}, "max_steps": int, "by": str}``: a worker (``by``, a
random token of its engine) started a GP training
on ``n`` observations of that search space and budget at Unix time ``at``; until a training
on as many observations is published in :data:`GP_TRAINING` (or a lease runs out), the other
workers condition on the hyperparameters they have instead of training too."""


# Claim trials (trials of the companion claims study, see :mod:`optuna_fms._freeze_thaw`).
CLAIMS_OF = "fms:claims_of"
"""Study user attribute of a companion claims study: the name of the study it serves."""

CLAIMS_DESCRIPTION = "fms:description"
"""Study user attribute of a companion claims study: what it is, for a person."""

CLAIM_HOLDER = "continued_by_id"
"""Claim trial user attribute: the storage id of the continuation that took the claim."""

CLAIM_HOLDER_NUMBER = "continued_by"
"""Claim trial user attribute: the number of the continuation that took the claim."""

CLAIM_WITHDRAWN = "withdrawn"
"""Claim trial user attribute: ``True`` on a claim closed because its trial went on."""


# ---------------------------------------------------------------------------- typed readers
# Attributes live in storage, where anyone (a retry, copy_study, a user) can write anything:
# every reader returns ``None`` or an empty value for a malformed entry instead of raising.


@dataclass(frozen=True)
class Pause:
    """:data:`PAUSED`: the step a trial was paused at, and the claim that continues it."""

    step: int
    claim: int | None = None

    def to_json(self) -> dict[str, int]:
        return {"step": self.step} if self.claim is None else asdict(self)


@dataclass(frozen=True)
class Continuation:
    """:data:`CONTINUES`: the paused trial a trial continues (number and storage id), the
    step it continues from, and the claim it took (``None`` in records written before claims
    were recorded)."""

    trial: int
    trial_id: int
    step: int
    claim: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return asdict(self)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_checkpoints(user_attrs: Mapping[str, Any]) -> dict[int, str]:
    """:data:`CHECKPOINTS` as ``{step: artifact_id}`` (malformed entries left out).

    Examples
    --------
    >>> read_checkpoints({CHECKPOINTS: {"3": "a", "x": "b", "4": 5}})
    {3: 'a'}
    """
    raw = user_attrs.get(CHECKPOINTS)
    out: dict[int, str] = {}
    if isinstance(raw, Mapping):
        for step, artifact_id in raw.items():
            if isinstance(step, str) and step.isdigit() and isinstance(artifact_id, str):
                out[int(step)] = artifact_id
    return out


def read_pause(user_attrs: Mapping[str, Any]) -> Pause | None:
    """:data:`PAUSED`, or ``None`` when the trial was never paused (or the entry is malformed).

    Examples
    --------
    >>> read_pause({PAUSED: {"step": 3, "claim": 12}})
    Pause(step=3, claim=12)
    >>> read_pause({PAUSED: {"step": "3"}}) is None
    True
    """
    raw = user_attrs.get(PAUSED)
    if not isinstance(raw, Mapping) or _int(raw.get("step")) is None:
        return None
    return Pause(step=raw["step"], claim=_int(raw.get("claim")))


def read_restart_step(system_attrs: Mapping[str, Any]) -> int | None:
    """The step of :data:`RESTART` (``None`` for a trial that is no restart).

    Examples
    --------
    >>> read_restart_step({RESTART: {"trial": 4, "step": 2}})
    2
    >>> read_restart_step({RESTART: {"step": None}}) is None
    True
    """
    raw = system_attrs.get(RESTART)
    return _int(raw.get("step")) if isinstance(raw, Mapping) else None


def read_continuation(user_attrs: Mapping[str, Any]) -> Continuation | None:
    """:data:`CONTINUES`, or ``None`` when the trial continues nothing (or it is malformed).

    Examples
    --------
    >>> read_continuation({CONTINUES: {"trial": 1, "trial_id": 2, "step": 3, "claim": 4}})
    Continuation(trial=1, trial_id=2, step=3, claim=4)
    """
    raw = user_attrs.get(CONTINUES)
    if not isinstance(raw, Mapping):
        return None
    fields = [_int(raw.get(k)) for k in ("trial", "trial_id", "step")]
    if any(f is None for f in fields):
        return None
    return Continuation(raw["trial"], raw["trial_id"], raw["step"], _int(raw.get("claim")))


@dataclass(frozen=True)
class ForecastRecord:
    """:data:`FORECAST`: the final-score forecast the pruner made at ``step``."""

    step: int
    mean: float
    std: float

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def read_forecast(user_attrs: Mapping[str, Any]) -> ForecastRecord | None:
    """:data:`FORECAST`, or ``None`` when absent or malformed.

    Examples
    --------
    >>> read_forecast({FORECAST: {"step": 4, "mean": 0.8, "std": 0.05}})
    ForecastRecord(step=4, mean=0.8, std=0.05)
    >>> read_forecast({FORECAST: {"step": 4, "mean": "x", "std": 0.05}}) is None
    True
    """
    raw = user_attrs.get(FORECAST)
    if not isinstance(raw, Mapping) or _int(raw.get("step")) is None:
        return None
    mean, std = raw.get("mean"), raw.get("std")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (mean, std))
    return ForecastRecord(raw["step"], float(mean), float(std)) if numbers else None  # type: ignore[arg-type]


def read_resumed(user_attrs: Mapping[str, Any]) -> bool:
    """Whether :func:`optuna_fms.resume` restored the parent's checkpoint (:data:`RESUMED`)."""
    return user_attrs.get(RESUMED) is True


def read_resume_attempted(user_attrs: Mapping[str, Any]) -> bool:
    """Whether this trial's objective called :func:`optuna_fms.resume`: it restored the
    parent's checkpoint or recorded why it could not (:data:`RESUME_FAILED`). A record that
    is present but ``None`` is no record (one copied from a failed attempt and disowned)."""
    return read_resumed(user_attrs) or user_attrs.get(RESUME_FAILED) is not None


def read_continuation_off(system_attrs: Mapping[str, Any]) -> bool:
    """Whether continuations are off for the study (:data:`CONTINUATION_OFF`, a study system
    attribute).

    Examples
    --------
    >>> read_continuation_off({CONTINUATION_OFF: True}), read_continuation_off({})
    (True, False)
    """
    return bool(system_attrs.get(CONTINUATION_OFF))


def proposal_json(params: Mapping[str, Any]) -> str:
    """:data:`PROPOSAL` for ``params`` (numpy scalars as Python numbers).

    Examples
    --------
    >>> import numpy as np
    >>> proposal_json({"x": np.float64(0.5), "c": "a"})
    '{"x": 0.5, "c": "a"}'
    """
    return json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()})


def read_proposal(system_attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The parameters of :data:`PROPOSAL`, or ``None`` when absent (or malformed).

    Examples
    --------
    >>> read_proposal({PROPOSAL: proposal_json({"x": 1})})
    {'x': 1}
    >>> read_proposal({PROPOSAL: None}) is None, read_proposal({PROPOSAL: "{"}) is None
    (True, True)
    """
    raw = system_attrs.get(PROPOSAL)
    if not isinstance(raw, str):
        return None
    try:
        params = json.loads(raw)
    except ValueError:
        return None
    return params if isinstance(params, dict) else None


def set_records(attrs: Mapping[str, Any]) -> list[str]:
    """The FMS keys (``fms:...``) of ``attrs`` that hold a value (not ``None``): what a trial
    copied from another carries.

    Examples
    --------
    >>> set_records({PAUSED: {"step": 1}, CONTINUES: None, "mine": 1})
    ['fms:paused']
    """
    return [k for k, v in attrs.items() if k.startswith("fms:") and v is not None]


@dataclass(frozen=True)
class Restart:
    """:data:`RESTART`: the furthest trial of the configuration a trial trains again, and the
    step it was pruned at."""

    trial: int
    step: int | None

    def to_json(self) -> dict[str, int | None]:
        return asdict(self)


@dataclass(frozen=True)
class CheckpointsOwner:
    """:data:`CHECKPOINTS_OWNER`: the trial that saved the checkpoints, by number, or (in
    stamps of the earlier form) by storage id."""

    number: int | None = None
    trial_id: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {"trial": self.number}


def read_checkpoints_owner(system_attrs: Mapping[str, Any]) -> CheckpointsOwner | None:
    """:data:`CHECKPOINTS_OWNER`, or ``None`` when absent or malformed.

    Examples
    --------
    >>> read_checkpoints_owner({CHECKPOINTS_OWNER: CheckpointsOwner(number=3).to_json()})
    CheckpointsOwner(number=3, trial_id=None)
    >>> read_checkpoints_owner({CHECKPOINTS_OWNER: 7})
    CheckpointsOwner(number=None, trial_id=7)
    >>> read_checkpoints_owner({CHECKPOINTS_OWNER: {"trial": True}}) is None
    True
    """
    raw = system_attrs.get(CHECKPOINTS_OWNER)
    if isinstance(raw, Mapping):
        number = _int(raw.get("trial"))
        return None if number is None else CheckpointsOwner(number=number)
    trial_id = _int(raw)
    return None if trial_id is None else CheckpointsOwner(trial_id=trial_id)


@dataclass(frozen=True)
class ClaimRecord:
    """A claim trial's user attributes: the paused trial it stands for (storage id and
    number) and the step a continuation starts after; on a claim that reopens a pause after
    failed continuations, the pause's first claim and how many failed."""

    trial_id: int
    step: int
    trial_number: int | None = None
    pause_claim: int | None = None
    failed_continuations: int = 0

    def to_json(self) -> dict[str, int | None]:
        out = {"trial_id": self.trial_id, "trial_number": self.trial_number, "step": self.step}
        if self.pause_claim is not None:
            out["pause_claim"] = self.pause_claim
            out["failed_continuations"] = self.failed_continuations
        return out


def read_claim(user_attrs: Mapping[str, Any]) -> ClaimRecord | None:
    """A claim trial's :class:`ClaimRecord`, or ``None`` when malformed.

    Examples
    --------
    >>> read_claim({"trial_id": 5, "trial_number": 2, "step": 3})
    ClaimRecord(trial_id=5, step=3, trial_number=2, pause_claim=None, failed_continuations=0)
    >>> read_claim({"trial_id": 5}) is None
    True
    """
    trial_id, step = _int(user_attrs.get("trial_id")), _int(user_attrs.get("step"))
    if trial_id is None or step is None:
        return None
    return ClaimRecord(
        trial_id,
        step,
        _int(user_attrs.get("trial_number")),
        _int(user_attrs.get("pause_claim")),
        _int(user_attrs.get("failed_continuations")) or 0,
    )


def read_claim_holder(user_attrs: Mapping[str, Any]) -> int | None:
    """The storage id of the trial that took a claim (:data:`CLAIM_HOLDER`), if any.

    Examples
    --------
    >>> read_claim_holder({CLAIM_HOLDER: 9, CLAIM_HOLDER_NUMBER: 4}), read_claim_holder({})
    (9, None)
    """
    return _int(user_attrs.get(CLAIM_HOLDER))


@dataclass(frozen=True)
class GPTraining:
    """:data:`GP_TRAINING`: a GP training a worker published for the others."""

    space: dict[str, str]
    max_steps: int
    n_trained: int
    gp: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_gp_training(system_attrs: Mapping[str, Any]) -> GPTraining | None:
    """:data:`GP_TRAINING`, or ``None`` when absent or malformed (the hyperparameters
    themselves are checked when a GP loads them).

    Examples
    --------
    >>> read_gp_training({GP_TRAINING: {"space": {"x": "{}"}, "max_steps": 9,
    ...                                 "n_trained": 4, "gp": {}}}).n_trained
    4
    >>> read_gp_training({GP_TRAINING: {"space": {}, "max_steps": 9, "n_trained": -1,
    ...                                 "gp": {}}}) is None
    True
    """
    raw = system_attrs.get(GP_TRAINING)
    if not isinstance(raw, Mapping):
        return None
    space, max_steps, n_trained, gp = (
        raw.get("space"),
        _int(raw.get("max_steps")),
        _int(raw.get("n_trained")),
        raw.get("gp"),
    )
    if (
        not isinstance(space, Mapping)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in space.items())
        or max_steps is None
        or n_trained is None
        or n_trained < 0
        or not isinstance(gp, dict)
    ):
        return None
    return GPTraining(dict(space), max_steps, n_trained, gp)


@dataclass(frozen=True)
class GPTrainingStarted:
    """:data:`GP_TRAINING_STARTED`: a worker's announcement of a GP training."""

    n: int
    at: float
    space: dict[str, str]
    max_steps: int
    by: str
    """The announcing engine's token (a worker ignores its own announcements)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_gp_training_started(system_attrs: Mapping[str, Any]) -> GPTrainingStarted | None:
    """:data:`GP_TRAINING_STARTED`, or ``None`` when absent or malformed.

    Examples
    --------
    >>> read_gp_training_started({GP_TRAINING_STARTED: {"n": 12, "at": 1.5, "space": {},
    ...                                                 "max_steps": 9, "by": "a1"}}).n
    12
    >>> read_gp_training_started({GP_TRAINING_STARTED: {"n": 12, "at": "now"}}) is None
    True
    """
    raw = system_attrs.get(GP_TRAINING_STARTED)
    if not isinstance(raw, Mapping):
        return None
    n, max_steps = _int(raw.get("n")), _int(raw.get("max_steps"))
    at, space, by = raw.get("at"), raw.get("space"), raw.get("by")
    if (
        n is None
        or max_steps is None
        or not isinstance(by, str)
        or not isinstance(at, (int, float))
        or isinstance(at, bool)
        or not math.isfinite(at)
        or not isinstance(space, Mapping)
    ):
        return None
    return GPTrainingStarted(n, float(at), dict(space), max_steps, by)
