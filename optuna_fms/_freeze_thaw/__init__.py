"""Freeze-thaw: pause a trial, continue it later from its checkpoint in a new trial.

Optuna cannot resume a pruned trial. FMS pauses one instead (:class:`~optuna_fms.FMSPruner`
prunes it and records the pause), and :class:`~optuna_fms.FMSSampler` may later start a new
trial with the same parameters that *continues* it: its objective restores the paused
trial's checkpoint (:func:`~optuna_fms.resume`) and goes on from the next step. Every worker
has its own sampler and pruner, so everything they agree on lives in the study's storage.

This package is the whole protocol, and the only code that writes it:

- :class:`FreezeThaw` (``_protocol.py``): one study's pauses, claims and continuations, the
  API the sampler, the pruner, the engine and :func:`~optuna_fms.resume` call;
- ``_claims.py``: its storage layer, the *claims*: one trial of a companion study per pause,
  whose atomic WAITING -> RUNNING move lets exactly one continuation take the pause up;
- :class:`Lineage` (``_lineage.py``): the family tree read back from the trials, which
  continuation carries on (supersedes) which paused trial's curve.

The walk of one pause: ``trial.report`` -> ``FMSPruner.prune`` decides with the engine ->
:meth:`FreezeThaw.pause` records ``fms:paused`` and opens a claim (if the checkpoint at the
step is saved) -> a later ``FMSSampler.before_trial`` reads the open pauses
(:meth:`FreezeThaw.open_pauses`, through the engine's decision) and :meth:`FreezeThaw.take`
takes the claim and records ``fms:continues`` -> the objective's ``resume()`` restores the
checkpoint -> ``FMSSampler.after_trial`` closes the claim (:meth:`FreezeThaw.end_continuation`).
The records' names and typed readers are in :mod:`optuna_fms._attrs`.
"""

from optuna_fms._freeze_thaw._claims import MAX_ATTEMPTS
from optuna_fms._freeze_thaw._claims import claims_study_name
from optuna_fms._freeze_thaw._claims import delete_claims_study
from optuna_fms._freeze_thaw._lineage import Lineage
from optuna_fms._freeze_thaw._protocol import FreezeThaw


__all__ = ["MAX_ATTEMPTS", "FreezeThaw", "Lineage", "claims_study_name", "delete_claims_study"]
