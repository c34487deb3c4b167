"""Encode Optuna parameters into the unit cube the surrogate reads, and back."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
import itertools
import math
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
import torch


class SpaceEncoder:
    """Map parameter dictionaries to vectors in ``[0, 1]^d`` and back.

    Numerical parameters are min-max scaled (after a log where ``log=True``); categorical
    parameters are one-hot encoded (never raw values: see docs/design.md).

    Parameters
    ----------
    search_space:
        The distributions to encode, keyed by parameter name.

    Examples
    --------
    >>> from optuna.distributions import FloatDistribution, CategoricalDistribution
    >>> enc = SpaceEncoder({"lr": FloatDistribution(1e-4, 1e-1, log=True),
    ...                     "opt": CategoricalDistribution(["sgd", "adam"])})
    >>> enc.encode([{"lr": 1e-4, "opt": "adam"}]).tolist()
    [[0.0, 0.0, 1.0]]
    >>> enc.decode(enc.encode([{"lr": 1e-2, "opt": "sgd"}]))[0]["opt"]
    'sgd'
    """

    def __init__(self, search_space: Mapping[str, BaseDistribution]) -> None:
        self.search_space = dict(sorted(search_space.items()))
        self._slices: dict[str, slice] = {}
        start = 0
        for name, dist in self.search_space.items():
            width = len(dist.choices) if isinstance(dist, CategoricalDistribution) else 1
            self._slices[name] = slice(start, start + width)
            start += width
        self.dim = start
        self.names = list(self.search_space)
        """The parameter names, in encoded order."""
        self.groups = [
            i
            for i, name in enumerate(self.names)
            for _ in range(self._slices[name].stop - self._slices[name].start)
        ]
        """For each encoded column, the index of its parameter in :attr:`names`."""
        self.is_categorical = np.zeros(self.dim, dtype=bool)
        for name, dist in self.search_space.items():
            if isinstance(dist, CategoricalDistribution):
                self.is_categorical[self._slices[name]] = True

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` has a valid value for every encoded parameter."""
        for name, dist in self.search_space.items():
            if name not in params:
                return False
            try:
                internal = dist.to_internal_repr(params[name])
            except (ValueError, TypeError):
                return False
            if not dist._contains(internal):
                return False
        return True

    def encode(self, params_list: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Encode a list of parameter dictionaries into an ``(n, dim)`` array."""
        out = np.zeros((len(params_list), self.dim))
        for name, dist in self.search_space.items():
            sl = self._slices[name]
            values = [p[name] for p in params_list]
            if isinstance(dist, CategoricalDistribution):
                idx = [int(dist.to_internal_repr(v)) for v in values]
                out[np.arange(len(values)), sl.start + np.asarray(idx, dtype=int)] = 1.0
            else:
                out[:, sl.start] = _to_unit(np.asarray(values, dtype=float), dist)
        return out

    def decode(self, encoded: np.ndarray) -> list[dict[str, Any]]:
        """Decode an ``(n, dim)`` array (clipped, rounded to steps) into parameter dicts."""
        columns: dict[str, list[Any]] = {}
        for name, dist in self.search_space.items():
            sl = self._slices[name]
            if isinstance(dist, CategoricalDistribution):
                idx = np.argmax(encoded[:, sl], axis=1)
                columns[name] = [dist.to_external_repr(int(i)) for i in idx]
            else:
                columns[name] = _from_unit(encoded[:, sl.start], dist)
        return [{name: columns[name][i] for name in columns} for i in range(len(encoded))]

    def sample(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        """Draw ``n`` encoded points: scrambled Sobol for the numerical part.

        Torch's Sobol engine, not SciPy's: importing ``scipy.stats`` costs each worker process
        2-3 s of CPU at its first proposal (docs/experiments.md, Workers)."""
        out = np.zeros((n, self.dim))
        numeric = ~self.is_categorical
        if numeric.any():
            sobol = torch.quasirandom.SobolEngine(
                int(numeric.sum()), scramble=True, seed=int(rng.randint(2**31 - 1))
            )
            out[:, numeric] = sobol.draw(n, dtype=torch.float64).numpy()
        for name, dist in self.search_space.items():
            if isinstance(dist, CategoricalDistribution):
                sl = self._slices[name]
                out[np.arange(n), sl.start + rng.randint(len(dist.choices), size=n)] = 1.0
        return self.round(out)

    def perturb(
        self, centers: np.ndarray, n: int, scale: float, rng: np.random.RandomState
    ) -> np.ndarray:
        """Local moves: Gaussian steps on numerical dims, a random flip of one categorical."""
        picks = centers[rng.randint(len(centers), size=n)].copy()
        numeric = ~self.is_categorical
        picks[:, numeric] = np.clip(
            picks[:, numeric] + rng.normal(0.0, scale, size=(n, int(numeric.sum()))), 0.0, 1.0
        )
        for name, dist in self.search_space.items():
            if isinstance(dist, CategoricalDistribution):
                sl = self._slices[name]
                flip = rng.rand(n) < 1.0 / max(1, len(self._slices))
                new = rng.randint(len(dist.choices), size=int(flip.sum()))
                block = np.zeros((int(flip.sum()), sl.stop - sl.start))
                block[np.arange(len(new)), new] = 1.0
                picks[flip, sl] = block
        return self.round(picks)

    def _values(self) -> list[list[Any]] | None:
        """Each parameter's values in a finite search space; ``None`` if one is continuous."""
        values: list[list[Any]] = []
        for dist in self.search_space.values():
            if isinstance(dist, CategoricalDistribution):
                values.append(list(dist.choices))
            elif isinstance(dist, IntDistribution):
                values.append(list(range(dist.low, dist.high + 1, dist.step)))
            elif isinstance(dist, FloatDistribution) and dist.step is not None:
                n = int(round((dist.high - dist.low) / dist.step)) + 1
                values.append([float(dist.low + i * dist.step) for i in range(n)])
            else:
                return None
        return values

    def size(self) -> int | None:
        """The number of configurations of a finite search space, else ``None``."""
        values = self._values()
        return None if values is None else math.prod(len(v) for v in values)

    def grid(self, limit: int) -> list[dict[str, Any]] | None:
        """Every configuration of a finite search space (categoricals, integers, stepped
        floats), or ``None`` when the space is continuous or has more than ``limit`` points.

        Examples
        --------
        >>> from optuna.distributions import CategoricalDistribution, IntDistribution
        >>> enc = SpaceEncoder({"a": CategoricalDistribution(["x", "y"]),
        ...                     "n": IntDistribution(1, 3)})
        >>> len(enc.grid(100)), enc.grid(5), enc.size()
        (6, None, 6)
        """
        values = self._values()
        if values is None or math.prod(len(v) for v in values) > limit:
            return None
        return [dict(zip(self.search_space, combo)) for combo in itertools.product(*values)]

    def round(self, encoded: np.ndarray) -> np.ndarray:
        """Snap encoded points to representable values (steps, integers)."""
        return self.encode(self.decode(encoded))


def _bounds(dist: FloatDistribution | IntDistribution) -> tuple[float, float]:
    if dist.log:
        return math.log(dist.low), math.log(dist.high)
    # Widen stepped ranges by half a step so every grid point has equal mass.
    half = 0.5 * (dist.step or 0.0)
    return dist.low - half, dist.high + half


def _to_unit(values: np.ndarray, dist: BaseDistribution) -> np.ndarray:
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    lo, hi = _bounds(dist)
    x = np.log(values) if dist.log else values
    if hi == lo:
        return np.full_like(x, 0.5)
    return (x - lo) / (hi - lo)


def _from_unit(unit: np.ndarray, dist: BaseDistribution) -> list[Any]:
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    lo, hi = _bounds(dist)
    x = lo + np.clip(unit, 0.0, 1.0) * (hi - lo)
    if dist.log:
        x = np.exp(x)
    if dist.step is not None:
        x = dist.low + np.round((x - dist.low) / dist.step) * dist.step
    x = np.clip(x, dist.low, dist.high)
    if isinstance(dist, IntDistribution):
        return [int(round(v)) for v in x]
    return [float(v) for v in x]
