"""Reward- and cost-model objectives: learn a scalar score from human comparisons.

Pure functions of the scores a model head produced: (B,) for pairs, (B, K) for rankings, (B, K) for
the K heads of an ensemble and (B, A) for the A aspect heads of a multi-aspect model.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from vlalign.objectives._checks import check_ndim, check_same_shape
from vlalign.registry import Registry


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Pairwise reward-model loss under the Bradley–Terry model (Bradley & Terry 1952; used for RLHF
    by Ouyang et al. 2022, "InstructGPT"), per pair (B,):

        loss = −log σ(r_c − r_r − m)  +  center_coef·(r_c + r_r)²

    ``margin`` m (B,) or scalar: a required gap for strongly-preferred pairs (Llama 2, Touvron et al.
    2023). ``center_coef`` > 0 keeps rewards centred on 0 (Eisenstein et al. 2023), since BT only
    identifies reward differences and the offset otherwise drifts.
    """
    check_ndim("bradley_terry_loss", 1, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    check_same_shape("bradley_terry_loss", chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    diff = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        m = torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
        if m.dim() > 0:
            check_same_shape("bradley_terry_loss", chosen_rewards=chosen_rewards, margin=m)
        diff = diff - m
    losses = -F.logsigmoid(diff)
    if center_coef:
        losses = losses + center_coef * (chosen_rewards + rejected_rewards) ** 2
    return losses


def plackett_luce_loss(rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of a full ranking under the Plackett–Luce model (Plackett 1975,
    Luce 1959; for reward models: Zhu et al. 2023, "Principled RLHF from pairwise or K-wise
    comparisons"). ``rewards`` (B, K) are ordered BEST FIRST; per example (B,):

        loss = −Σ_k [ r_k − log Σ_{j ≥ k} exp(r_j) ]     over valid positions k, j

    ``mask`` (B, K) marks valid responses (rows may rank fewer than K; the valid entries keep their
    best-first order). K = 2 reduces to Bradley–Terry. Rows with < 2 valid entries give 0.
    """
    check_ndim("plackett_luce_loss", 2, rewards=rewards, mask=mask)
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    check_same_shape("plackett_luce_loss", rewards=rewards, mask=mask)
    valid = mask.bool()  # (B, K)
    # A very negative finite fill (not −inf) keeps exp() at 0 without inf − inf = NaN in backward.
    fill = torch.finfo(rewards.dtype).min / 4
    masked = torch.where(valid, rewards, torch.full_like(rewards, fill))  # (B, K)
    losses = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)  # (B,)
    for k in range(rewards.shape[1]):
        log_denominator = torch.logsumexp(masked[:, k:], dim=-1)  # (B,)
        term = masked[:, k] - log_denominator  # (B,)
        losses = losses - torch.where(valid[:, k], term, torch.zeros_like(term))
    return losses


def safe_rlhf_cost_loss(
    chosen_costs: torch.Tensor,
    rejected_costs: torch.Tensor,
    chosen_safe: torch.Tensor,
    rejected_safe: torch.Tensor,
    sign_weight: float = 1.0,
) -> torch.Tensor:
    """Cost-model loss of Safe RLHF (Dai et al. 2024, "Safe RLHF: Safe Reinforcement Learning from
    Human Feedback", Eq. 6), per pair (B,). "chosen" is the SAFER (less harmful) response:

        loss = −log σ(C_r − C_c)                                (the more harmful one costs more)
               − sign_weight·[log σ(s_c·C_c) + log σ(s_r·C_r)]   (s = +1 unsafe, −1 safe)

    The sign term anchors the scale so that C > 0 means unsafe, which is what makes the cost
    constraint E[C] ≤ d of the Lagrangian meaningful. ``*_safe`` are bool (B,).
    """
    check_ndim("safe_rlhf_cost_loss", 1, chosen_costs=chosen_costs, rejected_costs=rejected_costs,
               chosen_safe=chosen_safe, rejected_safe=rejected_safe)
    check_same_shape("safe_rlhf_cost_loss", chosen_costs=chosen_costs, rejected_costs=rejected_costs,
                     chosen_safe=chosen_safe, rejected_safe=rejected_safe)
    s_c = 1.0 - 2.0 * chosen_safe.to(chosen_costs.dtype)  # (B,) +1 unsafe, −1 safe
    s_r = 1.0 - 2.0 * rejected_safe.to(chosen_costs.dtype)
    pairwise = -F.logsigmoid(rejected_costs - chosen_costs)
    sign = -F.logsigmoid(s_c * chosen_costs) - F.logsigmoid(s_r * rejected_costs)
    return pairwise + sign_weight * sign


def preference_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs where the chosen response scores strictly higher (scalar; 0 for B = 0)."""
    check_same_shape("preference_accuracy", chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    if chosen_rewards.numel() == 0:
        return torch.zeros((), dtype=torch.float32)
    return (chosen_rewards > rejected_rewards).float().mean()


# ---------------------------------------------------------------------------------- ensembles


def _ensemble_parts(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_ndim("ensemble", 2, scores=scores)
    return scores.mean(dim=-1), scores.std(dim=-1, unbiased=False)  # (N,), (N,)


def _mean_minus_std(scores: torch.Tensor, coef: float) -> torch.Tensor:
    mean, std = _ensemble_parts(scores)
    return mean - coef * std


def _mean_minus_var(scores: torch.Tensor, coef: float) -> torch.Tensor:
    mean, std = _ensemble_parts(scores)
    return mean - coef * std**2


def _worst_case(scores: torch.Tensor, coef: float) -> torch.Tensor:
    check_ndim("ensemble", 2, scores=scores)
    return scores.min(dim=-1).values


#: name -> fn(scores (N, K), coef) -> (N,): how K reward-model members' scores become one conservative
#: reward. ``mean_minus_std`` alias ``conservative`` (Eisenstein et al. 2023, "Helping or Herding?
#: Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking"), ``uwo`` alias ``penalty`` =
#: mean − coef·variance and ``wco`` = the minimum (Coste et al. 2024, "Reward Model Ensembles Help
#: Mitigate Overoptimization"), ``mean``.
ENSEMBLE_AGGREGATIONS: Registry = Registry("ensemble aggregation")
ENSEMBLE_AGGREGATIONS.register("mean_minus_std", "conservative")(_mean_minus_std)
ENSEMBLE_AGGREGATIONS.register("uwo", "penalty")(_mean_minus_var)
ENSEMBLE_AGGREGATIONS.register("wco", "min")(_worst_case)
ENSEMBLE_AGGREGATIONS.register("mean")(lambda scores, coef: _ensemble_parts(scores)[0])


def ensemble_mean_std(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (N,), population std (N,)) over the K members of scores (N, K): the ensemble's estimate
    and its disagreement."""
    return _ensemble_parts(scores)


def conservative_reward(scores: torch.Tensor, coef: float = 1.0, mode: str = "mean_minus_std") -> torch.Tensor:
    """One reward per sample (N,) from K members' scores (N, K): by default mean − coef·std, where the
    std (population, over the K members) measures how much the members disagree. Disagreement is
    high where the training data said little, which is where a policy finds reward-model errors to
    exploit; subtracting it makes those regions unattractive."""
    if coef < 0:
        raise ValueError(f"conservative_reward: coef must be >= 0, got {coef}")
    return ENSEMBLE_AGGREGATIONS.get(mode)(scores, coef)


def poisson_one(key: str) -> int:
    """A Poisson(1) draw that depends only on ``key`` (Knuth's method on a stream seeded by the key):
    the same on every machine, kernel and process."""
    rng = random.Random(key)
    limit, count, product = math.exp(-1.0), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def bootstrap_weights(row_ids: list[int], heads: int, seed: int) -> torch.Tensor:
    """(B, K) weights of online bagging (Oza & Russell 2001): each (row, head) weight is a Poisson(1)
    count, so each head sees its own bootstrap resample of the data (a row weighted 0, 1, 2, ... times).
    A pure function of (seed, row, head): resume, micro-batching and the process count do not change
    it."""
    return torch.tensor([[float(poisson_one(f"{seed}:{r}:{k}")) for k in range(heads)] for r in row_ids])


def ensemble_bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor | None = None,
                     margin: torch.Tensor | None = None, center_coef: float = 0.0) -> torch.Tensor:
    """Bradley–Terry for K heads at once, per pair (B,): (1/K)·Σ_k w_bk·BT(r_c,k, r_r,k) with the
    pair's bootstrap weight w_bk (1 without bootstrap). Scores (B, K)."""
    check_ndim("ensemble_bt_loss", 2, chosen=chosen, rejected=rejected, weights=weights)
    check_same_shape("ensemble_bt_loss", chosen=chosen, rejected=rejected, weights=weights)
    b, k = chosen.shape
    m = None if margin is None else margin[:, None].expand(b, k).reshape(-1)
    per = bradley_terry_loss(chosen.reshape(-1), rejected.reshape(-1), m, center_coef).view(b, k)  # (B, K)
    if weights is not None:
        per = per * weights.to(per.dtype)
    return per.mean(dim=-1)


# ---------------------------------------------------------------------------------- aspects


def aspect_labels(chosen_ratings: torch.Tensor, rejected_ratings: torch.Tensor) -> torch.Tensor:
    """(B, A) +1 where the chosen answer is rated higher on the aspect, −1 lower, 0 tie or unrated
    (NaN on either side). Ties carry no ordering, so they train nothing."""
    check_same_shape("aspect_labels", chosen_ratings=chosen_ratings, rejected_ratings=rejected_ratings)
    rated = ~(chosen_ratings.isnan() | rejected_ratings.isnan())
    diff = torch.where(rated, chosen_ratings - rejected_ratings, torch.zeros_like(chosen_ratings))
    return torch.sign(diff)


def aspect_bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry per aspect head on the ordering the ratings give, (B, A):
    −log σ(y·(r_c,a − r_r,a)) where y = ``labels`` ∈ {+1, −1}; 0 where y = 0 (tie / unrated).
    Sum it and divide by the count of labelled (pair, aspect) cells for the mean."""
    check_ndim("aspect_bt_loss", 2, chosen=chosen, rejected=rejected, labels=labels)
    check_same_shape("aspect_bt_loss", chosen=chosen, rejected=rejected, labels=labels)
    y = labels.to(chosen.dtype)
    loss = -F.logsigmoid(y * (chosen - rejected))
    return torch.where(y != 0, loss, torch.zeros_like(loss))


def weighted_aspects(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Overall score of a multi-aspect model, (N,) = Σ_a w_a·r_a over scores (N, A) and weights (A,).
    The weights are the user's trade-off between aspects; they are not normalised, so weights
    summing to 1 keep the overall score on the aspects' scale."""
    check_ndim("weighted_aspects", 2, scores=scores)
    check_ndim("weighted_aspects", 1, weights=weights)
    if weights.shape[0] != scores.shape[1]:
        raise ValueError(f"weighted_aspects: {weights.shape[0]} weights for {scores.shape[1]} aspect scores")
    return scores @ weights.to(scores.dtype)
