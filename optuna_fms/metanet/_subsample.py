"""Deterministic, permutation-invariant subsampling of a weight tensor's entries by value."""

from __future__ import annotations

import torch


_HASH_CHUNK = 1 << 22
_HASH_MULTIPLIERS = (-1640531535, 0x2C1B3C6D, 0x297A2D39)


def _hash_subsample(flat: torch.Tensor, k: int | None) -> torch.Tensor | None:
    """Sorted indices of the entries whose value-hash key is below the k-th smallest key.

    ``None`` when ``flat`` has at most ``k`` entries (keep all). The selection depends only on
    the multiset of values, hence is invariant to any permutation of the entries.
    """
    n = flat.numel()
    if k is None or n <= k:
        return None
    # Keys are (nearly) uniform on the int32 range: a value-independent pre-filter keeps about
    # 4k candidates, among which the k-th smallest key is found exactly.
    span = min(2.0**32, 2.0**32 * 4.0 * k / n)
    bound = int(-(2.0**31) + span) if span < 2.0**32 else None
    for prefilter in (bound, None):
        cand_keys = []
        cand_idx = []
        for start in range(0, n, _HASH_CHUNK):
            keys = _hash_values(flat[start : start + _HASH_CHUNK])
            if prefilter is not None:
                idx = torch.nonzero(keys < prefilter).reshape(-1)
                top = keys[idx]
            else:
                top, idx = torch.topk(keys, min(k, keys.numel()), largest=False, sorted=False)
            cand_keys.append(top)
            cand_idx.append(idx + start)
        keys = torch.cat(cand_keys)
        if keys.numel() >= k:
            break
    idx = torch.cat(cand_idx)
    threshold = torch.kthvalue(keys, k).values
    keep = idx[keys < threshold]
    return torch.sort(keep).values


def _hash_values(values: torch.Tensor) -> torch.Tensor:
    """A 32-bit multiply-xorshift hash of the float32 bit pattern of each value (int32 keys).

    Integer multiplication wraps around modulo 2**32, as on every platform torch supports.
    """
    h = values.float().contiguous().view(torch.int32)
    for mult in _HASH_MULTIPLIERS:
        h = h * mult
        h = h ^ ((h >> 15) & 0x1FFFF)  # logical shift
    return h
