"""PEFT adapters as checkpoints: the adapter's tensors only, and a description of the adapter.

A :class:`peft.PeftModel` is checkpointed as what ``model.save_pretrained`` would write for its
active adapter: ``peft.get_peft_model_state_dict(model)``, keyed as peft keys it (for LoRA
``base_model.model.<path>.lora_A.weight`` and ``.lora_B.weight``, plus the modules the adapter
trains in full, such as a classification head), never the frozen base. The ``adapter`` header
entry (JSON) describes the adapter:

- ``library`` (``"peft"``), ``peft_version``, ``adapter_name``, ``peft_type`` (``"LORA"``...);
- ``base_model``: ``name_or_path``, ``class`` and ``config`` (the base model's configuration as
  a dict, when it has one): a reference to the base, which a checkpoint does not contain;
- ``config``: the adapter's ``PeftConfig.to_dict()`` (what ``adapter_config.json`` holds);
- ``layers``: ``{path: {"r", "lora_alpha", "scaling"}}`` for each layer that has a rank and a
  scaling (LoRA and its variants), ``path`` being the prefix of that layer's tensor keys; the
  scaling is the factor applied to ``B @ A`` (``lora_alpha / r``, or ``lora_alpha / sqrt(r)``
  with rsLoRA).

peft is never imported here unless it already is: a module can only be a ``PeftModel`` when
peft has been imported.
"""

from __future__ import annotations

from collections.abc import Mapping
import enum
import json
import sys
from typing import TYPE_CHECKING
from typing import Any


if TYPE_CHECKING:
    import torch


def peft_model_of(module: Any) -> Any | None:
    """``module`` if it is a :class:`peft.PeftModel`, else ``None``."""
    peft = sys.modules.get("peft")
    peft_model = getattr(peft, "PeftModel", None)
    if peft_model is not None and isinstance(module, peft_model):
        return module
    return None


def _jsonable(obj: Any) -> Any:
    """``obj`` with sets as sorted lists, enums as their values and unknown objects as text."""
    if isinstance(obj, enum.Enum):
        return _jsonable(obj.value)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted((_jsonable(v) for v in obj), key=str)
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return str(obj)


def _layers(model: Any, adapter_name: str) -> dict[str, dict[str, Any]]:
    """``{path: {"r", "lora_alpha", "scaling"}}`` of the adapter's low-rank layers."""
    layers: dict[str, dict[str, Any]] = {}
    for path, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        rank = getattr(module, "r", None)
        if not isinstance(scaling, dict) or not isinstance(rank, dict):
            continue
        if adapter_name not in scaling or adapter_name not in rank:
            continue
        alpha = getattr(module, "lora_alpha", {}).get(adapter_name)
        layers[path] = {
            "r": int(rank[adapter_name]),
            "lora_alpha": None if alpha is None else float(alpha),
            "scaling": float(scaling[adapter_name]),
        }
    return layers


def adapter_state(model: Any) -> tuple[dict[str, torch.Tensor], str]:
    """The active adapter's tensors (as ``save_pretrained`` writes them) and its description.

    Examples
    --------
    >>> import json, peft, torch
    >>> from optuna_fms._checkpoint._adapter import adapter_state
    >>> base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> model = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0"]))
    >>> tensors, description = adapter_state(model)
    >>> sorted(tensors)
    ['base_model.model.0.lora_A.weight', 'base_model.model.0.lora_B.weight']
    >>> json.loads(description)["layers"]
    {'base_model.model.0': {'r': 2, 'lora_alpha': 4.0, 'scaling': 2.0}}
    """
    import peft

    name = model.active_adapter
    tensors = peft.get_peft_model_state_dict(model, adapter_name=name)
    config = model.peft_config[name]
    base = model.get_base_model()
    base_config = getattr(base, "config", None)
    to_dict = getattr(base_config, "to_dict", None)
    description = {
        "library": "peft",
        "peft_version": peft.__version__,
        "adapter_name": name,
        "peft_type": _jsonable(config.peft_type),
        "base_model": {
            "name_or_path": getattr(base_config, "name_or_path", None)
            or config.base_model_name_or_path,
            "class": f"{type(base).__module__}.{type(base).__qualname__}",
            "config": _jsonable(to_dict()) if callable(to_dict) else None,
        },
        "config": _jsonable(config.to_dict()),
        "layers": _layers(model, name),
    }
    return dict(tensors), json.dumps(description)


def load_weights(
    model: Any, tensors: Mapping[str, torch.Tensor], adapter: Mapping[str, Any] | None
) -> None:
    """Load a checkpoint's tensors into ``model``: an adapter onto a ``PeftModel``'s base, a
    full state dict with ``load_state_dict``.

    Raises
    ------
    ValueError
        An adapter checkpoint and a model that is not a ``PeftModel``, or an adapter whose
        tensor names differ from the model's adapter (the message lists the differences).
    """
    target = peft_model_of(model)
    if adapter is None:
        model.load_state_dict(tensors)
        return
    if target is None:
        raise ValueError(
            f"The checkpoint holds a PEFT {adapter.get('peft_type')} adapter, not a whole model: "
            f"load it into the peft.PeftModel it was trained in (peft.get_peft_model(base, "
            f"config) on the base model {adapter.get('base_model', {}).get('name_or_path')!r}), "
            f"not into a {type(model).__name__}."
        )
    import peft

    name = target.active_adapter
    expected = set(peft.get_peft_model_state_dict(target, adapter_name=name))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(
            f"The adapter checkpoint does not fit the model's adapter {name!r}: missing "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''} (another rank or other "
            "target modules?)."
        )
    peft.set_peft_model_state_dict(target, dict(tensors), adapter_name=name)
