"""Objectives of the issue-18 methods on hand-computed tensors: truncated importance weights (replay),
per-token weights in the PPO loss, segment (dense) token rewards, the fixed cost penalty."""

import math

import pytest
import torch

from vlalign.objectives import (
    ADVANTAGE_ESTIMATORS,
    fixed_penalty_advantages,
    ppo_policy_loss,
    span_token_rewards,
    token_at_char,
    truncated_importance_weights,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_truncated_importance_weights_hand_values():
    # π_prox / μ per token: 0.5 / 0.25 = 2, 0.2 / 0.4 = 0.5, third token masked out
    prox = t(math.log(0.5), math.log(0.2), 0.0)[None]
    behaviour = t(math.log(0.25), math.log(0.4), -9.0)[None]
    mask = t(1.0, 1.0, 0.0)[None]
    assert torch.allclose(truncated_importance_weights(prox, behaviour, mask, rho_bar=1.0), t(1.0, 0.5, 0.0)[None])
    assert torch.allclose(truncated_importance_weights(prox, behaviour, mask, rho_bar=None), t(2.0, 0.5, 0.0)[None])
    assert torch.allclose(truncated_importance_weights(prox, behaviour, mask, rho_bar=1.5), t(1.5, 0.5, 0.0)[None])
    # a fresh sample (π_prox = μ) weighs exactly 1
    assert torch.equal(truncated_importance_weights(prox, prox, mask), t(1.0, 1.0, 0.0)[None])
    with pytest.raises(ValueError, match="rho_bar must be > 0"):
        truncated_importance_weights(prox, behaviour, mask, rho_bar=0.0)


def test_ppo_loss_token_weights_scale_each_tokens_term():
    # ρ = 1 (log π = log π_old), A = (1, −2), weights (0.5, 1), token mean over 2 tokens:
    # loss = (−1·0.5 + 2·1)/2 = 0.75; ∂/∂log π = −A·w/2 = (−0.25, 1.0)
    logp = t(-1.0, -2.0)[None].requires_grad_(True)
    out = ppo_policy_loss(logp, logp.detach(), t(1.0, -2.0)[None], t(1.0, 1.0)[None], aggregation="token_mean",
                          token_weights=t(0.5, 1.0)[None])
    assert out.loss.item() == pytest.approx(0.75)
    out.loss.backward()
    assert torch.allclose(logp.grad, t(-0.25, 1.0)[None])
    # weights of 1 leave the loss as it was
    same = ppo_policy_loss(logp, logp.detach(), t(1.0, -2.0)[None], t(1.0, 1.0)[None], aggregation="token_mean",
                           token_weights=torch.ones(1, 2))
    plain = ppo_policy_loss(logp, logp.detach(), t(1.0, -2.0)[None], t(1.0, 1.0)[None], aggregation="token_mean")
    assert same.loss.item() == plain.loss.item()


def test_token_at_char_hand_values():
    # tokens "The" " red" "." " A": cumulative ends 3, 7, 8, 10
    ends = [3, 7, 8, 10]
    assert token_at_char(ends, 7) == 1  # span "red" = [4, 7) ends inside token 1
    assert token_at_char(ends, 5) == 1  # a span ending mid-token: the token holding its last character
    assert token_at_char(ends, 8) == 2
    assert token_at_char(ends, 0) == 0  # an omission at the start
    assert token_at_char(ends, 99) == 3  # past the text (e.g. an insertion after the end): the last token
    with pytest.raises(ValueError, match="no tokens"):
        token_at_char([], 3)


def test_span_token_rewards_keep_the_total_and_move_the_credit():
    # row 0: response at columns 1..3, score 1; spans at column 1 (−0.5) and 2 (+0.25) →
    #   remainder at the last token (column 3) = 1 − (−0.5 + 0.25) = 1.25
    # row 1: response at columns 0..1, score −1, no spans → −1 on column 1
    mask = t(0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0).view(2, 5)
    got = span_token_rewards(t(1.0, -1.0), mask, [[1, 2], []], [[-0.5, 0.25], []])
    assert torch.allclose(got, t(0.0, -0.5, 0.25, 1.25, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0).view(2, 5))
    assert torch.allclose(got.sum(-1), t(1.0, -1.0))  # each row sums to its sequence score
    # γ = λ = 1, V = 0: the advantage of a token is its reward-to-go; the first response token still
    # sees the whole score (1.0), the tokens after the penalised one see more (1.5, 1.25)
    adv = ADVANTAGE_ESTIMATORS.get("gae")(got, mask, values=torch.zeros(2, 5), gamma=1.0, lam=1.0).advantages
    assert torch.allclose(adv[0], t(0.0, 1.0, 1.5, 1.25, 0.0))
    # two spans ending on the same token add up
    both = span_token_rewards(t(0.0), t(1.0, 1.0)[None], [[0, 0]], [[-0.5, -0.25]])
    assert torch.allclose(both, t(-0.75, 0.75)[None])
    with pytest.raises(ValueError, match="column 4 is not a response token"):
        span_token_rewards(t(1.0, -1.0), mask, [[4], []], [[-0.5], []])


def test_fixed_penalty_advantages_hand_values():
    # A = A_r − c·A_c with c = 2: (1 − 2·0.5, 2 − 2·(−1)) = (0, 4)
    assert torch.allclose(fixed_penalty_advantages(t(1.0, 2.0), t(0.5, -1.0), 2.0), t(0.0, 4.0))
    with pytest.raises(ValueError, match="coef must be >= 0"):
        fixed_penalty_advantages(t(1.0), t(1.0), -1.0)
