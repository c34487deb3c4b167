"""The shared brain of FMSSampler and FMSPruner: data, surrogate and DyHPO's decisions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import logging
import threading
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.search_space import IntersectionSearchSpace
from optuna.storages import BaseStorage
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import torch

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
from optuna_fms._surrogate._weights import EMBED_DIM
from optuna_fms._surrogate._weights import CheckpointEncoder
from optuna_fms._surrogate._weights import WeightBank
from optuna_fms._surrogate._weights import fingerprint


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
    n_trained: int
    surrogate: Surrogate
    alternative_ei: float | None = None


@dataclass
class _StudyState:
    """What a Forecaster caches for one study: one sampler may serve several studies.

    Keyed by the storage object and the study id (two in-memory storages both number their
    first study 0); holding ``storage`` keeps its ``id`` from being reused for another one.
    """

    storage: BaseStorage
    search_space: IntersectionSearchSpace
    surrogate: Surrogate
    fit: Fit | None = None
    claims_id: int | None = None


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
    retrain_growth:
        Train the surrogate again once the observations grew by this fraction since the
        last training, and only condition the trained GP on new data in between. 0 trains
        at every new observation, as DyHPO does.
    surrogate_kwargs:
        Passed to :class:`~optuna_fms._surrogate._surrogate.Surrogate`.
    weights:
        ``"gmn"``, ``"stats"`` or ``None``: how checkpoints enter the surrogate.
    start_weights:
        ``params -> state dict or module``: the weights a configuration starts from, used for
        rows and candidates that have no checkpoint of their own.
    artifact_store:
        ``() -> store`` giving the artifact store checkpoints are read from.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        max_train_rows: int = 256,
        n_candidates: int = 512,
        retrain_growth: float = 0.0,
        surrogate_kwargs: dict[str, Any] | None = None,
        weights: str | None = None,
        start_weights: Callable[[dict[str, Any]], Any] | None = None,
        artifact_store: Callable[[], Any] | None = None,
    ) -> None:
        self._weights = weights
        self._start_weights = start_weights
        self._artifact_store = artifact_store
        self._bank = WeightBank(weights) if weights is not None else None
        self._warned_checkpoint = False
        self._unreadable: set[str] = set()
        self._seed = seed
        self._rng = np.random.RandomState(seed)
        self._max_train_rows = max_train_rows
        self._retrain_growth = retrain_growth
        self._n_candidates = n_candidates
        self._surrogate_kwargs = dict(surrogate_kwargs or {})
        self._states: dict[tuple[int, int], _StudyState] = {}
        self._current: _StudyState | None = None
        self._lock = threading.RLock()
        self._warned_failure = False

    def _new_surrogate(self) -> Surrogate:
        factory = None
        bank = self._bank
        if bank is not None:

            def factory() -> tuple[torch.nn.Module, int]:
                return CheckpointEncoder(bank), EMBED_DIM

        return Surrogate(seed=self._seed, weight_encoder_factory=factory, **self._surrogate_kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_states"] = {}
        state["_current"] = None
        state["_bank"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._bank = WeightBank(self._weights) if self._weights is not None else None

    def reseed(self) -> None:
        self._rng.seed()

    @staticmethod
    def sign(study: Study) -> float:
        return 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0

    def _state(self, study: Study) -> _StudyState:
        """This study's caches, created on first use; they become the current ones."""
        with self._lock:
            key = (id(study._storage), study._study_id)
            state = self._states.get(key)
            if state is None:
                state = _StudyState(
                    storage=study._storage,
                    search_space=IntersectionSearchSpace(include_pruned=True),
                    surrogate=self._new_surrogate(),
                )
                self._states[key] = state
            self._current = state
            return state

    # The current study's fit and surrogate (the study used last), for inspection.
    @property
    def _fit(self) -> Fit | None:
        return None if self._current is None else self._current.fit

    @_fit.setter
    def _fit(self, fit: Fit | None) -> None:
        if self._current is not None:
            self._current.fit = fit

    @property
    def _surrogate(self) -> Surrogate | None:
        return None if self._current is None else self._current.surrogate

    @_surrogate.setter
    def _surrogate(self, surrogate: Surrogate) -> None:
        if self._current is not None:
            self._current.surrogate = surrogate

    def search_space(self, study: Study) -> dict[str, BaseDistribution]:
        space = self._state(study).search_space.calculate(study)
        return {n: d for n, d in space.items() if not d.single()}

    def claims_id(self, study: Study) -> int:
        """Id of the study's companion claims study (in the study's own storage)."""
        state = self._state(study)
        if state.claims_id is None:
            state.claims_id = _claims.claims_study_id(study._storage, study._study_id)
        return state.claims_id

    # ------------------------------------------------------------------ fitting
    def refresh(self, study: Study, max_steps: int, *, eager: bool) -> Fit | None:
        """Return a fit that is current enough; ``None`` while the surrogate cannot be fitted.

        The GP's hyperparameters and feature extractor are *trained* when the data grew by
        ``retrain_growth`` since the last training (and at the first fit or when the search
        space or budget changed). In between, ``eager`` callers (the sampler) *condition* the
        trained model on all current data, an exact GP update that costs one Cholesky
        factorisation; other callers (the pruner) keep the last fit until the data grew by
        half, so that ``should_prune`` stays cheap: trials' newest values still enter through
        their curves.
        """
        with self._lock:
            state = self._state(study)
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            n_obs = count_observations(trials)
            space = self.search_space(study)
            fit = state.fit
            same = (
                fit is not None
                and fit.encoder.search_space == dict(sorted(space.items()))
                and fit.max_steps == max_steps
            )
            if same and fit is not None:
                if n_obs == fit.n_observations or (not eager and n_obs < 1.5 * fit.n_observations):
                    return fit
            retrain = (
                not same or fit is None or n_obs >= (1 + self._retrain_growth) * fit.n_trained
            )
            encoder = SpaceEncoder(space)
            layout = RowLayout(encoder.dim, max(0, max_steps - 1))
            curves = collect_curves(trials, encoder, self.sign(study), max_steps)
            if len(curves) < 2:
                return None
            row_weights = self._weights_index if self._bank is not None else None
            data = build_training_set(
                curves, layout, max_steps, self._max_train_rows, self._rng, row_weights
            )
            try:
                if not retrain:
                    try:
                        state.surrogate.condition(data.rows, data.y)
                    except SurrogateFitError:
                        retrain = True
                if retrain:
                    state.surrogate.fit(layout, data.rows, data.y)
            except SurrogateFitError as err:
                state.fit = None
                if not self._warned_failure:
                    self._warned_failure = True
                    _logger.warning(
                        "FMS surrogate fit failed (%s); sampling at random and not pruning "
                        "until a later fit succeeds.",
                        err,
                    )
                return None
            n_trained = n_obs if retrain or fit is None else fit.n_trained
            state.fit = Fit(
                encoder, layout, max_steps, data, curves, n_obs, n_trained, state.surrogate
            )
            return state.fit

    # ------------------------------------------------------------------ weights
    def _weights_index(self, curve: Curve, budget: int) -> float:
        """Bank index of the weights a row at ``budget`` reads: the trial's newest checkpoint
        from before that budget, else its starting weights, else none (-1)."""
        assert self._bank is not None
        found = curve.checkpoint_before(budget)
        if found is not None and found[1] not in self._unreadable:
            step, artifact_id = found
            try:
                return float(self._bank.index(artifact_id, lambda: self._load(curve.trial, step)))
            except Exception as err:  # A corrupt or vanished checkpoint must not stop a study.
                self._unreadable.add(artifact_id)
                if not self._warned_checkpoint:
                    self._warned_checkpoint = True
                    _logger.warning(
                        "FMS could not read checkpoint %s of trial %d (%s); the surrogate "
                        "uses the starting weights instead.",
                        artifact_id,
                        curve.trial.number,
                        err,
                    )
        return self._start_index(curve.trial.params)

    def _load(self, trial: FrozenTrial, step: int) -> tuple[Any, Any]:
        from optuna_fms._checkpoint import _load_checkpoint_full

        store = self._artifact_store() if self._artifact_store is not None else None
        tensors, _, meta = _load_checkpoint_full(trial, step, artifact_store=store)
        return tensors, meta.get("structure")

    def _start_index(self, params: dict[str, Any]) -> float:
        if self._start_weights is None or self._bank is None:
            return -1.0
        start = self._start_weights(params)
        if start is None:
            return -1.0
        structure = None
        if isinstance(start, tuple):  # (state dict, structure from describe_module)
            start, structure = start
        elif isinstance(start, torch.nn.Module):
            from optuna_fms.metanet import describe_module

            structure = describe_module(start)
            start = start.state_dict()
        return float(self._bank.index("start:" + fingerprint(start), lambda: (start, structure)))

    def _candidate_weights(self, params_list: list[dict[str, Any]]) -> np.ndarray | None:
        if self._bank is None:
            return None
        return np.array([self._start_index(p) for p in params_list])

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
        mean, std = fit.surrogate.predict(rows)
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
        ckpts = self._candidate_weights(enc.decode(x))
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
            if curve is None or curve.last_step + 1 >= fit.max_steps:
                continue
            # Only the claim the pause recorded stands for the paused trial.
            paused = curve.trial.user_attrs.get(_attrs.PAUSED) or {}
            if paused.get("claim") == claim._trial_id:
                out.append((claim, curve))
        return out

    def _paused_ei(self, fit: Fit, paused: list[tuple[FrozenTrial, Curve]]) -> np.ndarray:
        if not paused:
            return np.zeros(0)
        curves = [c for _, c in paused]
        x = np.stack([c.x for c in curves])
        budgets = np.array([c.last_step + 2 for c in curves])
        ckpts = None
        if self._bank is not None:
            ckpts = np.array([self._weights_index(c, c.last_step + 2) for c in curves])
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

    def forecast_final(
        self,
        study: Study,
        fit: Fit,
        params_list: list[dict[str, Any]],
        curves: list[Curve | None],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Forecast the score at the full budget (objective units): mean and std.

        ``curves[i]`` is what has been observed of ``params_list[i]`` (its learning curve,
        and with weights its newest checkpoint), or ``None`` for a configuration that has
        not run, which is then read from its parameters and starting weights alone.
        """
        with self._lock:
            n = len(params_list)
            x = fit.encoder.encode(params_list)
            histories: list[np.ndarray] = [np.zeros(0)] * n
            ckpts = self._candidate_weights(params_list)
            for i, curve in enumerate(curves):
                if curve is None:
                    continue
                x[i] = curve.x
                histories[i] = curve.values[curve.steps < fit.max_steps - 1]
                if ckpts is not None:
                    ckpts[i] = self._weights_index(curve, fit.max_steps)
            budgets = np.full(n, float(fit.max_steps))
            mean, std, _ = self._score(fit, x, budgets, histories, ckpts)
            scale = fit.data.scale
            return self.sign(study) * (mean * scale.std + scale.mean), std * scale.std

    def forecast(
        self, study: Study, fit: Fit, trial: FrozenTrial
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
            ckpt = -1.0
            if self._bank is not None:
                ckpt = self._weights_index(Curve(trial, np.array(steps), hist), nxt)
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
