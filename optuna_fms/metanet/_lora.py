"""The canonical form of a LoRA update, computed from its factors without forming the product."""

from __future__ import annotations

import torch


DEFAULT_LORA_RTOL = 1e-5
"""Singular values of a LoRA update below this fraction of the largest one are dropped."""


def canonical_lora(
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float = 1.0,
    *,
    rtol: float = DEFAULT_LORA_RTOL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical factors of the LoRA update ``scaling * lora_B @ lora_A``.

    A LoRA adapter ``(A, B)`` (``A``: ``r x d_in``, ``B``: ``d_out x r``) adds
    ``delta W = s B A`` to a layer's weight, and ``(G A, B G^-1)`` is the same update for any
    invertible ``r x r`` matrix ``G``, not only a permutation of the rank. This function
    returns factors that depend on ``delta W`` alone: with the thin SVD
    ``delta W = U S V^T``, ``A' = S^(1/2) V^T`` and ``B' = U S^(1/2)``, singular values in
    decreasing order, each pair ``(u_i, v_i)`` signed so that the entry of ``u_i`` with the
    largest magnitude is positive. The SVD is taken without forming ``delta W``: a QR
    factorisation of ``s B`` and of ``A^T`` (``Q_B R_B`` and ``Q_A R_A``) and the SVD of the
    ``r x r`` core ``R_B R_A^T = U_c S V_c^T`` give ``U = Q_B U_c`` and ``V = Q_A V_c``, in
    ``O((d_in + d_out) r^2)`` time and ``O((d_in + d_out) r)`` memory, in double precision.

    Singular values at most ``rtol`` times the largest are dropped, so an adapter with a
    zero (or linearly dependent) rank gives the factors of its lower-rank form, and an
    all-zero update (LoRA's zero-initialised ``B``) gives ``0 x d_in`` and ``d_out x 0``
    factors.

    The factors are unique, hence invariant to ``G``, when the kept singular values are
    distinct. A repeated singular value fixes its singular subspace but not a basis of it: the
    factors may then differ by a rotation of those ranks (their product does not), and nearly
    repeated values make the factors sensitive to rounding (errors grow as the inverse of the
    gap). The sign convention is ambiguous only when two entries of ``u_i`` tie for the
    largest magnitude with opposite signs; the cut at ``rtol`` is discontinuous for a
    singular value right at it. A negative ``scaling`` goes into the signs of ``U``.

    Parameters
    ----------
    lora_A:
        The down-projection, ``r x d_in`` (peft's ``lora_A.weight``).
    lora_B:
        The up-projection, ``d_out x r`` (peft's ``lora_B.weight``).
    scaling:
        The factor ``s`` of the update (peft: ``lora_alpha / r``, or ``lora_alpha / sqrt(r)``
        with rsLoRA). It is folded into both factors (``S`` holds the singular values of
        ``s B A``), so the factors depend on the update only, not on how it is split between
        ``s`` and the weights.
    rtol:
        Relative threshold below which singular values are dropped.

    Returns
    -------
    tuple of torch.Tensor
        ``(A', B')``, float64, ``k x d_in`` and ``d_out x k`` with ``k <= r`` the numerical
        rank; ``B' @ A' == scaling * lora_B @ lora_A`` up to the dropped singular values.

    Raises
    ------
    ValueError
        If the factors are not matrices of matching rank.

    Examples
    --------
    >>> import torch
    >>> from optuna_fms.metanet import canonical_lora
    >>> gen = torch.Generator().manual_seed(0)
    >>> A, B = torch.randn(4, 10, generator=gen), torch.randn(6, 4, generator=gen)
    >>> G = torch.randn(4, 4, generator=gen) + 4 * torch.eye(4)
    >>> a1, b1 = canonical_lora(A, B, 2.0)
    >>> a2, b2 = canonical_lora(G @ A, B @ torch.linalg.inv(G), 2.0)
    >>> bool(torch.allclose(a1, a2, atol=1e-5) and torch.allclose(b1, b2, atol=1e-5))
    True
    >>> bool(torch.allclose(b1 @ a1, 2.0 * B.double() @ A.double(), atol=1e-5))
    True
    >>> [tuple(t.shape) for t in canonical_lora(A, torch.zeros(6, 4))]  # zero-initialised B
    [(0, 10), (6, 0)]
    """
    if lora_A.dim() != 2 or lora_B.dim() != 2 or lora_B.shape[1] != lora_A.shape[0]:
        raise ValueError(
            f"LoRA factors must be r x d_in and d_out x r matrices, got {list(lora_A.shape)} "
            f"and {list(lora_B.shape)}"
        )
    a = lora_A.detach().to(dtype=torch.float64, device="cpu")
    b = lora_B.detach().to(dtype=torch.float64, device="cpu") * float(scaling)
    q_b, r_b = torch.linalg.qr(b)
    q_a, r_a = torch.linalg.qr(a.T)
    u_c, s, vh_c = torch.linalg.svd(r_b @ r_a.T, full_matrices=False)
    keep = (
        s > rtol * s[0] if s.numel() and float(s[0]) > 0 else torch.zeros_like(s, dtype=torch.bool)
    )
    u = q_b @ u_c[:, keep]
    v = q_a @ vh_c[keep].T
    s = s[keep]
    if s.numel():
        largest = u.abs().argmax(0)
        sign = torch.sign(u[largest, torch.arange(u.shape[1])])
        sign[sign == 0] = 1.0
        u = u * sign
        v = v * sign
    root = s.sqrt()
    return root[:, None] * v.T, u * root
