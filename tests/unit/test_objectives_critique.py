"""The critique reward model's loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.objectives.critique import critique_rm_loss, sequence_nll


def test_sequence_nll_is_the_mean_over_masked_tokens():
    logps = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    # row 0: (1 + 2) / 2 = 1.5 (the masked-out −9 does not count); row 1: (0.5 + 0.5 + 3) / 3 = 4/3
    assert sequence_nll(logps, mask).tolist() == pytest.approx([1.5, 4 / 3])
    with pytest.raises(ValueError, match="no critique token"):
        sequence_nll(logps, torch.zeros_like(mask))


def test_critique_loss_lm_part_plus_bradley_terry():
    nll_c, nll_r = torch.tensor([1.5, 0.5]), torch.tensor([1.0, 2.5])
    s_c, s_r = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    out = critique_rm_loss(nll_c, nll_r, s_c, s_r, lm_weight=0.5)
    # lm = mean of the two critiques' NLL: (1.5 + 1.0)/2 = 1.25, (0.5 + 2.5)/2 = 1.5
    # BT = −log σ(s_c − s_r) = log(1 + e^{−(s_c − s_r)}): log(1 + e^{−2}) = 0.126928, log(1 + e^{1}) = 1.313262
    bt0, bt1 = math.log(1 + math.exp(-2)), math.log(1 + math.e)
    assert out.lm.tolist() == pytest.approx([1.25, 1.5])
    assert out.score.tolist() == pytest.approx([bt0, bt1])
    assert bt0 == pytest.approx(0.126928, abs=1e-6) and bt1 == pytest.approx(1.313262, abs=1e-6)
    # total = 0.5·lm + BT = 0.625 + 0.126928, 0.75 + 1.313262
    assert out.losses.tolist() == pytest.approx([0.751928, 2.063262], abs=1e-6)
    # lm_weight 0 leaves Bradley–Terry alone
    assert critique_rm_loss(nll_c, nll_r, s_c, s_r, lm_weight=0.0).losses.tolist() == pytest.approx([bt0, bt1])


def test_rows_with_scores_regress_on_them_instead():
    nll_c, nll_r = torch.tensor([1.5, 0.5]), torch.tensor([1.0, 2.5])
    s_c, s_r = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    targets = torch.tensor([[1.0, -1.0], [7.0, 7.0]])  # row 1's targets are ignored: has_target False
    out = critique_rm_loss(nll_c, nll_r, s_c, s_r, 0.5, targets, torch.tensor([True, False]))
    # row 0: ((2 − 1)² + (0 − (−1))²)/2 = 1.0 → 0.625 + 1.0; row 1 keeps Bradley–Terry
    assert out.score.tolist() == pytest.approx([1.0, math.log(1 + math.e)])
    assert out.losses.tolist() == pytest.approx([1.625, 0.75 + math.log(1 + math.e)])


def test_gradients_reach_both_parts():
    s_c = torch.tensor([0.3], requires_grad=True)
    nll = torch.tensor([2.0], requires_grad=True)
    critique_rm_loss(nll, torch.tensor([1.0]), s_c, torch.tensor([0.3]), lm_weight=2.0).losses.sum().backward()
    # d/dnll_c of 2·(nll_c + nll_r)/2 = 1; d/ds_c of −log σ(s_c − s_r) at a zero margin = −σ(0) = −0.5
    assert nll.grad.item() == pytest.approx(1.0)
    assert s_c.grad.item() == pytest.approx(-0.5)


def test_bad_shapes_and_weights_are_refused():
    one = torch.zeros(2)
    with pytest.raises(ValueError, match="same shape"):
        critique_rm_loss(one, one, one, torch.zeros(3))
    with pytest.raises(ValueError, match="lm_weight"):
        critique_rm_loss(one, one, one, one, lm_weight=-1.0)
    with pytest.raises(ValueError, match="has_target"):
        critique_rm_loss(one, one, one, one, targets=torch.zeros(2, 2))
