"""Reading (and the low-level writing) of benchmark hubs.

A hub is a directory::

    <hub>/
      index.json                  # what the hub is: search space, configurations, starts, tasks
      curves.npz                  # learning curves, arrays [n_configs, n_epochs]
      starts/<key>.safetensors    # the pretrained weights each configuration starts from
      checkpoints/c<id>.safetensors  # every epoch's weights of one configuration

``index.json`` holds ``format`` (= :data:`FORMAT_VERSION`), ``name``, ``size``, ``seed``,
``n_epochs``, ``search_space`` (parameter -> ``optuna.distributions.distribution_to_json``),
``configs`` (list of parameter dicts; the position is the config id), ``config_start`` (the
start each config fine-tunes), ``start_param`` (the parameter that selects the start),
``starts`` (list of ``{"key", "arch", "file", "pretrain", "info"}``), ``archs`` (architecture
name -> ``{"spec", "n_params", "structure"}``), ``tasks`` (``source``/``target`` split specs,
see :class:`optuna_fms.bench._data.TaskSpec`) and ``build`` (timing, workers, versions); the
``finetune`` hub adds ``config_adapter`` (per configuration, ``peft.LoraConfig`` keywords or
``null`` for full fine-tuning) and ``shared_run`` (per configuration, the configuration whose
run, curves and checkpoint file it shares). A LoRA configuration's checkpoint file holds its
adapter only, in peft's keys (``peft.get_peft_model_state_dict``).

``curves.npz`` holds ``val_accuracy``, ``val_loss`` and ``train_loss``, all
``[n_configs, n_epochs]`` float64, and ``seconds`` ``[n_configs]`` (fine-tuning wall time).
``index.json``'s ``metric`` names the curve that is the hub's objective (``val_accuracy`` or
``val_loss``) and ``direction`` whether it is maximised or minimised.

A checkpoint file holds, for every state-dict key, one tensor of shape ``[n_epochs, *shape]``:
row ``e`` is the weights after epoch ``e`` (0-based), the weights the curves' ``[c, e]`` were
measured with. Floating tensors are stored as float16 (the score is measured on the fp16
weights, so a stored checkpoint reproduces its score exactly); integer buffers (BatchNorm's
``num_batches_tracked``) keep their dtype. Start files hold a plain state dict in the same
dtypes.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
import functools
import json
from pathlib import Path
from typing import Any
import warnings

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
import safetensors
import safetensors.torch
import torch

from optuna_fms.bench._arch import build_module
from optuna_fms.bench._data import TaskSpec
from optuna_fms.bench._data import make_task
from optuna_fms.bench._train import evaluate


FORMAT_VERSION = 2
INDEX_FILE = "index.json"
CURVES_FILE = "curves.npz"


def checkpoint_file(config_id: int) -> str:
    return f"checkpoints/c{config_id:05d}.safetensors"


def start_file(key: str) -> str:
    return f"starts/{key}.safetensors"


def describe_structure(module: torch.nn.Module) -> dict[str, Any] | None:
    """The structure description stored per architecture in the hub index.

    THE single place where :func:`optuna_fms.metanet.describe_module` is called, both when a hub
    is written and, lazily, when an index holds ``None`` (a hub written before the metanet
    package existed). Returns ``None`` if the metanet package is missing or fails.
    """
    try:
        from optuna_fms.metanet import describe_module
    except ImportError:
        return None
    try:
        return describe_module(module)
    except Exception as e:  # noqa: BLE001 - a hub stays usable without a structure
        warnings.warn(f"describe_module failed on {type(module).__name__}: {e!r}", stacklevel=2)
        return None


def save_checkpoints(path: Path, states: list[dict[str, torch.Tensor]]) -> None:
    """Write the per-epoch state dicts of one configuration (stacked along a new dim 0)."""
    stacked = {k: torch.stack([s[k] for s in states]).contiguous() for k in states[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(stacked, str(path), metadata={"n_epochs": str(len(states))})


def save_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def _resolve_hyperparameters(
    grid: Mapping[str, Sequence[Any]],
    ordered: Collection[str],
    fixed: Mapping[str, Any],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The fine-tuning hyper-parameters of a configuration, as training used them.

    ``params`` holds the configuration's search-space values, where an ordered parameter is an
    index into its ``grid`` values; those are resolved to the values, and the hyper-parameters
    every configuration shares (``fixed``) are added. One rule for the hub builder (what a
    configuration is trained with) and :meth:`Hub.hyperparameters` (what it was trained with).

    >>> grid = {"lr": [0.1, 0.01], "opt": ["sgd", "adam"]}
    >>> _resolve_hyperparameters(grid, ("lr",), {"wd": 0.0}, {"lr": 1, "opt": "adam"})
    {'wd': 0.0, 'lr': 0.01, 'opt': 'adam'}
    """
    out = dict(fixed)
    for k, v in params.items():
        out[k] = grid[k][v] if k in ordered else v
    return out


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


