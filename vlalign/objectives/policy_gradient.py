"""Policy-gradient losses of the RL path: PPO's clipped surrogate (with the DAPO / dual-clip /
Dr. GRPO variants as options) and the clipped value loss.

Token tensors are (B, T) with an explicit float ``mask``; how the (B, T) loss is reduced to a
scalar is picked by name from :data:`PG_LOSS_AGGREGATIONS` (the choice changes how long and short
responses are weighted, which is exactly what GRPO, DAPO and Dr. GRPO disagree about).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vlalign.objectives._checks import check_ndim, check_same_shape
from vlalign.objectives.kl import LOG_RATIO_CLAMP, kl_estimate
from vlalign.objectives.masked import masked_mean, masked_sum, zero_masked
from vlalign.registry import Registry


@dataclass(frozen=True)
class Aggregation:
    """How a (B, T) per-token loss becomes a scalar: ``numerator(loss, mask, C) / denominator``.

    ``unit`` names what the denominator counts (``tokens``: response tokens; ``seqs``: sequences
    with at least one token; ``rows``: all rows) and :meth:`units` counts it in one batch. By default
    the denominator is this batch's own count; a trainer that splits one optimizer step over
    micro-batches and processes passes the GLOBAL count (``denominator=``), so the per-micro-batch
    losses add up to exactly the loss of the whole batch: accumulation and data parallelism leave
    the loss and its gradient unchanged even when response lengths are ragged.
    """

    name: str
    numerator: Callable[[torch.Tensor, torch.Tensor, float | None], torch.Tensor]
    unit: str

    def units(self, mask: torch.Tensor) -> torch.Tensor:
        """This batch's count of the aggregation's unit (a 0-d float tensor)."""
        return count_units(self.unit, mask)

    def __call__(self, loss: torch.Tensor, mask: torch.Tensor, norm_constant: float | None = None,
                 denominator: float | torch.Tensor | None = None) -> torch.Tensor:
        num = self.numerator(loss, mask, norm_constant)
        den = self.units(mask) if denominator is None else torch.as_tensor(denominator, dtype=num.dtype)
        return num / den.to(num.device).clamp(min=1.0)


def count_units(unit: str, mask: torch.Tensor) -> torch.Tensor:
    """Count of ``unit`` in a (B, T) mask: ``tokens`` Σ mask, ``seqs`` rows with a token, ``rows`` B."""
    if unit == "tokens":
        return mask.to(torch.float32).sum()
    if unit == "seqs":
        return (mask.sum(dim=-1) > 0).to(torch.float32).sum()
    if unit == "rows":
        return torch.tensor(float(mask.shape[0]))
    raise ValueError(f"unknown aggregation unit {unit!r}; expected tokens, seqs or rows")


PG_LOSS_AGGREGATIONS: Registry[Aggregation] = Registry("policy-loss aggregation")


def _token_sum(loss: torch.Tensor, mask: torch.Tensor, norm_constant: float | None = None) -> torch.Tensor:
    return zero_masked(loss, mask).mul(mask).sum()


def _sum_of_seq_means(loss: torch.Tensor, mask: torch.Tensor, norm_constant: float | None = None) -> torch.Tensor:
    per_seq = masked_mean(loss, mask, dim=-1)  # (B,) 0 for empty rows
    return (per_seq * (mask.sum(dim=-1) > 0).to(loss.dtype)).sum()


def _token_sum_over_constant(loss: torch.Tensor, mask: torch.Tensor, norm_constant: float | None = None) -> torch.Tensor:
    constant = float(norm_constant) if norm_constant is not None else float(loss.shape[-1])
    if constant <= 0:
        raise ValueError(f"token_sum_norm: norm_constant must be > 0, got {norm_constant}")
    return _token_sum(loss, mask) / constant


#: Σ_{b,t} m·ℓ / Σ_{b,t} m: every token in the batch weighs the same (DAPO, Yu et al. 2025).
token_mean = PG_LOSS_AGGREGATIONS.register("token_mean")(Aggregation("token_mean", _token_sum, "tokens"))
#: mean_b [Σ_t m·ℓ / Σ_t m]: each sequence weighs the same (original GRPO, Shao et al. 2024), so
#: tokens of short responses weigh more. Sequences with an empty mask are left out.
seq_mean_token_mean = PG_LOSS_AGGREGATIONS.register("seq_mean_token_mean")(
    Aggregation("seq_mean_token_mean", _sum_of_seq_means, "seqs"))
#: Σ_b Σ_t m·ℓ / (B·C) with a CONSTANT C (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like
#: Training"): no length normalisation, so no length bias. C defaults to T (max generation length).
token_sum_norm = PG_LOSS_AGGREGATIONS.register("token_sum_norm")(
    Aggregation("token_sum_norm", _token_sum_over_constant, "rows"))


@dataclass
class PolicyLossOutput:
    loss: torch.Tensor  # scalar, differentiable
    clip_fraction: torch.Tensor  # scalar, detached: share of tokens where the clipped branch was taken
    approx_kl: torch.Tensor  # scalar, detached: k3 estimate of KL(π_old ‖ π) on the batch
    kl: torch.Tensor  # scalar, detached: mean in-loss KL to the reference (0 when kl_coef = 0)
    # detached token SUMS of the three statistics above, for callers that average over a global batch
    clipped_tokens: torch.Tensor | None = None
    approx_kl_sum: torch.Tensor | None = None
    kl_sum: torch.Tensor | None = None


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_low: float | None = None,
    clip_eps_high: float | None = None,
    clip_c: float | None = None,
    aggregation: str = "token_mean",
    norm_constant: float | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    denominator: float | torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"), per
    token with ρ = exp(log π − log π_old):

        ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))
        dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games"), for A < 0:
            ℓ = min(ℓ, −A·c)    with c = ``clip_c`` > 1
        + kl_coef·KL_kind(π ‖ π_ref)       (GRPO's in-loss KL, when ``ref_logprobs`` is given)

    then reduced with ``aggregation`` (see PG_LOSS_AGGREGATIONS; ``denominator`` = the global count of
    its unit when one optimizer step spans micro-batches or processes). ``token_weights`` (B, T), when
    given, multiply each token's loss (detached): the off-policy correction of replayed samples, see
    :func:`truncated_importance_weights`. ε_low = ε_high = ``clip_eps``
    unless given (DAPO's asymmetric "clip-higher", Yu et al. 2025). At ρ = 1 the gradient equals the
    vanilla policy gradient −A·∇log π. The log-ratio is clamped to ±20 before exp().
    All token inputs (B, T).
    """
    fn = "ppo_policy_loss"
    check_ndim(fn, 2, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask,
               ref_logprobs=ref_logprobs)
    check_same_shape(fn, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask,
                     ref_logprobs=ref_logprobs, token_weights=token_weights)
    low = clip_eps if clip_eps_low is None else clip_eps_low
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if not (0 <= low < 1 and high >= 0):
        raise ValueError(f"{fn}: need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got {low}, {high}")
    if clip_c is not None and clip_c <= 1:
        raise ValueError(f"{fn}: clip_c (dual clip) must be > 1, got {clip_c}")
    aggregate = PG_LOSS_AGGREGATIONS.get(aggregation)

    log_ratio = zero_masked(logprobs - old_logprobs.detach(), mask)  # (B, T)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)  # (B, T)
    adv = zero_masked(advantages.detach(), mask)  # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - low, 1.0 + high)
    loss_tok = torch.maximum(unclipped, clipped)  # (B, T)
    if clip_c is not None:
        loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, -adv * clip_c), loss_tok)

    kl_tok = torch.zeros_like(loss_tok)
    if ref_logprobs is not None and kl_coef:
        kl_tok = kl_estimate(logprobs, ref_logprobs.detach(), kind=kl_kind, mask=mask)  # (B, T)
        loss_tok = loss_tok + kl_coef * kl_tok
    elif kl_coef and ref_logprobs is None:
        raise ValueError(f"{fn}: kl_coef={kl_coef} needs ref_logprobs (B, T)")
    if token_weights is not None:
        loss_tok = loss_tok * token_weights.detach()

    loss = aggregate(zero_masked(loss_tok, mask), mask, norm_constant, denominator)
    with torch.no_grad():
        clipped_tok = (clipped > unclipped).to(logprobs.dtype)  # (B, T)
        approx_tok = torch.exp(log_ratio) - 1.0 - log_ratio  # (B, T) k3 of KL(old ‖ new)
        sums = [masked_sum(x, mask) for x in (clipped_tok, approx_tok, kl_tok.detach())]
        means = [masked_mean(x, mask) for x in (clipped_tok, approx_tok, kl_tok.detach())]
    return PolicyLossOutput(loss, *means, *sums)


