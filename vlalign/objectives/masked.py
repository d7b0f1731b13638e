"""Masked reductions: every token-level quantity is reduced with an explicit float mask.

Padding must never leak into a mean, a variance or a whitening step; an empty mask gives 0 (not NaN)
so that a batch where every response was truncated away does not poison the run.
"""

from __future__ import annotations

import torch

from vlalign.objectives._checks import check_same_shape


def zero_masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values with masked-out entries replaced by 0 (a `where`, so inf/NaN padding cannot leak
    through a multiplication by 0, and masked entries get exactly zero gradient)."""
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ values·mask over ``dim`` (all dims when None)."""
    check_same_shape("masked_sum", values=values, mask=mask)
    masked = zero_masked(values, mask) * mask
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ values·mask / Σ mask; 0 where the mask is empty (denominator clamped to ≥ 1 count)."""
    check_same_shape("masked_mean", values=values, mask=mask)
    mask = mask.to(values.dtype)
    masked = zero_masked(values, mask) * mask
    total = masked.sum() if dim is None else masked.sum(dim=dim)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return total / count.clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over all masked-in entries (Bessel-corrected when ``unbiased``); 0 when < 2 entries."""
    check_same_shape("masked_var", values=values, mask=mask)
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    sq = masked_sum((values - mean) ** 2, mask)
    count = mask.sum()
    denom = (count - 1.0) if unbiased else count
    return sq / denom.clamp(min=1.0)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
    stats: tuple[float, float] | None = None,
) -> torch.Tensor:
    """(x − mean)/sqrt(var + eps) over masked-in entries; masked-out entries come back as 0.

    Used to whiten advantages (PPO, Schulman et al. 2017 implementations) and rewards. With
    ``shift_mean=False`` the mean is added back (keeps the sign of rewards, as in Ziegler et al. 2019).
    ``stats`` = (mean, Bessel-corrected variance) of a batch spread over several processes, reduced by
    the caller, so every process whitens with the same numbers.
    """
    check_same_shape("masked_whiten", values=values, mask=mask)
    mask = mask.to(values.dtype)
    if stats is None:
        mean, var = masked_mean(values, mask), masked_var(values, mask)
    else:
        mean, var = (torch.as_tensor(v, dtype=values.dtype, device=values.device) for v in stats)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return zero_masked(whitened, mask)
