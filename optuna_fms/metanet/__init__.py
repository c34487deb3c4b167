"""Parameter graphs and graph metanetworks: featurising checkpoints for the FMS surrogate."""

from __future__ import annotations

from optuna_fms.metanet._structure import describe_module


__all__ = ["describe_module"]
