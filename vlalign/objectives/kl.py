"""KL(π ‖ π_ref) estimators from policy samples, and the controllers that set the KL coefficient.

Estimators follow Schulman (2020), "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html).
With tokens sampled from π and δ = log π − log π_ref:

    k1 = δ                       unbiased, high variance, can be negative
    k2 = ½·δ²                    biased, low variance, ≥ 0
    k3 = exp(−δ) − (−δ) − 1      unbiased, low variance, ≥ 0   (GRPO's in-loss KL)
    abs = |δ|                    verl's ``abs``
    low_var_kl = clamp(k3, −10, 10)   verl's ``low_var_kl``: k3 with its value clamped, so one token
                                 with a huge log-ratio contributes at most 10 nats and no gradient

k3 here clamps only the log-ratio (±20) before exp(), so extreme log-probs give a large finite value;
``low_var_kl`` is verl's, clamped on both the log-ratio (±20) and the estimate ([−10, 10]). For
δ = −5 (π_ref five nats above π): k3 = e^5 − 5 − 1 = 142.4 with gradient 1 − e^5 = −147.4 per unit of
log π; low_var_kl = 10 with gradient 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vlalign.objectives._checks import check_positive, check_same_shape
from vlalign.objectives.masked import zero_masked
from vlalign.registry import Registry

KLEstimator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
KL_ESTIMATORS: Registry[KLEstimator] = Registry("KL estimator")

# exp(±20) ≈ 5e8 is far past any useful ratio; clamping keeps exp() finite for log-probs of ±1e4.
LOG_RATIO_CLAMP = 20.0


@KL_ESTIMATORS.register("k1", "kl")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log π − log π_ref, per token."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2", "mse")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½·(log π − log π_ref)², per token."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


# verl clamps its low_var_kl estimate to this range (the value, after the log-ratio clamp)
LOW_VAR_KL_CLAMP = 10.0


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1, per token; the log-ratio is clamped to
    ±20 before exp() so extreme log-probs give a large finite value instead of inf."""
    log_ratio = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(log_ratio) - log_ratio - 1.0


@KL_ESTIMATORS.register("low_var_kl")
def kl_low_var(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """verl's ``low_var_kl``: k3 (log-ratio clamped to ±20) with the estimate clamped to [−10, 10];
    a clamped token gets zero gradient."""
    return kl_k3(logprobs, ref_logprobs).clamp(-LOW_VAR_KL_CLAMP, LOW_VAR_KL_CLAMP)


@KL_ESTIMATORS.register("abs")
def kl_abs(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """verl's ``abs``: |log π − log π_ref|, per token."""
    return (logprobs - ref_logprobs).abs()


def kl_estimate(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kind: str = "k1",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) by name (``k1``, ``k2``, ``k3``), same shape as the inputs
    (typically (B, T)); positions where ``mask`` is 0 are exactly 0 (and get zero gradient).
    Names: ``k1`` (alias ``kl``), ``k2`` (``mse``), ``k3``, ``low_var_kl``, ``abs``."""
    check_same_shape("kl_estimate", logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    kl = KL_ESTIMATORS.get(kind)(logprobs, ref_logprobs)
    return kl if mask is None else zero_masked(kl, mask)


class FixedKLController:
    """Constant KL coefficient β (``.update`` is a no-op, kept so trainers treat both alike)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"FixedKLController: kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        return None


class AdaptiveKLController:
    """Proportional controller of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
    Preferences", §2.2): keeps the measured KL near ``target``,

        e = clip(KL/target − 1, −0.2, 0.2);   β ← β·(1 + e·n_steps/horizon)

    so β rises when the policy drifts too far and falls when it stays close.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        check_positive("AdaptiveKLController", init_kl_coef=init_kl_coef, target=target, horizon=horizon)
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        current_kl = float(current_kl)
        if math.isnan(current_kl):  # refuse to corrupt the coefficient
            raise ValueError("AdaptiveKLController.update: current_kl is NaN")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
