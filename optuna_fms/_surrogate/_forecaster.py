"""The shared brain of FMSSampler and FMSPruner: data, surrogate and DyHPO's decisions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
import logging
import threading
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_fms import _attrs
from optuna_fms import _claims
from optuna_fms._surrogate._data import Curve
from optuna_fms._surrogate._data import TrainingSet
from optuna_fms._surrogate._data import build_training_set
from optuna_fms._surrogate._data import collect_curves
from optuna_fms._surrogate._data import pack_rows
from optuna_fms._surrogate._encoding import SpaceEncoder
from optuna_fms._surrogate._model import RowLayout
from optuna_fms._surrogate._surrogate import Surrogate
from optuna_fms._surrogate._surrogate import SurrogateFitError
from optuna_fms._surrogate._surrogate import expected_improvement


_logger = logging.getLogger("optuna_fms")


@dataclass
class Fit:
    """A fitted surrogate together with the data it was fitted on."""

    encoder: SpaceEncoder
    layout: RowLayout
    max_steps: int
    data: TrainingSet
    curves: list[Curve]
    n_observations: int
    alternative_ei: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decision:
    """DyHPO's choice for the next trial: the best fresh configuration, and the paused
    trial to continue instead when its expected improvement is higher (``claim`` set)."""

    fresh: dict[str, Any]
    ei: float
    claim: FrozenTrial | None = None
    paused: Curve | None = None


def count_observations(trials: list[FrozenTrial]) -> int:
    """Reported values plus completed trials without reports: the surrogate's data size."""
    n = 0
    for t in trials:
        if t.intermediate_values:
            n += len(t.intermediate_values)
        elif t.state == TrialState.COMPLETE:
            n += 1
    return n


