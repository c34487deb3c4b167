"""Which of a trial's checkpoints to keep after a save, and which to delete.

Pure bookkeeping over ``{step: artifact_id}``; the deletion itself is done by
:mod:`optuna_fms._checkpoint._store`. The rules are documented in ``docs/checkpoints.md``
("Retention").
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Mapping


__all__ = ["DEFAULT_KEEP_LAST"]

DEFAULT_KEEP_LAST = 2
"""Default ``keep_last`` of :func:`~optuna_fms.save_checkpoint` and the integrations."""


def _check_retention(keep_last: int | None, keep_every: int | None) -> None:
    """Raise :class:`ValueError` for a ``keep_last`` or ``keep_every`` below 1."""
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}.")
    if keep_every is not None and keep_every < 1:
        raise ValueError(f"keep_every must be >= 1 or None, got {keep_every}.")


def _retained_steps(
    steps: Iterable[int], keep_last: int | None, keep_every: int | None, just_saved: int
) -> set[int]:
    """The steps whose checkpoints stay.

    The union of the ``keep_last`` largest steps (all when ``None``), the steps divisible by
    ``keep_every``, the newest step and ``just_saved``.
    """
    steps = list(steps)
    if keep_last is None:
        return set(steps)
    ordered = sorted(steps)
    keep = set(ordered[-keep_last:]) if keep_last > 0 else set()
    if keep_every is not None:
        keep.update(s for s in steps if s % keep_every == 0)
    keep.add(ordered[-1])  # The newest checkpoint is never deleted.
    keep.add(just_saved)
    return keep


def _after_save(
    recorded: Mapping[int, str],
    step: int,
    artifact_id: str,
    keep_last: int | None,
    keep_every: int | None,
) -> tuple[dict[int, str], list[str]]:
    """The map to record after saving ``artifact_id`` at ``step``, and the ids to delete.

    The ids to delete are the superseded checkpoints and the earlier checkpoint of ``step``
    when that step was saved before.
    """
    updated = dict(recorded)
    replaced = updated.get(step)
    updated[step] = artifact_id
    keep = _retained_steps(updated, keep_last, keep_every, step)
    removed = [aid for s, aid in updated.items() if s not in keep]
    if replaced is not None:
        removed.append(replaced)
    return {s: updated[s] for s in sorted(keep)}, removed
