"""Preference objectives on hand-computed 1–2 element tensors (arithmetic in the comments)."""

import math

import pytest
import torch

from vlalign.objectives import (
    PREFERENCE_LOSSES,
    PreferenceBatchLogps,
    dense_dpo_loss,
    dpo_loss,
    dynamic_beta,
    hinge_loss,
    ipo_loss,
    kto_kl_reference,
    kto_loss,
    log1mexp,
    mdpo_loss,
    mm_dpo_loss,
    orpo_loss,
    segment_weighted_logps,
    simpo_loss,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# Shared case: policy chosen −1, rejected −3; reference −2, −2.
# chosen log-ratio = −1 − (−2) = 1, rejected = −3 − (−2) = −1, margin h = 2.
PC, PR, RC, RR = t(-1.0), t(-3.0), t(-2.0), t(-2.0)


def test_dpo_hand_value_and_rewards():
    # β = 0.5: logits = 0.5·2 = 1; loss = −log σ(1) = log(1 + e^−1) = 0.313262
    out = dpo_loss(PC, PR, RC, RR, beta=0.5)
    assert out.losses.item() == pytest.approx(0.313262, abs=1e-6)
    losses, _chosen, _rejected = out  # unpacks as a 3-tuple; extras ride along as an attribute
    assert losses.item() == pytest.approx(0.313262, abs=1e-6) and out.extras == {}
    # rewards = β·log-ratio = 0.5·1, 0.5·(−1)
    assert out.chosen_rewards.item() == pytest.approx(0.5)
    assert out.rejected_rewards.item() == pytest.approx(-0.5)


def test_cdpo_label_smoothing_hand_value():
    # ε = 0.1: 0.9·(−log σ(1)) + 0.1·(−log σ(−1)) = 0.9·0.313262 + 0.1·1.313262 = 0.413262
    out = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert out.losses.item() == pytest.approx(0.413262, abs=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_zero_margin_is_log2(eps):
    # h = 0 → σ(0) = ½ → −(1−ε)·log ½ − ε·log ½ = log 2
    out = dpo_loss(t(-5.0, -1.0), t(-7.0, -2.0), t(-5.0, -1.0), t(-7.0, -2.0), beta=0.3, label_smoothing=eps)
    assert torch.allclose(out.losses, torch.full((2,), math.log(2.0)))


def test_dpo_gradient_direction():
    pc = t(-1.0).requires_grad_()
    pr = t(-3.0).requires_grad_()
    dpo_loss(pc, pr, RC, RR, beta=0.5).losses.sum().backward()
    # d/dpc [−log σ(β h)] = −β·σ(−βh) = −0.5·σ(−1) = −0.5·0.268941 = −0.134471
    assert pc.grad.item() == pytest.approx(-0.134471, abs=1e-6)
    assert pr.grad.item() == pytest.approx(0.134471, abs=1e-6)


def test_ipo_hand_values():
    # target 1/(2β): β = 0.1 → 5; (2 − 5)² = 9.   β = 0.25 → 2; (2 − 2)² = 0
    assert ipo_loss(PC, PR, RC, RR, beta=0.1).losses.item() == pytest.approx(9.0)
    assert ipo_loss(PC, PR, RC, RR, beta=0.25).losses.item() == pytest.approx(0.0)


def test_hinge_hand_values():
    # β = 0.25: max(0, 1 − 0.25·2) = 0.5;  β = 0.5: max(0, 1 − 1) = 0
    assert hinge_loss(PC, PR, RC, RR, beta=0.25).losses.item() == pytest.approx(0.5)
    assert hinge_loss(PC, PR, RC, RR, beta=0.5).losses.item() == pytest.approx(0.0)


def test_simpo_hand_value():
    # β = 2, γ = 0.5, c = −0.5, r = −1: 2·0.5 − 0.5 = 0.5; −log σ(0.5) = log(1 + e^−0.5) = 0.474077
    out = simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.5)
    assert out.losses.item() == pytest.approx(0.474077, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-1.0)  # 2·(−0.5)


def test_orpo_hand_value():
    # c = log ½ → odds 1 → log odds 0; r = log ¼ → odds ⅓ → log odds −log 3.
    # ratio term −log σ(log 3) = log(1 + ⅓) = 0.287682; nll = log 2 = 0.693147
    # loss = 0.693147 + 0.1·0.287682 = 0.721915
    out = orpo_loss(t(math.log(0.5)), t(math.log(0.25)), t(math.log(2.0)), beta=0.1)
    assert out.losses.item() == pytest.approx(0.721915, abs=1e-5)
    assert out.extras["log_odds_ratio"].item() == pytest.approx(math.log(3.0), abs=1e-5)


def test_orpo_near_zero_logp_is_finite_with_gradient():
    c = t(-1e-7, 0.0, -1e-3).requires_grad_()
    out = orpo_loss(c, t(-2.0, -2.0, -2.0), t(0.0, 0.0, 0.0), beta=1.0)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(c.grad).all()
    # log(1 − exp(−1e-3)) = log(9.995e-4) = −6.908255
    assert log1mexp(t(-1e-3)).item() == pytest.approx(math.log(-math.expm1(-1e-3)), rel=1e-5)
    assert log1mexp(t(-5.0)).item() == pytest.approx(math.log1p(-math.exp(-5.0)), rel=1e-6)


def test_kto_hand_values():
    # r = policy − ref = [−1 − (−2), −2 − (−1)] = [1, −1]; z0 = 0.5; β = 1
    # desirable: 1 − σ(1 − 0.5) = 1 − 0.622459 = 0.377541
    # undesirable (weight 2): 2·(1 − σ(0.5 − (−1))) = 2·(1 − 0.817574) = 0.364851
    out = kto_loss(t(-1.0, -2.0), t(-2.0, -1.0), torch.tensor([True, False]), kl_ref=0.5, beta=1.0,
                   desirable_weight=1.0, undesirable_weight=2.0)
    assert torch.allclose(out.losses, t(0.377541, 0.364851), atol=1e-6)
    assert torch.allclose(out.rewards, t(1.0, -1.0))


def test_kto_reference_point():
    # mean(−1 − (−2), −1 − (−2)) = 1;  mean(1, −1) = 0;  a negative mean clamps to 0
    assert kto_kl_reference(t(-1.0, -1.0), t(-2.0, -2.0)).item() == pytest.approx(1.0)
    assert kto_kl_reference(t(-1.0, -3.0), t(-2.0, -2.0)).item() == pytest.approx(0.0)
    assert kto_kl_reference(t(-3.0), t(-1.0)).item() == 0.0
    # z0 negative is clamped to 0 inside kto_loss too: desirable r=1, 1 − σ(1) = 0.268941
    out = kto_loss(t(-1.0), t(-2.0), torch.tensor([True]), kl_ref=-3.0, beta=1.0)
    assert out.losses.item() == pytest.approx(0.268941, abs=1e-6)


def test_mdpo_hand_value():
    # β = 1. dpo: h = 2 → −log σ(2) = 0.126928
    # conditional: true-image ratio 1, corrupted −3 − (−2) = −1 → −log σ(2) = 0.126928
    # anchor: −log σ(1 − 0) = 0.313262;  total 0.567118
    out = mdpo_loss(PC, PR, RC, RR, t(-3.0), t(-2.0), beta=1.0)
    assert out.losses.item() == pytest.approx(0.567118, abs=1e-5)
    assert out.extras["conditional"].item() == pytest.approx(0.126928, abs=1e-6)
    assert out.extras["anchor"].item() == pytest.approx(0.313262, abs=1e-6)


def test_segment_weighted_logps_hand_value():
    logps = t(-1.0, -2.0, -3.0, -50.0)[None]  # (1, 4)
    mask = t(1.0, 1.0, 1.0, 0.0)[None]
    seg = t(0.0, 1.0, 0.0, 1.0)[None]  # last segment token is padding → ignored
    # γ = 3: weights [1, 3, 1, 0]; Σ w·logp = −1 − 6 − 3 = −10; Σ w = 5 → −2
    assert segment_weighted_logps(logps, mask, seg, gamma=3.0).item() == pytest.approx(-2.0)
    assert segment_weighted_logps(logps, mask, seg, gamma=3.0, normalize=False).item() == pytest.approx(-10.0)


def test_dense_dpo_upweights_corrected_segment_gradient():
    pc = t(-1.0, -1.0)[None].requires_grad_()
    mask, seg = torch.ones(1, 2), t(0.0, 1.0)[None]
    ref = t(-1.0, -1.0)[None]
    out = dense_dpo_loss(pc, ref.clone(), ref, ref, mask, mask, seg, None, beta=1.0, gamma=4.0)
    out.losses.sum().backward()
    # zero margin → log 2; d score / d logp_t = w_t / Σw = [1/5, 4/5] → corrected token 4× the gradient
    assert out.losses.item() == pytest.approx(math.log(2.0), abs=1e-6)
    assert (pc.grad[0, 1] / pc.grad[0, 0]).item() == pytest.approx(4.0, rel=1e-5)
    assert (pc.grad < 0).all()


def _full_batch(requires_grad=True):
    pc = t(-4.0, -6.0).requires_grad_(requires_grad)
    return PreferenceBatchLogps(
        policy_chosen_logps=pc, policy_rejected_logps=t(-5.0, -6.5),
        ref_chosen_logps=t(-4.5, -6.0), ref_rejected_logps=t(-5.0, -6.0),
        chosen_token_count=t(4.0, 4.0), rejected_token_count=t(5.0, 5.0),
        policy_chosen_corrupted_logps=t(-4.2, -6.1), ref_chosen_corrupted_logps=t(-4.5, -6.0),
        kl_ref=0.1,
        policy_chosen_token_logps=t(-1.0, -1.0, -2.0)[None].repeat(2, 1).requires_grad_(requires_grad),
        policy_rejected_token_logps=t(-2.0, -1.0, -2.0)[None].repeat(2, 1),
        ref_chosen_token_logps=t(-1.5, -1.0, -2.0)[None].repeat(2, 1),
        ref_rejected_token_logps=t(-2.0, -1.0, -2.0)[None].repeat(2, 1),
        chosen_mask=torch.ones(2, 3), rejected_mask=t(1.0, 1.0, 0.0)[None].repeat(2, 1),
        chosen_segment_mask=t(1.0, 0.0, 0.0)[None].repeat(2, 1),
        reward_margin=t(0.5, 2.0),
    )


@pytest.mark.parametrize("name", PREFERENCE_LOSSES.names())
def test_registry_entries_run_and_raising_chosen_lowers_loss(name):
    objective = PREFERENCE_LOSSES.get(name)
    batch = _full_batch()
    out = objective(batch)
    assert out.losses.shape == (2,) and out.chosen_rewards.shape == (2,) and out.rejected_rewards.shape == (2,)
    assert torch.isfinite(out.losses).all()
    out.losses.sum().backward()
    grad = batch.policy_chosen_token_logps.grad if name == "dense_dpo" else batch.policy_chosen_logps.grad
    assert (grad.sum(dim=-1) < 0).all() if grad.dim() == 2 else (grad < 0).all(), f"{name}: {grad}"


def test_registry_reference_flags_and_validation():
    assert not PREFERENCE_LOSSES.get("simpo").requires_reference
    assert not PREFERENCE_LOSSES.get("orpo").requires_reference
    assert PREFERENCE_LOSSES.get("dpo").requires_reference
    # cdpo is dpo with label smoothing on by default
    b = _full_batch(requires_grad=False)
    cdpo = PREFERENCE_LOSSES.get("cdpo")(b).losses
    assert torch.allclose(cdpo, dpo_loss(*(getattr(b, f) for f in ("policy_chosen_logps", "policy_rejected_logps",
                                                                  "ref_chosen_logps", "ref_rejected_logps")),
                                         label_smoothing=0.1).losses)
    # simpo via the registry uses sum / token count: c = [−1, −1.5], r = [−1, −1.3]
    simpo = PREFERENCE_LOSSES.get("simpo")(b, beta=1.0, gamma=0.0).losses
    assert torch.allclose(simpo, simpo_loss(t(-1.0, -1.5), t(-1.0, -1.3), beta=1.0, gamma=0.0).losses)
    with pytest.raises(ValueError, match="unknown hyper-parameters.*'gama'"):
        PREFERENCE_LOSSES.get("simpo")(b, gama=1.0)
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        PREFERENCE_LOSSES.get("dpo")(PreferenceBatchLogps(t(-1.0), t(-2.0)))
    with pytest.raises(ValueError, match="kl_ref"):
        PREFERENCE_LOSSES.get("kto")(PreferenceBatchLogps(t(-1.0), t(-2.0), t(-1.0), t(-2.0)))
    with pytest.raises(KeyError, match="Did you mean 'dpo'"):
        PREFERENCE_LOSSES.get("dpoo")


def test_dynamic_beta_hand_values():
    # β(δ) = β·(1 + w·(1 − e^{−kδ})), β = 0.1, w = 0.5, k = 1:
    #   δ = 0 → 0.1;  δ = ln 2 → 0.1·(1 + 0.5·(1 − ½)) = 0.125;  δ → ∞ → 0.1·1.5 = 0.15;
    #   δ = −3 (the RM disagrees with the label) is clamped to 0 → 0.1
    got = dynamic_beta(t(0.0, math.log(2.0), 1e4, -3.0), beta=0.1, w=0.5, k=1.0)
    assert torch.allclose(got, t(0.1, 0.125, 0.15, 0.1), atol=1e-7)
    # k = 2 saturates faster: δ = ln 2 → 1 − e^{−2 ln 2} = 1 − ¼ = ¾ → 0.1·(1 + 0.5·¾) = 0.1375
    assert dynamic_beta(t(math.log(2.0)), beta=0.1, w=0.5, k=2.0).item() == pytest.approx(0.1375)
    with pytest.raises(ValueError, match="w must be >= 0"):
        dynamic_beta(t(1.0), w=-0.1)


def test_mm_dpo_hand_values_and_reduction_to_dpo():
    # h: pair 0 = (−1 + 1.5) − (−3 + 2) = 1.5; pair 1 = (−2 + 2) − (−2.5 + 2) = 0.5.
    # δ = (0, ln 2), β = 0.1, w = 0.5, k = 1 → β(δ) = (0.1, 0.125) (see above);
    # loss = log(1 + e^{−β(δ)·h}) = (log(1 + e^{−0.15}), log(1 + e^{−0.0625})) = (0.620957, 0.662385)
    pc, pr, rc, rr = t(-1.0, -2.0), t(-3.0, -2.5), t(-1.5, -2.0), t(-2.0, -2.0)
    out = mm_dpo_loss(pc, pr, rc, rr, t(0.0, math.log(2.0)), beta=0.1, w=0.5, k=1.0)
    want = t(math.log1p(math.exp(-0.15)), math.log1p(math.exp(-0.0625)))
    assert torch.allclose(out.losses, want, atol=1e-6)
    assert torch.allclose(out.losses, t(0.620957, 0.662385), atol=1e-6)
    # implicit rewards use the pair's own β: chosen log-ratios (0.5, 0) → (0.05, 0)
    assert torch.allclose(out.chosen_rewards, t(0.05, 0.0)) and torch.allclose(out.extras["beta"], t(0.1, 0.125))
    # w = 0: exactly DPO at β whatever the margins
    plain = mm_dpo_loss(pc, pr, rc, rr, t(3.0, 7.0), beta=0.1, w=0.0)
    assert torch.allclose(plain.losses, dpo_loss(pc, pr, rc, rr, beta=0.1).losses)
    # through the registry: the margins come from the batch, a batch without them fails by name
    batch = PreferenceBatchLogps(pc, pr, rc, rr, reward_margin=t(0.0, math.log(2.0)))
    assert torch.allclose(PREFERENCE_LOSSES.get("mm_dpo")(batch, w=0.5).losses, want, atol=1e-6)
    with pytest.raises(ValueError, match="reward_margin"):
        PREFERENCE_LOSSES.get("mm_dpo")(PreferenceBatchLogps(pc, pr, rc, rr))
