"""Objective options users of TRL and verl expect: groups by id, singleton groups, batch-std scaling,
verl's clamped low_var_kl and abs KL, global normalisers for token-mean losses, RLHF-V's weighted
count below 1, a float64 Lagrange multiplier. Every expected value is worked out by hand in a comment."""

import math

import pytest
import torch

from vlalign.objectives import (
    ADVANTAGE_ESTIMATORS,
    PG_LOSS_AGGREGATIONS,
    LagrangeMultiplier,
    constant_group_rows,
    grpo_advantages,
    kl_estimate,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    segment_weighted_logps,
    whiten_batch_advantages,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# ------------------------------------------------------------------------------------ dense DPO weights


def test_segment_weighted_logps_weighted_count_below_one_matches_rlhf_v():
    # one changed token, γ = 0.5, log p = −2: Σ w·log p / Σ w = (0.5·−2)/0.5 = −2 (RLHF-V's code);
    # clamping the count to ≥ 1 would give −1
    out = segment_weighted_logps(t(-2.0)[None], t(1.0)[None], t(1.0)[None], gamma=0.5)
    assert out.item() == pytest.approx(-2.0)
    # two tokens [−1, −3], the second changed, γ = 0.5: (−1 + 0.5·−3)/(1 + 0.5) = −2.5/1.5 = −1.666667
    out = segment_weighted_logps(t(-1.0, -3.0)[None], t(1.0, 1.0)[None], t(0.0, 1.0)[None], gamma=0.5)
    assert out.item() == pytest.approx(-2.5 / 1.5)
    # an empty mask scores 0 with zero gradient (not NaN)
    x = t(-4.0)[None].requires_grad_()
    empty = segment_weighted_logps(x, t(0.0)[None], t(1.0)[None], gamma=0.5)
    empty.sum().backward()
    assert empty.item() == 0.0 and x.grad.item() == 0.0


# ------------------------------------------------------------------------------------------- KL


def test_low_var_kl_is_verl_clamped_k3():
    # δ = log π_ref − log π = −1 − (−6) = 5: k3 = e^5 − 5 − 1 = 142.413159, ∂k3/∂log π = 1 − e^5 = −147.413159;
    # verl's low_var_kl clamps the value to [−10, 10]: 10 with gradient 0
    logp = t(-6.0).requires_grad_()
    k3 = kl_estimate(logp, t(-1.0), "k3")
    k3.backward()
    assert k3.item() == pytest.approx(math.exp(5) - 6, rel=1e-6)
    assert logp.grad.item() == pytest.approx(1 - math.exp(5), rel=1e-6)
    logp.grad = None
    low = kl_estimate(logp, t(-1.0), "low_var_kl")
    low.backward()
    assert low.item() == 10.0 and logp.grad.item() == 0.0
    # below the clamp both agree: δ = log(0.25/0.5) = −log 2 → e^−0.693147 + 0.693147 − 1 = 0.193147
    small = kl_estimate(torch.log(t(0.5)), torch.log(t(0.25)), "low_var_kl")
    assert small.item() == pytest.approx(0.193147, abs=1e-6)


def test_abs_kl_hand_values():
    # |log π − log π_ref|: |−1 − (−2.5)| = 1.5 and |−2.5 − (−1)| = 1.5; ∂/∂log π = sign = +1, −1
    logp = t(-1.0, -2.5).requires_grad_()
    out = kl_estimate(logp, t(-2.5, -1.0), "abs", mask=t(1.0, 1.0))
    out.sum().backward()
    assert out.tolist() == [1.5, 1.5]
    assert logp.grad.tolist() == [1.0, -1.0]


# ----------------------------------------------------------------------------------- group advantages


IDS = torch.tensor([10, 20, 10, 20, 10])  # two groups, interleaved, sizes 3 and 2
R = t(1.0, 5.0, 2.0, 7.0, 3.0)


def test_grpo_groups_by_id_non_consecutive_variable_size():
    # group 10 = {1, 2, 3}: mean 2, std √((1+0+1)/2) = 1 → −1, 0, 1
    # group 20 = {5, 7}:    mean 6, std √((1+1)/1) = √2 → ∓1/√2 = ∓0.707107
    out = grpo_advantages(R, group_ids=IDS)
    assert torch.allclose(out, t(-1.0, -0.707107, 0.0, 0.707107, 1.0), atol=2e-6)
    # Dr. GRPO (no std): 1−2, 5−6, 2−2, 7−6, 3−2
    assert torch.allclose(grpo_advantages(R, group_ids=IDS, scale="none"), t(-1.0, -1.0, 0.0, 1.0, 1.0))
    # consecutive groups given by id equal the group_size form
    r = t(1.0, 2.0, 3.0, 5.0, 5.0, 5.0)
    assert torch.equal(grpo_advantages(r, group_ids=torch.tensor([0, 0, 0, 1, 1, 1])), grpo_advantages(r, 3))


def test_grpo_batch_scaling_is_trl_scale_rewards_batch():
    # groups {1, 3}, {4, 8}: centred −1, 1, −2, 2; batch std of [1, 3, 4, 8]: mean 4,
    # Σ(x − 4)² = 9 + 1 + 0 + 16 = 26, /3 → 8.666667, √ = 2.943920 → ∓0.339683, ∓0.679366
    r, ids = t(1.0, 3.0, 4.0, 8.0), torch.tensor([0, 0, 1, 1])
    out = grpo_advantages(r, group_ids=ids, scale="batch")
    assert torch.allclose(out, t(-0.339683, 0.339683, -0.679366, 0.679366), atol=1e-5)
    # a batch spread over processes passes the global std: centred / (2 + 1e-6)
    assert torch.allclose(grpo_advantages(r, 2, scale="batch", batch_std=2.0), t(-0.5, 0.5, -1.0, 1.0), atol=1e-6)


def test_singleton_groups_zero_or_raw():
    # ids [1, 1, 2]: group 1 = {1, 3} → ∓1/√2; group 2 is one sample (reward 4)
    r, ids = t(1.0, 3.0, 4.0), torch.tensor([1, 1, 2])
    zero = grpo_advantages(r, group_ids=ids)
    assert torch.allclose(zero, t(-0.707107, 0.707107, 0.0), atol=2e-6)
    # verl: a singleton has mean 0 and std 1 → 4/(1 + 1e-6)
    raw = grpo_advantages(r, group_ids=ids, singleton="raw")
    assert raw[2].item() == pytest.approx(4.0 / (1 + 1e-6)) and torch.equal(raw[:2], zero[:2])
    # RLOO: group 1: 1 − 3 = −2, 3 − 1 = 2; the singleton 0 or its reward 4
    assert rloo_advantages(r, group_ids=ids).tolist() == [-2.0, 2.0, 0.0]
    assert rloo_advantages(r, group_ids=ids, singleton="raw").tolist() == [-2.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="singleton must be one of zero, raw"):
        grpo_advantages(r, group_ids=ids, singleton="drop")


def test_rloo_groups_by_id():
    # group 10 = {1, 2, 3}: 1 − (2+3)/2 = −1.5, 2 − (1+3)/2 = 0, 3 − (1+2)/2 = 1.5
    # group 20 = {5, 7}:    5 − 7 = −2, 7 − 5 = 2
    assert torch.allclose(rloo_advantages(R, group_ids=IDS), t(-1.5, -2.0, 0.0, 2.0, 1.5))


def test_constant_groups_and_registry_take_group_ids():
    r, ids = t(0.1, 0.1, 0.1, 2.0, 3.0, 9.0), torch.tensor([4, 4, 4, 7, 7, 8])
    # group 4 is constant (three 0.1s); group 7 is not; group 8 is a singleton (left to the caller)
    assert constant_group_rows(r, ids).tolist() == [True, True, True, False, False, False]
    assert torch.equal(grpo_advantages(r, group_ids=ids)[:3], torch.zeros(3))  # exactly 0, not ~1e-8/eps
    token_rewards = torch.zeros(6, 2)
    token_rewards[:, -1] = r
    out = ADVANTAGE_ESTIMATORS.get("dr_grpo")(token_rewards, torch.ones(6, 2), group_ids=ids)
    # group 7: 2 − 2.5 = −0.5, 3 − 2.5 = 0.5 on both tokens
    assert out.advantages[3].tolist() == [-0.5, -0.5] and out.advantages[4].tolist() == [0.5, 0.5]


def test_batch_whitening_takes_global_stats():
    # (A − 1)/(2 + 1e-6) with the batch's (mean, std) given by the caller
    out = whiten_batch_advantages(t(3.0, -1.0), batch_stats=(1.0, 2.0))
    assert torch.allclose(out, t(1.0, -1.0), atol=1e-6)
    assert torch.equal(whiten_batch_advantages(t(0.1, 0.1, 0.1)), torch.zeros(3))


# ------------------------------------------------------------------------------ global normalisers


LOSS = t(1.0, 0.0, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 4.0, 5.0, 6.0, 0.0, 7.0, 8.0, 9.0, 10.0).view(4, 4)
MASK = t(1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1).view(4, 4)  # ragged: 1, 2, 3, 4 tokens


@pytest.mark.parametrize("name,whole", [
    ("token_mean", 55.0 / 10),  # (1 + 2+3 + 4+5+6 + 7+8+9+10) / 10 tokens
    ("seq_mean_token_mean", (1.0 + 2.5 + 5.0 + 8.5) / 4),  # per-row means 1, 2.5, 5, 8.5
    ("token_sum_norm", 55.0 / (4 * 4)),  # Σ / (rows · C = T = 4)
])
def test_micro_batches_with_global_denominator_sum_to_the_whole_batch(name, whole):
    agg = PG_LOSS_AGGREGATIONS.get(name)
    assert agg(LOSS, MASK).item() == pytest.approx(whole)
    halves = [(LOSS[:2], MASK[:2]), (LOSS[2:], MASK[2:])]
    # per-micro-batch normalisation: token_mean gives (6/3 + 49/7)/2 = (2 + 7)/2 = 4.5 ≠ 5.5
    local = sum(agg(x, m).item() for x, m in halves) / 2
    if name == "token_mean":
        assert local == pytest.approx(4.5)
    den = sum(agg.units(m) for _, m in halves)  # what the trainer all-reduces
    assert sum(agg(x, m, None, den).item() for x, m in halves) == pytest.approx(whole)


def test_policy_and_value_loss_gradients_split_over_micro_batches_equal_the_whole():
    # 4×1 micro-batches with the global token count give the same gradient as the 1×4 batch
    old = torch.zeros(4, 4)
    adv = LOSS / 10
    whole = torch.zeros(4, 4).requires_grad_()
    (ppo_policy_loss(whole, old, adv, MASK).loss + ppo_value_loss(whole, old, adv, MASK)).backward()
    split = torch.zeros(4, 4).requires_grad_()
    den = MASK.sum()
    for i in range(4):
        rows = slice(i, i + 1)
        loss = ppo_policy_loss(split[rows], old[rows], adv[rows], MASK[rows], denominator=den).loss
        loss = loss + ppo_value_loss(split[rows], old[rows], adv[rows], MASK[rows], denominator=den)
        loss.backward()
    assert torch.allclose(whole.grad, split.grad, atol=1e-7)


# ---------------------------------------------------------------------------------------- Lagrange


def test_lagrange_multiplier_keeps_log_lambda_in_float64_and_refuses_inf():
    lam = LagrangeMultiplier(init_value=math.exp(10.0), cost_limit=0.0, lr=1e-6 / math.exp(10.0))
    assert lam.log_lambda.dtype == torch.float64
    # step = lr·λ·(J_C − d) = (1e-6/e^10)·e^10·1 = 1e-6: float32 (spacing 9.5e-7 at 10) would round it
    lam.update(1.0)
    assert float(lam.log_lambda.detach()) == pytest.approx(10.0 + 1e-6, abs=1e-12)
    with pytest.raises(ValueError, match="finite and > 0"):
        LagrangeMultiplier(init_value=float("inf"))
    big = LagrangeMultiplier(init_value=1e300, lr=1.0)
    with pytest.raises(ValueError, match="λ would become inf"):
        big.update(1.0)  # log λ = 690.8 + 1·1e300·1 → overflow
    capped = LagrangeMultiplier(init_value=1e300, lr=1.0, max_value=1e301)
    assert capped.update(1.0) == pytest.approx(1e301, rel=1e-9)
