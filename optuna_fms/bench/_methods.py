"""The methods a replay benchmark compares, each an Optuna sampler/pruner pair.

Every method is built fresh for each run from the run's seed alone (no state reused across
runs: seeds are independent). A method whose constructor arguments do not exist yet in this
version of the library reports why through :meth:`Method.unavailable` and the benchmark shows
"not yet" instead of numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import inspect
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

    from optuna_fms.bench._hub import Hub


Factory = Callable[["Hub", int, "ArtifactStore"], tuple[BaseSampler, BasePruner]]


@dataclass(frozen=True)
class Method:
    """One benchmarked method.

    Attributes
    ----------
    name:
        The name used on the command line and in tables.
    description:
        One line for the docs.
    factory:
        ``(hub, seed, artifact_store) -> (sampler, pruner)``, fresh objects every call.
    surrogate:
        Whether the sampler has an FMS surrogate whose forecasts Kendall's tau is taken of.
    requires:
        ``FMSSampler`` constructor parameters the method needs.
    """

    name: str
    description: str
    factory: Factory
    surrogate: bool = False
    requires: tuple[str, ...] = ()
    checkpoints: bool = True
    """Whether the replayed objective saves checkpoints and calls ``resume`` (a user who
    does neither is the first thing to try)."""

    def unavailable(self) -> str | None:
        """Why the method cannot run with this version of the library, or ``None``."""
        if not self.requires:
            return None
        from optuna_fms import FMSSampler

        params = inspect.signature(FMSSampler).parameters
        missing = [p for p in self.requires if p not in params]
        if missing:
            return f"FMSSampler has no parameter {', '.join(missing)} yet"
        return None

    def make(self, hub: Hub, seed: int, store: ArtifactStore) -> tuple[BaseSampler, BasePruner]:
        reason = self.unavailable()
        if reason is not None:
            raise RuntimeError(f"method {self.name!r} is not available: {reason}.")
        return self.factory(hub, seed, store)


# ------------------------------------------------------------------------------ settings
FMS_STARTUP_TRIALS = 10
"""Random trials before the FMS surrogate is used (the library default)."""
FMS_PRUNER_STARTUP_TRIALS = 5
"""Finished trials before FMSPruner pauses anything (the library default)."""


def _random(hub: Hub, seed: int, store: ArtifactStore) -> tuple[BaseSampler, BasePruner]:
    return optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner()


def _tpe_hyperband(hub: Hub, seed: int, store: ArtifactStore) -> tuple[BaseSampler, BasePruner]:
    return (
        optuna.samplers.TPESampler(seed=seed),
        optuna.pruners.HyperbandPruner(min_resource=1, max_resource=hub.n_epochs),
    )


def _tpe_median(hub: Hub, seed: int, store: ArtifactStore) -> tuple[BaseSampler, BasePruner]:
    return optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner()


def _gp(hub: Hub, seed: int, store: ArtifactStore) -> tuple[BaseSampler, BasePruner]:
    return optuna.samplers.GPSampler(seed=seed), optuna.pruners.NopPruner()


def start_weights_fn(hub: Hub) -> Callable[[dict[str, Any]], Any]:
    """``params -> (state dict, structure)`` of the weights the configuration ``params``
    starts fine-tuning from (the zoo member, or the pretrained architecture), with
    the architecture's structure so that the graph metanetwork can read ResNets and
    transformers. Files are read once per start: many candidates share few starts."""

    cache: dict[str, Any] = {}

    def fn(params: dict[str, Any]) -> Any:
        c = hub.find_config(params)
        key = hub.start_key(c)
        if key not in cache:
            cache[key] = (hub.start_weights(c), hub.structure(c))
        return cache[key]

    return fn


METANETS_DIR = Path(__file__).with_name("metanets")
"""Metanetworks pretrained without one hub each (``without-<hub>.safetensors``)."""


def _shipped_metanetwork_hubs() -> list[str]:
    """The hubs the metanetwork shipped with the package was pretrained on."""
    from optuna_fms.metanet import PretrainedMetanetwork

    return list(PretrainedMetanetwork.load(None).info.get("hubs", []))


def held_out_metanetwork(hub: Hub) -> Path:
    """The metanetwork pretrained without ``hub``'s results, for benchmarks on it.

    ``without-<hub>.safetensors`` in :data:`METANETS_DIR`, or the one shipped with the package
    when its recorded training hubs do not include ``hub`` (a hub built after it, such as
    ``finetune``).

    Raises
    ------
    FileNotFoundError
        If there is none for this hub (with the command that makes one).
    """
    path = METANETS_DIR / f"without-{hub.name}.safetensors"
    if not path.exists() and hub.name not in _shipped_metanetwork_hubs():
        from optuna_fms.metanet._pretrained import SHIPPED_FILE

        return SHIPPED_FILE  # pretrained on other hubs only
    if not path.exists():
        raise FileNotFoundError(
            f"No metanetwork pretrained without hub {hub.name!r} ({path}); make one with "
            f"`optuna-fms pretrain-metanet --hubs <other hubs> --out {path}`."
        )
    return path


def _fms(
    weights: str | None,
    pruner_startup: int = FMS_PRUNER_STARTUP_TRIALS,
    *,
    surrogate: str = "deep-kernel",
    sampler_startup: int = FMS_STARTUP_TRIALS,
    pause_startup: bool = False,
    gp_trend: str | None = None,
    gp: dict[str, Any] | None = None,
    pretrained_held_out: bool = False,
    replace_start_params: bool = False,
    allocation: str | None = None,
) -> Factory:
    """FMSSampler + FMSPruner. The defaults are the settings the saved deep-kernel runs were
    measured with (random startup trials at the full budget); the ``fms-gp`` methods use the
    library's defaults (the GP and DyHPO's start).

    With ``weights="gmn"`` the metanetwork is untrained (as every saved run measured it), or
    with ``pretrained_held_out`` the one pretrained without the replayed hub
    (:func:`held_out_metanetwork`): the shipped one has seen every hub's results. With
    ``replace_start_params`` the GP reads the start weights in place of the parameters that
    choose them (``FMSSampler(start_params=...)``)."""

    def factory(hub: Hub, seed: int, store: ArtifactStore) -> tuple[BaseSampler, BasePruner]:
        from optuna_fms import FMSPruner
        from optuna_fms import FMSSampler

        kwargs: dict[str, Any] = dict(
            seed=seed,
            artifact_store=store,
            n_startup_trials=sampler_startup,
            surrogate=surrogate,
            warn_independent_sampling=False,
        )
        if gp_trend is not None:
            kwargs["gp_trend"] = gp_trend
        if weights is not None:
            kwargs.update(weights=weights, start_weights=start_weights_fn(hub))
        if weights == "gmn":
            kwargs["metanetwork"] = held_out_metanetwork(hub) if pretrained_held_out else None
        if replace_start_params:
            kwargs["start_params"] = list(hub.index["start_params"])
        if allocation is not None:
            kwargs["allocation"] = allocation
        sampler = FMSSampler(**kwargs)
        # GP settings the sampler does not expose (a model kept for comparison).
        sampler.engine._surrogate_kwargs.update(gp or {})
        pruner = FMSPruner(
            max_steps=hub.n_epochs,
            n_startup_trials=pruner_startup,
            pause_startup=pause_startup,
            seed=seed,
        )
        return sampler, pruner

    return factory


def _fms_gp(weights: str | None = None, **kwargs: Any) -> Factory:
    """``_fms`` with the GP and DyHPO's start of 5 random trials, each paused after one step
    (the library's defaults until December 2026's fifth pass of issue 21; the library now starts
    with 10, which the method ``fms`` runs)."""
    return _fms(weights, 5, surrogate="gp", sampler_startup=5, pause_startup=True, **kwargs)


def _fms_default_with(
    per_hub: Callable[[Hub], dict[str, Any]] | None = None, **options: Any
) -> Factory:
    """What a new user writes, ``FMSSampler()`` + ``FMSPruner(max_steps)``, with these
    ``FMSSampler`` options, and those ``per_hub(hub)`` returns for the replayed hub."""

    def factory(hub: Hub, seed: int, store: ArtifactStore) -> tuple[BaseSampler, BasePruner]:
        from optuna_fms import FMSPruner
        from optuna_fms import FMSSampler

        sampler = FMSSampler(
            seed=seed,
            artifact_store=store,
            warn_independent_sampling=False,
            **options,
            **(per_hub(hub) if per_hub is not None else {}),
        )
        return sampler, FMSPruner(max_steps=hub.n_epochs, seed=seed)

    return factory


_fms_default = _fms_default_with()


def _weights_of(hub: Hub, pretrained: bool, replaces: bool = False) -> dict[str, Any]:
    """``weights="gmn"`` with the hub's ``start_weights``: the graph metanetwork reads every
    checkpoint (an adapter-only one as its canonical LoRA update) and the GP its two
    predictions; with ``pretrained`` the metanetwork pretrained without the replayed hub
    (:func:`held_out_metanetwork`), else an untrained, seeded one; with ``replaces`` the
    predictions replace the parameters that choose the start (``start_params``)."""
    options: dict[str, Any] = dict(
        weights="gmn",
        start_weights=start_weights_fn(hub),
        metanetwork=held_out_metanetwork(hub) if pretrained else None,
    )
    if replaces:
        options["start_params"] = list(hub.index["start_params"])
    return options


ALLOCATION_RULES = ("one-step", "final", "random-horizon", "rungs", "one-step-promoting")
"""The allocation rules benchmarked side by side (``fms-<rule>``)."""


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "fms",
            "FMSSampler() + FMSPruner(max_steps=n_epochs): the library's defaults, as a new "
            "user writes them",
            _fms_default,
            surrogate=True,
        ),
        Method(
            "fms-no-checkpoints",
            "fms with an objective that never saves a checkpoint nor calls resume (pauses are "
            "final prunes)",
            _fms_default,
            surrogate=True,
            checkpoints=False,
        ),
        *(
            Method(
                f"fms-constant{suffix}",
                "fms with gp_trend='constant' (no trend in the hyperparameters)"
                + ("" if checkpoints else ", an objective that never saves a checkpoint"),
                _fms_default_with(gp_trend="constant"),
                surrogate=True,
                requires=("gp_trend",),
                checkpoints=checkpoints,
            )
            for checkpoints, suffix in ((True, ""), (False, "-no-checkpoints"))
        ),
        Method(
            "fms-final-no-checkpoints-10",
            "fms-no-checkpoints with allocation='final': fresh configurations chosen by the "
            "expected improvement of their forecast final score (the sixth hub's screen)",
            _fms_default_with(allocation="final"),
            surrogate=True,
            requires=("allocation",),
            checkpoints=False,
        ),
        Method(
            "fms-weights",
            "fms with weights='gmn' and start_weights: the GP also reads two predictions of "
            "the metanetwork pretrained without this hub on every checkpoint (adapters "
            "included) and start",
            _fms_default_with(lambda hub: _weights_of(hub, pretrained=True)),
            surrogate=True,
            requires=("weights", "start_weights", "metanetwork"),
        ),
        Method(
            "fms-weights-replaces",
            "fms-weights with start_params: the metanetwork's predictions of the start replace "
            "the parameters that choose it (the pretrained base, the zoo member)",
            _fms_default_with(lambda hub: _weights_of(hub, pretrained=True, replaces=True)),
            surrogate=True,
            requires=("weights", "start_weights", "metanetwork", "start_params"),
        ),
        Method(
            "fms-weights-untrained",
            "fms-weights with an untrained (seeded) metanetwork: two principal components of "
            "its embedding",
            _fms_default_with(lambda hub: _weights_of(hub, pretrained=False)),
            surrogate=True,
            requires=("weights", "start_weights", "metanetwork"),
        ),
        *(
            Method(
                f"fms-{rule}{suffix}",
                f"fms-gp with FMSSampler(allocation={rule!r})"
                + ("" if checkpoints else ", an objective that never saves a checkpoint"),
                _fms_gp(allocation=rule),
                surrogate=True,
                requires=("allocation",),
                checkpoints=checkpoints,
            )
            for checkpoints, suffix in ((True, ""), (False, "-no-checkpoints"))
            for rule in ALLOCATION_RULES
        ),
        Method("random", "RandomSampler, every trial at the full budget", _random),
        Method(
            "tpe-hyperband",
            "TPESampler + HyperbandPruner(min_resource=1, max_resource=n_epochs, "
            "reduction_factor=3)",
            _tpe_hyperband,
        ),
        Method("tpe-median", "TPESampler + MedianPruner (Optuna defaults)", _tpe_median),
        Method("gp", "GPSampler (Optuna's GP-EI), every trial at the full budget", _gp),
        Method(
            "fms-gp",
            "FMSSampler(surrogate='gp') + FMSPruner: ARD Matern GP with priors over "
            "hyperparameters and log budget, a linear trend in the hyperparameters that "
            "changes with the budget, a noise floor for the forecasts and decisions on a "
            "posterior pinned to the observations, DyHPO's start (library defaults)",
            _fms_gp(),
            surrogate=True,
            requires=("surrogate",),
        ),
        Method(
            "fms-gp-interpolating",
            "fms-gp with the GP of December 2026's second and third passes: a noise floor of "
            "1e-5 (the fit interpolates the observations), decisions on the same posterior, "
            "a trend change prior of 1",
            _fms_gp(gp={"min_noise": 1e-5, "decision_noise": None, "trend_change_std": 1.0}),
            surrogate=True,
            requires=("surrogate",),
        ),
        Method(
            "fms-gp-constant",
            "fms-gp with gp_trend='constant': the GP's prior mean has no trend in the "
            "hyperparameters (the default before December 2026, as Optuna's GPSampler)",
            _fms_gp(gp_trend="constant"),
            surrogate=True,
            requires=("surrogate",),
        ),
        Method(
            "fms-gp-stats",
            "fms-gp with weights='stats' and start_weights: a few principal components of "
            "the start weights' statistics as GP inputs",
            _fms_gp("stats"),
            surrogate=True,
            requires=("surrogate", "weights", "start_weights"),
        ),
        Method(
            "fms-gp-gmn",
            "fms-gp with weights='gmn' and start_weights: a few principal components of a "
            "fixed (untrained, seeded) graph metanetwork's embedding of the start weights",
            _fms_gp("gmn"),
            surrogate=True,
            requires=("surrogate", "weights", "start_weights"),
        ),
        Method(
            "fms-gp-pretrained",
            "fms-gp with weights='gmn' and start_weights, read by a metanetwork pretrained "
            "without this hub (leave one out: its two predictions of how the row's weights "
            "fine-tune are GP inputs)",
            _fms_gp("gmn", pretrained_held_out=True),
            surrogate=True,
            requires=("surrogate", "weights", "start_weights", "metanetwork"),
        ),
        Method(
            "fms-gp-pretrained-replaces",
            "fms-gp-pretrained with start_params: the GP reads the start weights' predictions "
            "in place of the parameters that choose the start (the zoo member; the "
            "architecture and variant)",
            _fms_gp("gmn", pretrained_held_out=True, replace_start_params=True),
            surrogate=True,
            requires=("surrogate", "weights", "start_weights", "metanetwork", "start_params"),
        ),
        Method(
            "fms-gp-stats-constant",
            "fms-gp-stats with gp_trend='constant'",
            _fms_gp("stats", gp_trend="constant"),
            surrogate=True,
            requires=("surrogate", "weights", "start_weights"),
        ),
        Method(
            "dyhpo",
            "FMSSampler(surrogate='deep-kernel', weights=None) + FMSPruner(max_steps=n_epochs, "
            "pause_startup=False): DyHPO's deep kernel, curves only",
            _fms(None),
            surrogate=True,
        ),
        Method(
            "fms-stats",
            "FMSSampler(weights='stats', start_weights=...) + FMSPruner: per-layer weight "
            "statistics of the checkpoint",
            _fms("stats"),
            surrogate=True,
            requires=("weights", "start_weights"),
        ),
        Method(
            "fms-gmn",
            "FMSSampler(weights='gmn', start_weights=..., metanetwork=None) + FMSPruner: FMS, "
            "graph metanetwork over the checkpoint, trained in the study with the deep kernel",
            _fms("gmn"),
            surrogate=True,
            requires=("weights", "start_weights"),
        ),
        # Variants with DyHPO's short initial design: the pruner may pause from the second
        # trial on, so the random startup trials mostly run one epoch each instead of the
        # full budget. Not in the default method list.
        Method(
            "dyhpo-fast-start",
            "dyhpo with FMSPruner(n_startup_trials=1): random startup trials paused early",
            _fms(None, pruner_startup=1),
            surrogate=True,
        ),
        Method(
            "fms-gmn-fast-start",
            "fms-gmn with FMSPruner(n_startup_trials=1)",
            _fms("gmn", pruner_startup=1),
            surrogate=True,
            requires=("weights", "start_weights"),
        ),
    ]
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"Unknown method {name!r}; choose from {', '.join(METHODS)}.") from None
