"""Reward/cost-model objectives on hand-computed tensors."""

import math

import pytest
import torch

from vlalign.objectives import (
    aspect_bt_loss,
    aspect_labels,
    bootstrap_weights,
    bradley_terry_loss,
    conservative_reward,
    ensemble_bt_loss,
    plackett_luce_loss,
    preference_accuracy,
    safe_rlhf_cost_loss,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_bradley_terry_hand_values():
    # diff = [2 − 1, 0 − 0] = [1, 0] → [−log σ(1), −log σ(0)] = [0.313262, 0.693147]
    assert torch.allclose(bradley_terry_loss(t(2.0, 0.0), t(1.0, 0.0)), t(0.313262, math.log(2)), atol=1e-6)
    # margin 1: [−log σ(0), −log σ(−1)] = [0.693147, 1.313262]
    assert torch.allclose(bradley_terry_loss(t(2.0, 0.0), t(1.0, 0.0), margin=1.0),
                          t(math.log(2), 1.313262), atol=1e-6)
    # centring: + 0.01·(2 + 1)² = 0.09
    assert bradley_terry_loss(t(2.0), t(1.0), center_coef=0.01).item() == pytest.approx(0.403262, abs=1e-6)


def test_bradley_terry_gradient_direction():
    c, r = t(0.5).requires_grad_(), t(0.5).requires_grad_()
    bradley_terry_loss(c, r).sum().backward()
    # d/dc −log σ(c − r) = −σ(r − c) = −½ at c = r
    assert c.grad.item() == pytest.approx(-0.5) and r.grad.item() == pytest.approx(0.5)


def test_plackett_luce_hand_value():
    # ranking [2, 1, 0]: −[2 − log(e²+e+1)] − [1 − log(e+1)] − 0
    #   = −(2 − log 11.107338) − (1 − log 3.718282) = 0.407606 + 0.313262 = 0.720868
    assert plackett_luce_loss(t(2.0, 1.0, 0.0)[None]).item() == pytest.approx(0.720868, abs=1e-5)


def test_plackett_luce_k2_is_bradley_terry_and_mask_drops_entries():
    r = t(0.3, 1.7, -2.0, 0.4).view(2, 2)
    assert torch.allclose(plackett_luce_loss(r), bradley_terry_loss(r[:, 0], r[:, 1]), atol=1e-6)
    # third entry masked (its value 99 must not matter) → BT of (2, 1) = 0.313262
    rewards = t(2.0, 1.0, 99.0)[None].requires_grad_()
    loss = plackett_luce_loss(rewards, mask=torch.tensor([[True, True, False]]))
    loss.sum().backward()
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)
    assert rewards.grad[0, 2].item() == 0.0
    # fewer than two valid entries: nothing to rank → 0
    assert plackett_luce_loss(t(1.0, 2.0)[None], mask=torch.tensor([[True, False]])).item() == 0.0


def test_safe_rlhf_cost_loss_hand_value():
    # chosen (safer) cost −1, safe; rejected cost 2, unsafe
    # pairwise −log σ(2 − (−1)) = −log σ(3) = 0.048587
    # sign: −log σ(−1·−1) = 0.313262,  −log σ(+1·2) = 0.126928   → total 0.488777
    loss = safe_rlhf_cost_loss(t(-1.0), t(2.0), torch.tensor([True]), torch.tensor([False]))
    assert loss.item() == pytest.approx(0.488777, abs=1e-5)


def test_safe_rlhf_sign_term_pushes_unsafe_cost_positive():
    # both unsafe, both costs 0: the sign term's gradient must push both costs UP (cost > 0 = unsafe)
    c, r = t(0.0).requires_grad_(), t(0.0).requires_grad_()
    safe_rlhf_cost_loss(c, r, torch.tensor([False]), torch.tensor([False]), sign_weight=1.0).sum().backward()
    # d/dc: pairwise +½, sign −½ → 0;  d/dr: pairwise −½, sign −½ → −1
    assert c.grad.item() == pytest.approx(0.0, abs=1e-6)
    assert r.grad.item() == pytest.approx(-1.0)


def test_preference_accuracy():
    # 2 of 3 pairs strictly ordered (a tie counts as wrong)
    assert preference_accuracy(t(1.0, 2.0, 0.0), t(0.0, 1.0, 0.0)).item() == pytest.approx(2 / 3)