class Forecaster:
    """Fits the deep-kernel GP on a study and makes DyHPO's decisions with it.

    One instance is shared by an :class:`~optuna_fms.FMSSampler` and the
    :class:`~optuna_fms.FMSPruner` of the same study (the pruner borrows the sampler's), so a
    process fits one surrogate. It keeps only caches; what other workers need is in storage.

    Parameters
    ----------
    seed:
        Seeds candidate generation, row subsampling and the surrogate's initial weights.
    max_train_rows:
        Cap on the GP's training rows (cost is cubic in it). When more observations exist,
        every trial's latest observation is kept and the rest subsampled.
    n_candidates:
        Quasi-random candidates scored for a fresh configuration; as many again are local
        moves around the best configurations.
    surrogate_kwargs:
        Passed to :class:`~optuna_fms._surrogate._surrogate.Surrogate`.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        max_train_rows: int = 256,
        n_candidates: int = 512,
        surrogate_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._seed = seed
        self._rng = np.random.RandomState(seed)
        self._max_train_rows = max_train_rows
        self._n_candidates = n_candidates
        self._surrogate_kwargs = dict(surrogate_kwargs or {})
        self._surrogate = Surrogate(seed=seed, **self._surrogate_kwargs)
        self._search_space = IntersectionSearchSpace(include_pruned=True)
        self._fit: Fit | None = None
        self._lock = threading.RLock()
        self._warned_failure = False
        self._claims_ids: dict[int, int] = {}
        self.candidate_weights: Callable[[list[dict[str, Any]]], np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_fit"] = None
        state["_surrogate"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._surrogate = Surrogate(seed=self._seed, **self._surrogate_kwargs)

    def reseed(self) -> None:
        self._rng.seed()

    @staticmethod
    def sign(study: Study) -> float:
        return 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0

    def search_space(self, study: Study) -> dict[str, BaseDistribution]:
        space = self._search_space.calculate(study)
        return {n: d for n, d in space.items() if not d.single()}

    def claims_id(self, study: Study) -> int:
        sid = study._study_id
        if sid not in self._claims_ids:
            self._claims_ids[sid] = _claims.claims_study_id(study._storage, sid)
        return self._claims_ids[sid]

    # ------------------------------------------------------------------ fitting
    def refresh(self, study: Study, max_steps: int, *, eager: bool) -> Fit | None:
        """Return a fit that is current enough, refitting if needed; ``None`` on failure.

        ``eager`` (the sampler) refits whenever any new observation arrived; otherwise (the
        pruner) only once the data grew by half since the last fit, so that ``should_prune``
        stays cheap: between fits, trials' newest values still enter through their curves.
        """
        with self._lock:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            n_obs = count_observations(trials)
            space = self.search_space(study)
            fit = self._fit
            if (
                fit is not None
                and fit.encoder.search_space == dict(sorted(space.items()))
                and fit.max_steps == max_steps
                and (
                    n_obs == fit.n_observations or (not eager and n_obs < 1.5 * fit.n_observations)
                )
            ):
                return fit
            encoder = SpaceEncoder(space)
            layout = RowLayout(encoder.dim, max(0, max_steps - 1))
            curves = collect_curves(trials, encoder, self.sign(study), max_steps)
            if len(curves) < 2:
                return None
            self._attach_weights(curves)
            data = build_training_set(curves, layout, max_steps, self._max_train_rows, self._rng)
            try:
                self._surrogate.fit(layout, data.rows, data.y)
            except SurrogateFitError as err:
                self._fit = None
                if not self._warned_failure:
                    self._warned_failure = True
                    _logger.warning(
                        "FMS surrogate fit failed (%s); sampling at random and not pruning "
                        "until a later fit succeeds.",
                        err,
                    )
                return None
            self._fit = Fit(encoder, layout, max_steps, data, curves, n_obs)
            return self._fit

    def _attach_weights(self, curves: list[Curve]) -> None:
        """Hook for checkpoint features (the metanetwork joins here)."""

    # ---------------------------------------------------------------- predicting
    def _score(
        self,
        fit: Fit,
        x: np.ndarray,
        budgets: np.ndarray,
        histories: list[np.ndarray],
        ckpts: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, std (standardised) and EI against the incumbent at each row's budget."""
        rows = pack_rows(fit.layout, x, budgets, histories, fit.max_steps, fit.data.scale, ckpts)
        mean, std = self._surrogate.predict(rows)
        best = np.array([fit.data.incumbent(int(b)) for b in budgets])
        return mean, std, expected_improvement(mean, std, best)

    def _fresh(self, fit: Fit) -> tuple[np.ndarray, np.ndarray]:
        enc = fit.encoder
        n = self._n_candidates
        cands = [enc.sample(n, self._rng)] if enc.dim else [np.zeros((1, 0))]
        if enc.dim and fit.curves:
            order = np.argsort([-np.nanmax(c.values) for c in fit.curves])[:5]
            centers = np.stack([fit.curves[i].x for i in order])
            cands.append(enc.perturb(centers, n, 0.05, self._rng))
        x = np.concatenate(cands)
        ckpts = None
        if self.candidate_weights is not None:
            ckpts = self.candidate_weights(enc.decode(x))
        budgets = np.ones(len(x))
        _, _, ei = self._score(fit, x, budgets, [np.zeros(0)] * len(x), ckpts)
        return x, ei

    def _paused(self, study: Study, fit: Fit) -> list[tuple[FrozenTrial, Curve]]:
        if study._storage.get_study_system_attrs(study._study_id).get(_attrs.CONTINUATION_OFF):
            return []
        by_id = {c.trial._trial_id: c for c in fit.curves}
        out = []
        for claim in _claims.open_claims(study._storage, self.claims_id(study)):
            curve = by_id.get(claim.user_attrs["trial_id"])
            if curve is not None and curve.last_step + 1 < fit.max_steps:
                out.append((claim, curve))
        return out

    def _paused_ei(self, fit: Fit, paused: list[tuple[FrozenTrial, Curve]]) -> np.ndarray:
        if not paused:
            return np.zeros(0)
        curves = [c for _, c in paused]
        x = np.stack([c.x for c in curves])
        budgets = np.array([c.last_step + 2 for c in curves])
        ckpts = np.array([c.ckpt for c in curves], dtype=float)
        return self._score(fit, x, budgets, [c.values for c in curves], ckpts)[2]

    def propose(self, study: Study, fit: Fit) -> Decision:
        """DyHPO's choice: the best fresh candidate at step 1 or a paused trial's next step."""
        with self._lock:
            x, ei = self._fresh(fit)
            best = int(np.argmax(ei))
            decision = Decision(
                fresh=fit.encoder.decode(x[best : best + 1])[0], ei=float(ei[best])
            )
            paused = self._paused(study, fit)
            pei = self._paused_ei(fit, paused)
            fit.alternative_ei = float(max(ei[best], pei.max() if len(pei) else 0.0))
            if len(pei) and pei.max() > decision.ei:
                decision.claim, decision.paused = paused[int(np.argmax(pei))]
            return decision

    def propose_fresh_only(self, study: Study, fit: Fit) -> dict[str, Any]:
        """The fresh candidate with the highest expected improvement at step 1."""
        with self._lock:
            x, ei = self._fresh(fit)
            best = int(np.argmax(ei))
            return fit.encoder.decode(x[best : best + 1])[0]

    def random_params(self, study: Study, space: dict[str, BaseDistribution]) -> dict[str, Any]:
        enc = SpaceEncoder(space)
        return enc.decode(enc.sample(1, self._rng))[0] if enc.dim else {}

    def forecast(
        self, study: Study, fit: Fit, trial: FrozenTrial, ckpt: float = -1.0
    ) -> tuple[float, float, float, float]:
        """For a running trial: EI at its next step, the best alternative's EI, and the
        forecast (mean, std in the objective's units) of its score at the full budget."""
        with self._lock:
            if fit.alternative_ei is None:
                _, ei = self._fresh(fit)
                pei = self._paused_ei(fit, self._paused(study, fit))
                fit.alternative_ei = float(max(ei.max(), pei.max() if len(pei) else 0.0))
            sign = self.sign(study)
            steps = sorted(trial.intermediate_values)
            hist = sign * np.array([trial.intermediate_values[s] for s in steps], dtype=float)
            x = fit.encoder.encode([trial.params])
            nxt = min(steps[-1] + 2, fit.max_steps)
            mean, std, ei = self._score(
                fit,
                np.repeat(x, 2, axis=0),
                np.array([nxt, fit.max_steps]),
                [hist, hist],
                np.array([ckpt, ckpt]),
            )
            scale = fit.data.scale
            final_mean = sign * (mean[1] * scale.std + scale.mean)
            return float(ei[0]), fit.alternative_ei, float(final_mean), float(std[1] * scale.std)
