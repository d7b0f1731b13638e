"""Preference objectives of the direct path (DPO and its relatives) as pure tensor functions.

Inputs are per-sequence log-probabilities, shape (B,): the sum over response tokens of
log π(y_t | x, y_<t) unless a function says it wants length-normalised (average) log-probs.
Every function returns a :class:`PreferenceLossOutput` whose first element is the per-example loss
(B,), so ``loss = dpo_loss(...)[0].mean()`` and ``dpo_loss(...).losses.mean()`` both work; the
implicit rewards are returned detached, for logging (reward accuracy, margins).

Notation used in the docstrings: π = policy, π_ref = reference, c/r = chosen/rejected,
h = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)) the log-ratio margin, σ = sigmoid.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from vlalign.objectives._checks import check_ndim, check_positive, check_same_shape
from vlalign.objectives.masked import zero_masked


class _PreferenceLossTuple(NamedTuple):
    losses: torch.Tensor  # (B,) per-example loss, differentiable
    chosen_rewards: torch.Tensor  # (B,) implicit reward of the chosen response, detached
    rejected_rewards: torch.Tensor  # (B,) implicit reward of the rejected response, detached


class PreferenceLossOutput(_PreferenceLossTuple):
    """(losses, chosen_rewards, rejected_rewards), each (B,), plus ``.extras``: name -> (B,)
    detached parts for logging. ``extras`` is an attribute, not a tuple element, so the result
    unpacks as the familiar 3-tuple: ``losses, chosen_r, rejected_r = dpo_loss(...)``."""

    extras: dict[str, torch.Tensor]

    def __new__(cls, losses: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                extras: dict[str, torch.Tensor] | None = None):
        self = super().__new__(cls, losses, chosen_rewards, rejected_rewards)
        self.extras = dict(extras or {})
        return self


def _check_pair(fn: str, **tensors: torch.Tensor | None) -> None:
    check_ndim(fn, 1, **tensors)
    check_same_shape(fn, **tensors)


def _logratios(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log π/π_ref of chosen, of rejected, margin h = their difference), each (B,)."""
    chosen = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected = policy_rejected_logps - ref_rejected_logps  # (B,)
    return chosen, rejected, chosen - rejected


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLossOutput:
    """Sigmoid DPO (Rafailov et al. 2023, "Direct Preference Optimization"), with conservative
    DPO (cDPO, Mitchell 2023) when ``label_smoothing`` = ε > 0 (labels flipped with probability ε):

        loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)

    At h = 0 the loss is log 2 whatever ε. Rewards: β·(log π − log π_ref).
    """
    _check_pair("dpo_loss", policy_chosen_logps=policy_chosen_logps,
                policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
                ref_rejected_logps=ref_rejected_logps)
    check_positive("dpo_loss", beta=beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen, rejected, margin = _logratios(policy_chosen_logps, policy_rejected_logps,
                                          ref_chosen_logps, ref_rejected_logps)
    logits = beta * margin  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLossOutput(losses, (beta * chosen).detach(), (beta * rejected).detach(), {})


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences"): regress the margin onto a fixed target instead of pushing it to infinity,

        loss = (h − 1/(2β))²

    so it stays bounded on deterministic preferences where DPO overfits. Here β plays the role of
    the paper's τ (regularisation strength). Rewards: β·(log π − log π_ref).
    """
    _check_pair("ipo_loss", policy_chosen_logps=policy_chosen_logps,
                policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
                ref_rejected_logps=ref_rejected_logps)
    check_positive("ipo_loss", beta=beta)
    chosen, rejected, margin = _logratios(policy_chosen_logps, policy_rejected_logps,
                                          ref_chosen_logps, ref_rejected_logps)
    losses = (margin - 1.0 / (2.0 * beta)) ** 2
    return PreferenceLossOutput(losses, (beta * chosen).detach(), (beta * rejected).detach(), {})


def hinge_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """SLiC-style hinge (Zhao et al. 2023, "SLiC-HF"; as the hinge variant of RSO, Liu et al. 2023):

        loss = max(0, 1 − β·h)

    Zero once the scaled margin exceeds 1, so satisfied pairs stop pulling. Rewards: β·log-ratios.
    """
    _check_pair("hinge_loss", policy_chosen_logps=policy_chosen_logps,
                policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
                ref_rejected_logps=ref_rejected_logps)
    check_positive("hinge_loss", beta=beta)
    chosen, rejected, margin = _logratios(policy_chosen_logps, policy_rejected_logps,
                                          ref_chosen_logps, ref_rejected_logps)
    losses = torch.relu(1.0 - beta * margin)
    return PreferenceLossOutput(losses, (beta * chosen).detach(), (beta * rejected).detach(), {})


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
) -> PreferenceLossOutput:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward"). Inputs are LENGTH-NORMALISED log-probs (mean over response tokens), no reference:

        loss = −log σ(β·(c − r) − γ)

    γ is the target reward margin (absolute, not γ/β). Rewards: β·c and β·r.
    """
    _check_pair("simpo_loss", policy_chosen_logps=policy_chosen_logps,
                policy_rejected_logps=policy_rejected_logps)
    check_positive("simpo_loss", beta=beta)
    chosen = beta * policy_chosen_logps  # (B,)
    rejected = beta * policy_rejected_logps  # (B,)
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return PreferenceLossOutput(losses, chosen.detach(), rejected.detach(), {})


# log p must stay strictly below 0 for log(1 − p) to be finite; this is the largest log p allowed.
_MAX_LOGP = -1e-6


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, accurate everywhere (Mächler 2012, "Accurately computing
    log(1 − exp(−|a|))"): log(−expm1(x)) near 0, log1p(−exp(x)) for x < −log 2.
    Inputs are clamped to ≤ −1e-6 so a probability of exactly 1 gives a large finite value."""
    x = x.clamp(max=_MAX_LOGP)
    near_zero = x > -0.6931471805599453
    # Evaluate each branch on a safe input so the unused branch never makes inf/NaN gradients.
    a = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -1.0), x)))
    return torch.where(near_zero, a, b)


def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    beta: float = 0.1,
) -> PreferenceLossOutput:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model").
    Inputs are AVERAGE per-token log-probs c, r (so p = exp(c) ∈ (0, 1)); no reference model:

        log odds(y) = log p − log(1 − p) = c − log(1 − exp(c))
        loss = chosen_nll − β·log σ(log odds(chosen) − log odds(rejected))

    (β is the paper's λ.) log(1 − exp(x)) is computed with :func:`log1mexp`, finite for x → 0.
    Rewards: β·c and β·r (as TRL logs them). Extras: ``log_odds_ratio``, ``or_loss``.
    """
    _check_pair("orpo_loss", policy_chosen_logps=policy_chosen_logps,
                policy_rejected_logps=policy_rejected_logps, chosen_nll=chosen_nll)
    check_positive("orpo_loss", beta=beta)
    c = policy_chosen_logps.clamp(max=_MAX_LOGP)
    r = policy_rejected_logps.clamp(max=_MAX_LOGP)
    log_odds = (c - log1mexp(c)) - (r - log1mexp(r))  # (B,)
    or_loss = -F.logsigmoid(log_odds)  # (B,)
    losses = chosen_nll + beta * or_loss
    extras = {"log_odds_ratio": log_odds.detach(), "or_loss": or_loss.detach()}
    return PreferenceLossOutput(losses, (beta * c).detach(), (beta * r).detach(), extras)


class _KTOLossTuple(NamedTuple):
    losses: torch.Tensor  # (B,) per-example loss, weighted
    rewards: torch.Tensor  # (B,) implicit reward β·(log π − log π_ref), detached


class KTOLossOutput(_KTOLossTuple):
    """(losses, rewards), each (B,), plus ``.extras`` (attribute, like PreferenceLossOutput)."""

    extras: dict[str, torch.Tensor]

    def __new__(cls, losses: torch.Tensor, rewards: torch.Tensor,
                extras: dict[str, torch.Tensor] | None = None):
        self = super().__new__(cls, losses, rewards)
        self.extras = dict(extras or {})
        return self


def kto_kl_reference(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean(log π(y'|x) − log π_ref(y'|x))), detached.

    Compute it on MISMATCHED pairs (each prompt with another example's response, as in the paper),
    not on the training pairs themselves, and pass the result as ``kl_ref`` to :func:`kto_loss`.
    An empty batch gives 0."""
    _check_pair("kto_kl_reference", policy_logps=policy_logps, ref_logps=ref_logps)
    if policy_logps.numel() == 0:
        return torch.zeros((), dtype=policy_logps.dtype, device=policy_logps.device)
    return (policy_logps - ref_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl_ref: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOLossOutput:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization") on
    unpaired examples. With r = log π(y|x) − log π_ref(y|x) and reference point z0 = ``kl_ref``
    (detached, clamped ≥ 0; see :func:`kto_kl_reference`):

        desirable   (label True):  loss = λ_D·(1 − σ(β·(r − z0)))
        undesirable (label False): loss = λ_U·(1 − σ(β·(z0 − r)))

    Pick λ_D, λ_U so that λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3] (paper's recommendation).
    """
    _check_pair("kto_loss", policy_logps=policy_logps, ref_logps=ref_logps, labels=labels)
    check_positive("kto_loss", beta=beta)
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError(f"kto_loss: weights must be >= 0, got desirable_weight={desirable_weight}, "
                         f"undesirable_weight={undesirable_weight}")
    z0 = torch.as_tensor(kl_ref, dtype=policy_logps.dtype, device=policy_logps.device).detach()
    if z0.numel() != 1:
        raise ValueError(f"kto_loss: kl_ref must be a scalar, got shape {tuple(z0.shape)}")
    z0 = z0.reshape(()).clamp(min=0)
    logratio = policy_logps - ref_logps  # (B,)
    desirable = labels.bool()
    value = torch.where(desirable, torch.sigmoid(beta * (logratio - z0)),
                        torch.sigmoid(beta * (z0 - logratio)))  # (B,)
    weight = torch.where(desirable, torch.full_like(value, desirable_weight),
                         torch.full_like(value, undesirable_weight))
    losses = weight * (1.0 - value)
    return KTOLossOutput(losses, (beta * logratio).detach(), {"kl_ref": z0.expand_as(losses)})


def mdpo_conditional_loss(
    policy_chosen_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    policy_chosen_corrupted_logps: torch.Tensor,
    ref_chosen_corrupted_logps: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """mDPO's conditional term (Wang et al. 2024, "mDPO: Conditional Preference Optimization for
    Multimodal Large Language Models"): the same chosen response must be preferred under the true
    image m over a corrupted image m' — this forces the model to look at the image:

        loss = −log σ(β·[(log π(c|m) − log π_ref(c|m)) − (log π(c|m') − log π_ref(c|m'))])   (B,)
    """
    _check_pair("mdpo_conditional_loss", policy_chosen_logps=policy_chosen_logps,
                ref_chosen_logps=ref_chosen_logps,
                policy_chosen_corrupted_logps=policy_chosen_corrupted_logps,
                ref_chosen_corrupted_logps=ref_chosen_corrupted_logps)
    check_positive("mdpo_conditional_loss", beta=beta)
    true_image = policy_chosen_logps - ref_chosen_logps  # (B,)
    corrupted = policy_chosen_corrupted_logps - ref_chosen_corrupted_logps  # (B,)
    return -F.logsigmoid(beta * (true_image - corrupted))


def mdpo_anchor_loss(
    policy_chosen_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    beta: float = 0.1,
    delta: float = 0.0,
) -> torch.Tensor:
    """mDPO's anchor (Wang et al. 2024): keep the chosen reward above δ so that DPO cannot
    satisfy the preference by lowering both likelihoods:  loss = −log σ(β·(log π(c) − log π_ref(c)) − δ)."""
    _check_pair("mdpo_anchor_loss", policy_chosen_logps=policy_chosen_logps,
                ref_chosen_logps=ref_chosen_logps)
    check_positive("mdpo_anchor_loss", beta=beta)
    return -F.logsigmoid(beta * (policy_chosen_logps - ref_chosen_logps) - delta)


def mdpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    policy_chosen_corrupted_logps: torch.Tensor,
    ref_chosen_corrupted_logps: torch.Tensor,
    beta: float = 0.1,
    anchor_delta: float = 0.0,
    conditional_weight: float = 1.0,
    anchor_weight: float = 1.0,
) -> PreferenceLossOutput:
    """mDPO (Wang et al. 2024): loss = DPO + w_c·conditional + w_a·anchor, per example (B,).
    Extras carry the three parts (``dpo``, ``conditional``, ``anchor``) for logging."""
    dpo = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                   beta=beta)
    conditional = mdpo_conditional_loss(policy_chosen_logps, ref_chosen_logps,
                                        policy_chosen_corrupted_logps, ref_chosen_corrupted_logps,
                                        beta=beta)
    anchor = mdpo_anchor_loss(policy_chosen_logps, ref_chosen_logps, beta=beta, delta=anchor_delta)
    losses = dpo.losses + conditional_weight * conditional + anchor_weight * anchor
    extras = {"dpo": dpo.losses.detach(), "conditional": conditional.detach(), "anchor": anchor.detach()}
    return PreferenceLossOutput(losses, dpo.chosen_rewards, dpo.rejected_rewards, extras)


def segment_weighted_logps(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    segment_mask: torch.Tensor | None = None,
    gamma: float = 5.0,
    normalize: bool = True,
) -> torch.Tensor:
    """Sequence score of dense DPO (Yu et al. 2024, "RLHF-V", Eq. for DDPO): tokens inside
    corrected segments (``segment_mask`` = 1) weigh γ, unchanged tokens weigh 1,

        score = Σ_t w_t·m_t·log p_t / Σ_t w_t·m_t      (normalize=True, the paper's 1/N with
                                                        N = |unchanged| + γ·|changed|)
        score = Σ_t w_t·m_t·log p_t                     (normalize=False)

    token_logps, mask, segment_mask: (B, T); returns (B,). Segment tokens outside ``mask`` are
    ignored; an empty mask gives a score of 0. The normaliser is the weighted count itself, as in
    RLHF-V's code, also when it is below 1 (0 < γ < 1): one changed token of weight 0.5 with
    log p = −2 scores −1/0.5 = −2.
    """
    check_ndim("segment_weighted_logps", 2, token_logps=token_logps, mask=mask, segment_mask=segment_mask)
    check_same_shape("segment_weighted_logps", token_logps=token_logps, mask=mask, segment_mask=segment_mask)
    check_positive("segment_weighted_logps", gamma=gamma)
    mask = mask.to(token_logps.dtype)
    seg = torch.zeros_like(mask) if segment_mask is None else segment_mask.to(token_logps.dtype)
    weights = (1.0 + (gamma - 1.0) * seg) * mask  # (B, T)
    total = (zero_masked(token_logps, mask) * weights).sum(dim=-1)  # (B,)
    if not normalize:
        return total
    count = weights.sum(dim=-1)  # (B,) weighted token count, > 0 unless the mask is empty
    return torch.where(count > 0, total / torch.where(count > 0, count, torch.ones_like(count)), torch.zeros_like(total))


def dense_dpo_loss(
    policy_chosen_token_logps: torch.Tensor,
    policy_rejected_token_logps: torch.Tensor,
    ref_chosen_token_logps: torch.Tensor,
    ref_rejected_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    chosen_segment_mask: torch.Tensor | None = None,
    rejected_segment_mask: torch.Tensor | None = None,
    beta: float = 0.1,
    gamma: float = 5.0,
    normalize: bool = True,
) -> PreferenceLossOutput:
    """Dense (segment-level) DPO of RLHF-V (Yu et al. 2024): DPO on :func:`segment_weighted_logps`
    scores, so the corrected (hallucinated → fixed) segments carry γ times the gradient of the
    unchanged text. All token inputs (B, T) (chosen and rejected may have different T)."""
    def score(tokens: torch.Tensor, mask: torch.Tensor, seg: torch.Tensor | None) -> torch.Tensor:
        return segment_weighted_logps(tokens, mask, seg, gamma=gamma, normalize=normalize)

    return dpo_loss(
        score(policy_chosen_token_logps, chosen_mask, chosen_segment_mask),
        score(policy_rejected_token_logps, rejected_mask, rejected_segment_mask),
        score(ref_chosen_token_logps, chosen_mask, chosen_segment_mask),
        score(ref_rejected_token_logps, rejected_mask, rejected_segment_mask),
        beta=beta,
    )


def dynamic_beta(reward_margin: torch.Tensor, beta: float = 0.1, w: float = 0.1, k: float = 1.0) -> torch.Tensor:
    """MM-DPO's per-pair β from a reward model's margin δ = r(chosen) − r(rejected) (Zhang et al. 2025,
    "MM-RLHF: The Next Step Forward in Multimodal LLM Alignment", arXiv:2502.10391, "Dynamic Reward
    Scaling"):

        β(δ) = β_ori · (1 + w · (1 − e^{−k·δ}))

    β rises from β_ori at δ = 0 towards β_ori·(1 + w) as the margin grows: pairs the reward model is
    confident about are fitted harder, near-ties barely more than plain DPO. ``w`` weighs the dynamic
    part (the authors' released scripts use ``ls_factor_weight`` w = 0.1 and scale β by 1 + w·f with a
    per-pair factor f prepared from the reward model), ``k`` sets how fast it
    saturates. δ is clamped at 0 from below: the paper's pairs have δ ≥ 0 by construction, and a
    negative margin (the reward model disagrees with the label) gets β_ori rather than a smaller β
    that could reach 0 or below. Returns (B,), detached (β is a weight, not a parameter).
    """
    check_ndim("dynamic_beta", 1, reward_margin=reward_margin)
    check_positive("dynamic_beta", beta=beta, k=k)
    if w < 0:
        raise ValueError(f"dynamic_beta: w must be >= 0, got {w}")
    delta = reward_margin.detach().clamp(min=0.0)
    return beta * (1.0 + w * (1.0 - torch.exp(-k * delta)))


def mm_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    reward_margin: torch.Tensor,
    beta: float = 0.1,
    w: float = 0.1,
    k: float = 1.0,
) -> PreferenceLossOutput:
    """MM-DPO (Zhang et al. 2025, "MM-RLHF"): sigmoid DPO with the per-pair β of
    :func:`dynamic_beta`,

        loss = −log σ(β(δ)·h)         h = the log-ratio margin, δ = the pair's reward-model margin

    With w = 0 (or every δ = 0) it is plain DPO at β. Rewards: β(δ)·(log π − log π_ref); the per-pair
    β is returned in ``extras["beta"]`` for logging.
    """
    _check_pair("mm_dpo_loss", policy_chosen_logps=policy_chosen_logps,
                policy_rejected_logps=policy_rejected_logps, ref_chosen_logps=ref_chosen_logps,
                ref_rejected_logps=ref_rejected_logps, reward_margin=reward_margin)
    betas = dynamic_beta(reward_margin, beta, w, k).to(policy_chosen_logps.dtype)  # (B,)
    chosen, rejected, margin = _logratios(policy_chosen_logps, policy_rejected_logps,
                                          ref_chosen_logps, ref_rejected_logps)
    losses = -F.logsigmoid(betas * margin)
    return PreferenceLossOutput(losses, (betas * chosen).detach(), (betas * rejected).detach(), {"beta": betas})