def test_conservative_reward_hand_values():
    # members (1, 2, 3, 4): mean 2.5, population variance (2.25 + .25 + .25 + 2.25)/4 = 1.25, std √1.25 = 1.118034
    # members (2, 2, 2, 2): mean 2, std 0 → every mode gives 2
    scores = t(1.0, 2.0, 3.0, 4.0, 2.0, 2.0, 2.0, 2.0).view(2, 4)
    assert torch.allclose(conservative_reward(scores, 1.0), t(2.5 - 1.118034, 2.0), atol=1e-6)
    assert torch.allclose(conservative_reward(scores, 2.0), t(2.5 - 2.236068, 2.0), atol=1e-6)
    assert torch.allclose(conservative_reward(scores, 0.5, mode="uwo"), t(2.5 - 0.625, 2.0))  # − 0.5·1.25
    assert torch.allclose(conservative_reward(scores, mode="wco"), t(1.0, 2.0))
    assert torch.allclose(conservative_reward(scores, 0.0), t(2.5, 2.0))  # c = 0: the plain mean
    with pytest.raises(ValueError, match="coef must be >= 0"):
        conservative_reward(scores, -1.0)
    with pytest.raises(KeyError, match="mean_minus_sdt"):
        conservative_reward(scores, mode="mean_minus_sdt")


def test_bootstrap_weights_are_a_pure_function_of_seed_row_and_head():
    w = bootstrap_weights(list(range(4000)), heads=3, seed=0)  # (4000, 3)
    assert w.shape == (4000, 3) and (w >= 0).all() and torch.equal(w, w.round())
    # the same row gets the same weights whatever else is in the batch (resume, micro-batches, processes)
    assert torch.equal(bootstrap_weights([17, 3], 3, 0), w[[17, 3]])
    assert not torch.equal(bootstrap_weights([17], 3, 1), w[[17]]) or not torch.equal(
        bootstrap_weights([18], 3, 1), w[[18]])  # another seed, another resample
    # Poisson(1): mean 1, P(0) = e^−1 = 0.368. Over 12,000 fixed draws (deterministic: no tolerance
    # for luck is needed, the bounds only say the draws are Poisson(1)-shaped)
    assert abs(float(w.mean()) - 1.0) < 0.03
    assert abs(float((w == 0).float().mean()) - math.exp(-1)) < 0.02
    # heads differ: the resamples are not the same
    assert not torch.equal(w[:, 0], w[:, 1])


def test_ensemble_bt_loss_hand_values():
    # 2 heads; pair 0 diffs (1, 0) → BT (0.313262, 0.693147); pair 1 diffs (0, 0) → (ln 2, ln 2)
    chosen, rejected = t(2.0, 0.0, 0.0, 0.0).view(2, 2), t(1.0, 0.0, 0.0, 0.0).view(2, 2)
    plain = ensemble_bt_loss(chosen, rejected)
    assert torch.allclose(plain, t((0.313262 + math.log(2)) / 2, math.log(2)), atol=1e-6)
    # bootstrap weights (2, 0) and (0, 1): pair 0 → (2·0.313262 + 0)/2, pair 1 → (0 + ln 2)/2
    weighted = ensemble_bt_loss(chosen, rejected, t(2.0, 0.0, 0.0, 1.0).view(2, 2))
    assert torch.allclose(weighted, t(0.313262, math.log(2) / 2), atol=1e-6)


def test_aspect_labels_and_loss_hand_values():
    nan = float("nan")
    # aspects (faithful, complete): pair 0 rated (2, 1) vs (1, 1) → (+1, 0 tie); pair 1 (0, nan) vs (1, 3) → (−1, 0 unrated)
    labels = aspect_labels(t(2.0, 1.0, 0.0, nan).view(2, 2), t(1.0, 1.0, 1.0, 3.0).view(2, 2))
    assert labels.tolist() == [[1.0, 0.0], [-1.0, 0.0]]
    # head scores: pair 0 faithful 0.5 vs −0.5 → −log σ(1) = 0.313262; pair 1 faithful 0 vs 0, y = −1 → ln 2
    chosen, rejected = t(0.5, 9.0, 0.0, 9.0).view(2, 2), t(-0.5, -9.0, 0.0, -9.0).view(2, 2)
    loss = aspect_bt_loss(chosen, rejected, labels)
    assert torch.allclose(loss, t(0.313262, 0.0, math.log(2), 0.0).view(2, 2), atol=1e-6)
    # d loss / d r_r = y·(1 − σ(u)), u = y·(r_c − r_r): pair 0 1·(1 − σ(1)) = 0.268941; pair 1 (y = −1, u = 0)
    # −1·½ = −0.5, i.e. the rejected answer (rated higher on this aspect) is pulled up; unlabelled cells get 0
    rej = rejected.clone().requires_grad_(True)
    aspect_bt_loss(chosen, rej, labels).sum().backward()
    assert torch.allclose(rej.grad, t(0.268941, 0.0, -0.5, 0.0).view(2, 2), atol=1e-6)
