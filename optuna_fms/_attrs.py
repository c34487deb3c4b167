"""Names of the trial and study attributes that hold FMS's shared state.

Everything another worker needs lives in the study's storage under these keys (design.md
section 3). User attributes are used where a person wants to see the value in
optuna-dashboard; system attributes where the value is bookkeeping only.
"""

from __future__ import annotations


# Trial user attributes.
CHECKPOINTS = "fms:checkpoints"
"""``{str(step): artifact_id}`` of the checkpoints the trial has saved (and not yet removed)."""

PAUSED = "fms:paused"
"""``{"step": int, "claim": int}``: set by FMSPruner when it pauses the trial at ``step``;
``claim`` is the id of the lock trial whose WAITING->RUNNING transition claims the
continuation (see :mod:`optuna_fms._claims`)."""

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

# Study system attributes.
CONTINUATION_OFF = "fms:continuation_off"
"""Set once an objective finished a continued trial without calling :func:`optuna_fms.resume`
(a failed continuation does not set it)."""