def truncated_importance_weights(prox_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor,
                                 mask: torch.Tensor, rho_bar: float | None = 1.0) -> torch.Tensor:
    """Per-token importance weights of replayed samples, truncated at ρ̄ (B, T), detached:

        w_t = min(ρ̄, π_prox(y_t) / μ(y_t))

    μ = the behaviour policy that sampled the tokens (its log-probs stored with the rollout), π_prox =
    the policy at the start of the current update (the "proximal" policy). PPO's clipped surrogate is
    then taken on π_θ/π_prox and weighted by w: the decoupled PPO objective (Hilton et al. 2022,
    "Batch size-invariance for policy optimization"), whose trust region stays around the current
    policy however old the sample is, with the weight truncated as V-trace does (Espeholt et al.
    2018, "IMPALA"): it caps the variance that large ratios would bring, at the price of a bias
    towards μ. ``rho_bar=None`` = no truncation. For fresh samples π_prox = μ and w = 1.
    """
    fn = "truncated_importance_weights"
    check_ndim(fn, 2, prox_logprobs=prox_logprobs, behaviour_logprobs=behaviour_logprobs, mask=mask)
    check_same_shape(fn, prox_logprobs=prox_logprobs, behaviour_logprobs=behaviour_logprobs, mask=mask)
    if rho_bar is not None and rho_bar <= 0:
        raise ValueError(f"{fn}: rho_bar must be > 0 (or None for no truncation), got {rho_bar}")
    log_w = zero_masked(prox_logprobs.detach() - behaviour_logprobs.detach(), mask)
    w = torch.exp(log_w.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # (B, T)
    if rho_bar is not None:
        w = w.clamp(max=rho_bar)
    return zero_masked(w, mask)


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None = 0.2,
    aggregation: str = "token_mean",
    denominator: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Clipped value loss of PPO implementations (Schulman et al. 2017; as in OpenAI baselines and
    Ziegler et al. 2019), per token:

        V_clip = V_old + clip(V − V_old, −ε, ε)
        ℓ = ½·max((V − R)², (V_clip − R)²)

    reduced with ``aggregation`` (default: masked token mean; ``denominator`` as in
    :func:`ppo_policy_loss`). Inputs (B, T); returns a scalar.
    ``clip_eps=None`` disables clipping (plain ½·(V − R)²).
    """
    fn = "ppo_value_loss"
    check_ndim(fn, 2, values=values, old_values=old_values, returns=returns, mask=mask)
    check_same_shape(fn, values=values, old_values=old_values, returns=returns, mask=mask)
    values = zero_masked(values, mask)
    returns = zero_masked(returns.detach(), mask)
    old_values = zero_masked(old_values.detach(), mask)
    loss_tok = (values - returns) ** 2  # (B, T)
    if clip_eps is not None:
        v_clip = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        loss_tok = torch.maximum(loss_tok, (v_clip - returns) ** 2)
    return PG_LOSS_AGGREGATIONS.get(aggregation)(0.5 * loss_tok, mask, None, denominator)
