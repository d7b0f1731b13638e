"""RLOO's optional batch whitening (whiten_batch_advantages and the ``whiten`` hyper-parameter of the
registered "rloo" estimator), on tensors small enough to work out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.objectives import ADVANTAGE_ESTIMATORS, rloo_advantages, whiten_batch_advantages


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def test_whiten_hand_values():
    # A = [1, 0, -1, 0]: mean 0; Bessel var = (1 + 0 + 1 + 0) / 3 = 2/3, std = 0.816497
    # → A / std = [1.224745, 0, -1.224745, 0]
    out = whiten_batch_advantages(t(1.0, 0.0, -1.0, 0.0), eps=0.0)
    assert torch.allclose(out, t(1.224745, 0.0, -1.224745, 0.0), atol=1e-6)
    # a non-centred batch is shifted too: A = [2, 4] → mean 3, std = sqrt(((−1)² + 1²) / 1) = √2
    # → [−1/√2, 1/√2]
    s = 1 / math.sqrt(2)
    assert torch.allclose(whiten_batch_advantages(t(2.0, 4.0), eps=0.0), t(-s, s), atol=1e-6)


def test_whiten_is_scale_free_and_has_unit_std():
    a = t(0.03, -0.01, -0.02, 0.0, 0.05, -0.05)
    out = whiten_batch_advantages(a)
    assert torch.allclose(out, whiten_batch_advantages(a * 100.0), atol=1e-4)  # reward units drop out
    assert abs(float(out.mean())) < 1e-6 and abs(float(out.std()) - 1.0) < 1e-4


def test_whiten_constant_or_single_batch_gives_zeros_not_nan():
    assert torch.equal(whiten_batch_advantages(t(0.0, 0.0, 0.0)), t(0.0, 0.0, 0.0))
    assert torch.equal(whiten_batch_advantages(t(0.7, 0.7)), t(0.0, 0.0))
    assert torch.equal(whiten_batch_advantages(t(3.0)), t(0.0))
    with pytest.raises(ValueError, match="whiten_batch_advantages"):
        whiten_batch_advantages(torch.zeros(2, 2))


def test_rloo_estimator_whiten_hand_values():
    # two groups of K = 2, scores = row sums over valid tokens: [1, 3 | 2, 2]
    token_rewards = t(0.0, 1.0, 0.0, 3.0, 2.0, 0.0, 2.0, 0.0).view(4, 2)  # (B, T)
    mask = t(1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0).view(4, 2)  # rows 2, 3 have one token
    est = ADVANTAGE_ESTIMATORS.get("rloo")
    raw = est(token_rewards, mask, group_size=2).advantages
    # leave-one-out: 1 − 3 = −2, 3 − 1 = 2 | 2 − 2 = 0, 0 (the default is unchanged: no whitening)
    assert torch.equal(raw, t(-2.0, -2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0).view(4, 2))
    white = est(token_rewards, mask, group_size=2, whiten=True, eps=0.0).advantages
    # per sample [−2, 2, 0, 0]: mean 0, Bessel var = (4 + 4) / 3 = 8/3, std = 1.632993
    # → [−1.224745, 1.224745, 0, 0], broadcast over valid tokens, 0 on the masked ones
    a = 1.224745
    assert torch.allclose(white, t(-a, -a, a, a, 0.0, 0.0, 0.0, 0.0).view(4, 2), atol=1e-6)


def test_rloo_advantages_are_centred_so_whitening_only_rescales():
    # Σ_i (r_i − (S − r_i)/(K − 1)) = S − (K·S − S)/(K − 1) = 0 per group: the batch mean is already 0,
    # so whitening RLOO divides by one number per rollout and keeps the sign of every advantage.
    r = t(0.1, 0.4, 0.2, 0.3, 0.9, 0.0, 0.5, 0.5, 0.6)
    raw = rloo_advantages(r, 3)
    assert abs(float(raw.sum())) < 1e-6
    assert torch.allclose(whiten_batch_advantages(raw, eps=0.0), raw / raw.std(), atol=1e-6)


def test_rloo_estimator_rejects_unknown_hyperparameter():
    with pytest.raises(ValueError, match="whiten"):
        ADVANTAGE_ESTIMATORS.get("rloo")(torch.zeros(2, 1), torch.ones(2, 1), group_size=2, normalize=True)
