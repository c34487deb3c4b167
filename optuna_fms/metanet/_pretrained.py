"""A graph metanetwork pretrained to predict fine-tuning, saved as safetensors (no pickle)."""

from __future__ import annotations

from collections.abc import Sequence
import json
import os
from pathlib import Path
from typing import Any

import torch

from optuna_fms.metanet._gmn import FIRST_EDGE_FEATURES
from optuna_fms.metanet._gmn import GraphMetanetwork
from optuna_fms.metanet._gmn import edge_columns
from optuna_fms.metanet._graph import EDGE_FEATURES
from optuna_fms.metanet._graph import ParamGraph


FORMAT_VERSION = 1
SHIPPED_FILE = Path(__file__).with_name("pretrained_gmn.safetensors")
"""The metanetwork shipped with the package (``optuna-fms pretrain-metanet``, docs/usage.md)."""
TARGETS = ("run_quantile", "start_top_quantile")
"""What the head predicts from a checkpoint, as a centred quantile of the fine-tuning runs of
its task (``-0.5`` worst, ``0.5`` best): the final score of the run the checkpoint belongs to
(for start weights, the mean over the runs fine-tuned from them), and the mean over the best
quarter of the runs fine-tuned from the same start weights."""
MAX_EDGES_PER_LAYER = 256
"""Edge budget per layer of the graphs the metanetwork reads, in pretraining and in studies."""


class PretrainedMetanetwork(torch.nn.Module):
    """A :class:`GraphMetanetwork` with a linear head, trained to predict how a network fine-tunes.

    The metanetwork embeds a parameter graph into ``out_dim`` numbers, standardised with the
    moments of the pretraining data; the head maps them to
    :data:`TARGETS`, predictions of the fine-tuning runs' final score as a quantile of the task's
    runs. :meth:`predict` is the low-dimensional embedding the GP surrogate reads; the deep
    kernel reads the metanetwork's embedding (its ``gmn`` submodule). Weights and settings are
    stored in one safetensors file (tensors, and JSON metadata: settings, training data, the
    command and the recorded prediction of a fixed reference network), loaded without pickle.

    Parameters
    ----------
    out_dim, hidden, num_layers:
        The metanetwork's settings (:class:`GraphMetanetwork`).
    info:
        JSON-serialisable description of how the weights were made (saved with them).

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import PretrainedMetanetwork, build_graph
    >>> net = PretrainedMetanetwork.load()  # the shipped weights
    >>> graph = build_graph(torch.nn.Linear(4, 3).state_dict())
    >>> net.predict([graph]).shape
    torch.Size([1, 2])
    """

    def __init__(
        self,
        *,
        out_dim: int = 16,
        hidden: int = 32,
        num_layers: int = 4,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.settings = {"out_dim": out_dim, "hidden": hidden, "num_layers": num_layers}
        self.gmn = GraphMetanetwork(out_dim=out_dim, hidden=hidden, num_layers=num_layers)
        # Networks of one architecture differ little after mean pooling; standardising the
        # embedding over the batch (running moments at inference) lets the head read those
        # differences: without it, predictions on the tiny hub spread 0.006 instead of 0.27.
        self.norm = torch.nn.BatchNorm1d(out_dim, affine=False)
        self.head = torch.nn.Linear(out_dim, len(TARGETS))
        self.info: dict[str, Any] = dict(info or {})

    def forward(self, graphs: Sequence[ParamGraph]) -> torch.Tensor:
        """Predicted :data:`TARGETS`, ``[len(graphs), len(TARGETS)]`` (differentiable)."""
        return self.head(self.norm(self.gmn(graphs)))

    @torch.no_grad()
    def predict(self, graphs: Sequence[ParamGraph]) -> torch.Tensor:
        """:meth:`forward` in evaluation mode, without gradients."""
        was = self.training
        self.eval()
        try:
            return self(graphs)
        finally:
            self.train(was)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write weights, settings and ``info`` to a safetensors file at ``path``."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        meta = {
            "format": str(FORMAT_VERSION),
            "settings": json.dumps(self.settings),
            "targets": json.dumps(list(TARGETS)),
            "max_edges_per_layer": str(MAX_EDGES_PER_LAYER),
            "edge_features": json.dumps(list(EDGE_FEATURES)),
            "info": json.dumps(self.info),
        }
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> PretrainedMetanetwork:
        """Load weights saved by :meth:`save`; ``None``: the weights shipped with the package.

        Raises
        ------
        ValueError
            If the file is not a pretrained metanetwork of this format (with what to do).
        """
        from safetensors import SafetensorError
        from safetensors import safe_open

        file = Path(SHIPPED_FILE if path is None else path).expanduser()
        try:
            with safe_open(str(file), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # missing, corrupt
            raise ValueError(
                f"Cannot read a pretrained metanetwork from {file} ({err}). Pass a file written "
                "by `optuna-fms pretrain-metanet`, or metanetwork=None for an untrained one."
            ) from err
        if meta.get("format") != str(FORMAT_VERSION) or "settings" not in meta:
            raise ValueError(
                f"{file} is not a pretrained metanetwork of format {FORMAT_VERSION} "
                f"(metadata {sorted(meta)}); write one with `optuna-fms pretrain-metanet`."
            )
        try:
            targets = json.loads(meta.get("targets", "[]"))
            settings = json.loads(meta["settings"])
            info = json.loads(meta.get("info", "{}"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file} has malformed metadata ({err}).") from err
        if targets != list(TARGETS):
            raise ValueError(f"{file} predicts {meta.get('targets')}, expected {list(TARGETS)}.")
        _read_edge_features(file, meta, tensors)
        _check_settings(file, settings, tensors)
        net = cls(**settings, info=info if isinstance(info, dict) else {})
        try:
            net.load_state_dict(tensors)
        except RuntimeError as err:
            raise ValueError(f"{file} does not match its own settings: {err}") from err
        return net.eval()


def _read_edge_features(
    file: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]
) -> None:
    """Lay the file's edge encoder out for this version's :data:`EDGE_FEATURES` (in place): a
    file written before an edge type was added (``edge_features`` not recorded: the
    ``FIRST_EDGE_FEATURES``) reads that type through a zero column, so it embeds every graph
    without such edges as it did when it was trained."""
    key = "gmn.edge_encoder.0.weight"
    try:
        features = json.loads(meta["edge_features"]) if "edge_features" in meta else None
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} has malformed metadata ({err}).") from err
    if key in tensors:
        try:
            tensors[key] = edge_columns(tensors[key], features or FIRST_EDGE_FEATURES)
        except ValueError as err:
            raise ValueError(f"{file} does not fit this version's edge features: {err}") from err