class Hub:
    """A benchmark hub: every configuration's learning curve and per-epoch checkpoints.

    A hub was computed once by really fine-tuning every configuration for ``n_epochs`` epochs
    from a pretrained start; replaying it answers "what score would this configuration have after
    epoch ``e``, and what would its weights be" without training. Use :meth:`load` to open one
    (built by :func:`optuna_fms.bench.build_hub` or ``optuna-fms build-hub``).

    Epochs are 0-based throughout: ``scores[c, e]`` and ``checkpoint(c, e)`` are the score and
    the weights after ``e + 1`` epochs of training.

    A hub's objective (``metric``) is maximised (validation accuracy) or minimised (validation
    loss, ``direction == "minimize"``). A replayed trial reports the metric as it is
    (:attr:`values`); everything that ranks configurations (regret, best observed, Kendall's
    tau, reference predictors) reads :attr:`scores`, the metric times :attr:`sign`, which is
    higher-is-better for every hub.

    Attributes
    ----------
    name:
        ``"zoo"``, ``"zoo-mnist"``, ``"zoo-noisy"``, ``"arch"``, ``"tabular"``,
        ``"crossing"``, ``"finetune"`` or ``"tiny"``.
    search_space:
        Parameter name -> :class:`optuna.distributions.BaseDistribution`: categorical choices
        for categories, ``IntDistribution(0, n - 1)`` (an index into ``grid[name]``) for
        ordered values. Every point of it is a configuration of the hub.
    configs:
        Parameter dicts in search-space terms; the position in the list is the config id.
    grid:
        Parameter name -> its values (for an ordered parameter, index ``i`` means
        ``grid[name][i]``; the values are spaced evenly in log where they span a wide range).
    ordered:
        The names of the ordered (integer-index) parameters.
    n_epochs:
        Length of every learning curve.
    metric:
        Name of the curve that is the objective: ``"val_accuracy"`` or ``"val_loss"``.
    direction:
        ``"maximize"`` or ``"minimize"``: how a study of this hub's metric is created.
    sign:
        ``1.0`` for a maximised metric, ``-1.0`` for a minimised one.
    values:
        The metric as measured (what a replayed trial reports), ``[n_configs, n_epochs]``.
    scores:
        ``sign * values``: the metric in higher-is-better units (the validation accuracy, or
        minus the validation loss), ``numpy`` array ``[n_configs, n_epochs]``.
    curves:
        All stored curves by name (``val_accuracy``, ``val_loss``, ``train_loss``).
    index:
        The raw ``index.json`` (tasks, starts and their pretraining recipes, build info).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from optuna_fms.bench import Hub, build_hub
    >>> path = build_hub("tiny", Path(tempfile.mkdtemp()), workers=1, progress=False)
    >>> hub = Hub.load(path)
    >>> hub.scores.shape
    (12, 6)
    >>> c = int(hub.final_scores().argmax())
    >>> hub.find_config(hub.configs[c]) == c
    True
    >>> net = hub.module(c)
    >>> _ = net.load_state_dict(hub.checkpoint(c, hub.n_epochs - 1))
    >>> hub.evaluate(net) == hub.best_final_score
    True
    """

    def __init__(self, path: Path, index: dict[str, Any], curves: dict[str, np.ndarray]) -> None:
        if index.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has hub format {index.get('format')!r}; this reader reads "
                f"{FORMAT_VERSION}. Rebuild the hub."
            )
        self.path = Path(path)
        self.index = index
        self.name: str = index["name"]
        self.n_epochs: int = int(index["n_epochs"])
        self.search_space: dict[str, BaseDistribution] = {
            k: optuna.distributions.json_to_distribution(v)
            for k, v in index["search_space"].items()
        }
        self.configs: list[dict[str, Any]] = [dict(c) for c in index["configs"]]
        self.curves = curves
        self.metric: str = index.get("metric", "val_accuracy")
        self.direction: str = index.get("direction", "maximize")
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"{path}: unknown direction {self.direction!r}.")
        self.sign: float = 1.0 if self.direction == "maximize" else -1.0
        self.values: np.ndarray = curves[self.metric]
        self.scores: np.ndarray = self.values if self.sign > 0 else -self.values
        self._config_start: list[int] = list(index["config_start"])
        self._starts: list[dict[str, Any]] = index["starts"]
        self._structures: dict[str, dict[str, Any] | None] = {
            a: v.get("structure") for a, v in index["archs"].items()
        }
        self.grid: dict[str, list[Any]] = {k: list(v) for k, v in index["grid"].items()}
        self.ordered: tuple[str, ...] = tuple(index["ordered"])
        self._lookup = {self._key(c): i for i, c in enumerate(self.configs)}

    @classmethod
    def load(cls, path: str | Path) -> Hub:
        """Open the hub stored in directory ``path``."""
        path = Path(path).expanduser()
        with open(path / INDEX_FILE) as f:
            index = json.load(f)
        with np.load(path / CURVES_FILE) as z:
            curves = {k: z[k] for k in z.files}
        return cls(path, index, curves)

    def __repr__(self) -> str:
        return (
            f"Hub(name={self.name!r}, n_configs={self.n_configs}, n_epochs={self.n_epochs}, "
            f"path='{self.path}')"
        )

    # ------------------------------------------------------------------ scores and configs
    @property
    def n_configs(self) -> int:
        return len(self.configs)

    @property
    def study_direction(self) -> StudyDirection:
        """:attr:`direction` as Optuna's enum, for ``optuna.create_study``."""
        return StudyDirection.MAXIMIZE if self.sign > 0 else StudyDirection.MINIMIZE

    def final_scores(self) -> np.ndarray:
        """Score (higher is better: ``sign`` x the metric) of every configuration after its
        last epoch, ``[n_configs]``."""
        return self.scores[:, -1]

    @property
    def best_final_score(self) -> float:
        """The best final score in the hub (the reference for regret), higher-is-better
        units: the best final metric is ``sign * best_final_score``."""
        return float(self.final_scores().max())

    def _key(self, params: Mapping[str, Any]) -> tuple:
        key = []
        for name in self.search_space:
            if name not in params:
                raise KeyError(f"Parameter {name!r} missing; expected {list(self.search_space)}.")
            v = params[name]
            if isinstance(v, float) and not isinstance(v, bool):
                v = float(f"{v:.12g}")
            key.append(v)
        return tuple(key)

    def find_config(self, params: Mapping[str, Any]) -> int:
        """The id of the configuration with exactly these parameters.

        Every point of the search space is a configuration (the hubs are full grids), so a
        sampler's proposal always has one. Floats are compared to 12 significant digits. Extra
        keys are ignored.

        Raises
        ------
        KeyError
            If no configuration of the hub has these parameters.
        """
        key = self._key(params)
        try:
            return self._lookup[key]
        except KeyError:
            raise KeyError(
                f"No configuration of hub {self.name!r} has parameters {dict(params)}."
            ) from None

    def hyperparameters(self, config_id: int) -> dict[str, Any]:
        """The fine-tuning hyper-parameters of a configuration, as training used them.

        Ordered parameters are grid indices in the search space (``lr=2``); here they are
        resolved to their values (``lr=0.01``), and hyper-parameters every configuration shares
        (``index["fixed"]``) are added.
        """
        return _resolve_hyperparameters(
            self.grid, self.ordered, self.index.get("fixed", {}), self.configs[config_id]
        )

    # ------------------------------------------------------------------ weights and modules
    def _start(self, config_id: int) -> dict[str, Any]:
        return self._starts[self._config_start[config_id]]

    def arch(self, config_id: int) -> str:
        """The architecture name of a configuration's network."""
        return self._start(config_id)["arch"]

    def adapter(self, config_id: int) -> dict[str, Any] | None:
        """The ``peft.LoraConfig`` keywords of a configuration fine-tuned through a LoRA
        adapter (``finetune`` hub), ``None`` for one fine-tuned in full (every other hub)."""
        adapters = self.index.get("config_adapter")
        return None if adapters is None else adapters[config_id]

    def module(self, config_id: int) -> torch.nn.Module:
        """A freshly initialised network of the configuration's architecture (float32).

        Load :meth:`checkpoint` or :meth:`start_weights` into it with ``load_state_dict``.
        For a LoRA configuration (:meth:`adapter`) it is the ``peft.PeftModel`` the adapter
        was trained in: the start's weights as its frozen base and a fresh adapter; load an
        adapter checkpoint into it with ``load_state_dict`` (needs peft).
        """
        arch = self.arch(config_id)
        net = build_module(arch, self.index["archs"][arch]["spec"])
        adapter = self.adapter(config_id)
        if adapter is None:
            return net
        from optuna_fms.bench._finetune import adapter_model

        net.load_state_dict(self.start_weights(config_id))
        return adapter_model(net, adapter)

    def checkpoint(self, config_id: int, epoch: int) -> dict[str, torch.Tensor]:
        """The state dict after epoch ``epoch`` (0-based) of configuration ``config_id``.

        Floating tensors are returned as float32.
        """
        if not 0 <= epoch < self.n_epochs:
            raise IndexError(f"epoch {epoch} out of range [0, {self.n_epochs}).")
        if not 0 <= config_id < self.n_configs:
            raise IndexError(f"config_id {config_id} out of range [0, {self.n_configs}).")
        out = {}
        with safetensors.safe_open(self.path / checkpoint_file(config_id), "pt") as f:
            for k in f.keys():
                out[k] = _as_float32(f.get_slice(k)[epoch : epoch + 1][0].clone())
        return out

    def start_weights(self, config_id: int) -> dict[str, torch.Tensor]:
        """The pretrained state dict that configuration ``config_id`` starts fine-tuning from.

        It is the zoo member (zoo hubs), the pretrained architecture (arch hub) or the
        initialisation (hubs trained from scratch), exactly as training loaded it; float32.
        """
        st = safetensors.torch.load_file(str(self.path / self._start(config_id)["file"]))
        return {k: _as_float32(v) for k, v in st.items()}

    def start_key(self, config_id: int) -> str:
        """Name of the configuration's start (``"m007"``, ``"resnet"``...)."""
        return self._start(config_id)["key"]

    def structure(self, config_id: int) -> dict[str, Any] | None:
        """Description of the configuration's network for the graph metanetwork.

        The output of :func:`optuna_fms.metanet.describe_module` on :meth:`module`, stored per
        architecture when the hub was built (computed now if the index holds none), or ``None``
        if the metanet package is unavailable.
        """
        arch = self.arch(config_id)
        if self._structures.get(arch) is None:
            self._structures[arch] = describe_structure(
                build_module(arch, self.index["archs"][arch]["spec"])
            )
        return self._structures[arch]

    def checkpoint_structure(self, config_id: int) -> dict[str, Any] | None:
        """The structure that describes :meth:`checkpoint`: :meth:`structure`, or for a LoRA
        configuration that of its ``peft.PeftModel`` (:meth:`module`), which records the
        adapter's rank and scaling (what the metanetwork reads an adapter-only state dict
        with)."""
        adapter = self.adapter(config_id)
        if adapter is None:
            return self.structure(config_id)
        key = f"{self.arch(config_id)}+lora:{json.dumps(adapter, sort_keys=True)}"
        if key not in self._structures:
            self._structures[key] = describe_structure(self.module(config_id))
        return self._structures[key]

    # ------------------------------------------------------------------ validation data
    @functools.cached_property
    def _target(self):
        return make_task(TaskSpec.from_json(self.index["tasks"]["target"]))

    def validation_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels [n])`` of the target task's validation split (images
        ``[n, 1, 8, 8]`` or feature vectors ``[n, d]``)."""
        return self._target.x_val, self._target.y_val

    def evaluate(self, module: torch.nn.Module) -> float:
        """The hub's metric (validation accuracy or loss, see :attr:`metric`) of ``module`` on
        the target task, as :attr:`values` measure it.

        Run with one torch thread for bit-identical results to the stored values.
        """
        x, y = self.validation_data()
        acc, loss = evaluate(module, x, y)
        return loss if self.metric == "val_loss" else acc
