"""The public forecast, recommend and diagnose: the deprecated ``engine=`` argument."""

from __future__ import annotations

from collections.abc import Callable
import re
from typing import Any
import warnings

import optuna
import pytest

import optuna_fms


def _study() -> optuna.Study:
    space = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    study = optuna.create_study(direction="maximize")
    for lr, steps in ((0.001, 5), (0.01, 3), (0.1, 5), (1.0, 2)):
        curve = {s: 1 - (1 - lr) ** (s + 1) for s in range(steps)}
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr},
                distributions=space,
                intermediate_values=curve,
                state=optuna.trial.TrialState.PRUNED,
            )
        )
    return study


def _sampler() -> optuna_fms.FMSSampler:
    return optuna_fms.FMSSampler(seed=0, max_steps=5, surrogate="gp")


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "forecast": optuna_fms.forecast,
    "recommend": optuna_fms.recommend,
    "diagnose": optuna_fms.diagnose,
}


@pytest.mark.parametrize("name", sorted(_FUNCTIONS))
def test_engine_is_deprecated_and_reads_as_its_sampler(name: str) -> None:
    function = _FUNCTIONS[name]
    study = _study()
    with pytest.warns(FutureWarning) as record:
        deprecated = function(study, engine=_sampler().engine)
    assert len(record) == 1
    message = str(record[0].message)
    assert f"optuna_fms.{name}()" in message
    assert "deprecated since v0.1.0" in message
    assert "removal in v0.3.0" in message
    assert "sampler=" in message and "FMSSampler" in message
    assert record[0].filename == __file__  # the warning points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        current = function(study, sampler=_sampler())
    assert deprecated and deprecated == current


def test_the_deprecation_names_the_package_version() -> None:
    from optuna_fms._forecast import _ENGINE_DEPRECATED_IN
    from optuna_fms._forecast import _ENGINE_REMOVED_IN

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split("."))

    deprecated, removed, now = (
        version(v) for v in (_ENGINE_DEPRECATED_IN, _ENGINE_REMOVED_IN, optuna_fms.__version__)
    )
    # Removed two minor versions after the deprecation, and not yet due.
    assert removed == (deprecated[0], deprecated[1] + 2, 0)
    assert deprecated <= now < removed, "engine= is due for removal"


@pytest.mark.parametrize("name", sorted(_FUNCTIONS))
def test_engine_and_sampler_together_are_refused(name: str) -> None:
    sampler = _sampler()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with pytest.raises(ValueError, match=re.escape(f"optuna_fms.{name}() takes sampler=")):
            _FUNCTIONS[name](_study(), sampler=sampler, engine=sampler.engine)


@pytest.mark.parametrize("name", sorted(_FUNCTIONS))
def test_engine_none_is_no_deprecation(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _FUNCTIONS[name](_study(), sampler=_sampler(), engine=None)