_MAX_LAYERS = 64
"""More message-passing layers than any metanetwork here has (4): a file that asks for more is
refused before anything is built."""


def _check_settings(file: Path, settings: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse settings that are not the constructor's positive integers, or whose network
    would not have exactly the file's tensor shapes, before the network is built: a small
    file must not make the loader allocate what its metadata claims (``hidden=200000``)."""
    keys = {"out_dim", "hidden", "num_layers"}
    if (
        not isinstance(settings, dict)
        or not set(settings) <= keys
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in settings.values())
        or not all(v >= 1 for v in settings.values())
        or settings.get("num_layers", 4) > _MAX_LAYERS
    ):
        raise ValueError(
            f"{file} has invalid settings {settings!r}: expected positive integers "
            f"{sorted(keys)}, at most {_MAX_LAYERS} layers."
        )
    with torch.device("meta"):
        shapes = {
            k: tuple(v.shape) for k, v in PretrainedMetanetwork(**settings).state_dict().items()
        }
    if shapes != {k: tuple(v.shape) for k, v in tensors.items()}:
        raise ValueError(f"{file} does not match its own settings {settings!r}.")


def reference_network() -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A fixed small CNN (seeded, built without randomness from outside) and its structure.

    Its predicted targets are recorded in the weights file at pretraining, so that a test can
    check that loading the file reproduces them.
    """
    from optuna_fms.metanet._structure import describe_module

    gen = torch.Generator().manual_seed(1234)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net.state_dict(), describe_module(net)
