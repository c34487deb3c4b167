"""Forecasts of a metric with a range stay inside it."""

from __future__ import annotations

import math

import numpy as np
import torch


def _phi(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)


def _cdf(z: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.as_tensor(z, dtype=torch.float64)).numpy()


def truncate(
    mean: np.ndarray, std: np.ndarray, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the normal forecast ``N(mean, std**2)`` restricted to
    ``[low, high]``, with the std then capped so that ``mean +- std`` stays inside too.

    A forecast is a distribution over scores the metric can take: conditioned on the range,
    its mean lies inside it and its spread shrinks near a bound. Where the normal puts
    almost no mass inside the range, the mean is the nearer bound.

    Examples
    --------
    >>> import numpy as np
    >>> m, s = truncate(np.array([1.02, 0.5]), np.array([0.07, 0.01]), 0.0, 1.0)
    >>> bool(0.9 < m[0] < 1.0 and m[0] + s[0] <= 1.0), round(float(m[1]), 6), round(float(s[1]), 6)
    (True, 0.5, 0.01)
    """
    mean = np.asarray(mean, dtype=float)
    std = np.maximum(np.asarray(std, dtype=float), 1e-12)
    a = (low - mean) / std
    b = (high - mean) / std
    mass = _cdf(b) - _cdf(a)
    ok = mass > 1e-9
    safe = np.where(ok, mass, 1.0)
    pa, pb = _phi(np.clip(a, -40, 40)), _phi(np.clip(b, -40, 40))
    # a*phi(a) -> 0 for infinite a; clip keeps the products finite.
    ca, cb = np.clip(a, -40, 40), np.clip(b, -40, 40)
    shift = (pa - pb) / safe
    var = std**2 * np.maximum(1 + (ca * pa - cb * pb) / safe - shift**2, 0.0)
    new_mean = np.where(ok, mean + std * shift, np.clip(mean, low, high))
    new_mean = np.clip(new_mean, low, high)
    new_std = np.where(ok, np.sqrt(var), 0.0)
    new_std = np.minimum(new_std, np.minimum(new_mean - low, high - new_mean))
    return new_mean, np.maximum(new_std, 0.0)
