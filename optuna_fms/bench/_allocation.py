"""How a replayed study spent its epochs: what it started, finished and trained on the best."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from optuna.trial import FrozenTrial

from optuna_fms._freeze_thaw import Lineage


CONFIG_ATTR = "bench:config"
"""Trial user attribute: the hub configuration the trial replays (set by the replay)."""
TOP_SHARE = 0.1
"""The best configurations (by true final score) whose share of the epochs is reported."""


def allocation_stats(
    trials: Sequence[FrozenTrial], final_scores: np.ndarray, n_epochs: int
) -> dict[str, float]:
    """What a study did with its epochs, from its trials (in creation order).

    - ``started``: configurations trained from scratch (a continuation starts nothing);
    - ``one_epoch_share``: the share of trials that trained exactly one new epoch;
    - ``top_epoch_share``: the share of the epochs spent on configurations whose true final
      score is in the top 10 % of the hub (``final_scores``: higher is better);
    - ``epochs_to_full``: epochs spent until (and with) the first trial whose curve reached
      the full budget, ``nan`` if none did.

    Examples
    --------
    >>> import numpy as np, optuna
    >>> study = optuna.create_study()
    >>> for c, n in ((0, 1), (1, 3), (2, 1)):
    ...     t = study.ask()
    ...     t.set_user_attr(CONFIG_ATTR, c)
    ...     for s in range(n):
    ...         t.report(0.0, s)
    ...     _ = study.tell(t, 0.0)
    >>> stats = allocation_stats(study.trials, np.arange(10.0)[::-1], n_epochs=3)
    >>> stats["started"], round(stats["one_epoch_share"], 2), stats["epochs_to_full"]
    (3.0, 0.67, 4.0)
    """
    lineage = Lineage(trials)
    top = set(np.flatnonzero(final_scores >= np.quantile(final_scores, 1 - TOP_SHARE)).tolist())
    started: set[int] = set()
    spent = on_top = one_epoch = counted = 0
    to_full = float("nan")
    for t in trials:
        config = t.user_attrs.get(CONFIG_ATTR)
        new = sum(1 for s in t.intermediate_values if s > lineage.copied_steps(t))
        if config is None or not new:
            continue
        counted += 1
        if lineage.continuation(t) is None:
            started.add(int(config))
        spent += new
        on_top += new if int(config) in top else 0
        one_epoch += new == 1
        if np.isnan(to_full) and max(t.intermediate_values) >= n_epochs - 1:
            to_full = float(spent)
    return {
        "started": float(len(started)),
        "one_epoch_share": one_epoch / counted if counted else float("nan"),
        "top_epoch_share": on_top / spent if spent else float("nan"),
        "epochs_to_full": to_full,
    }
