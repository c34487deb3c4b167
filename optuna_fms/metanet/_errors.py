from __future__ import annotations


class UnsupportedArchitectureError(ValueError):
    """Raised when a state dict cannot be expressed as a parameter graph.

    The message names the module or parameter that could not be expressed. Callers typically
    catch it and fall back to :func:`optuna_fms.metanet.weight_statistics`.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import UnsupportedArchitectureError, build_graph
    >>> try:
    ...     build_graph({"lstm.weight_ih_l0": torch.zeros(8, 2, 2, 2, 2, 2)})
    ... except UnsupportedArchitectureError as e:
    ...     print("lstm.weight_ih_l0" in str(e))
    True
    """
