"""The critic-free trainer's options, wired from the config to the objectives, checked by hand on rollouts
built directly (no sampling): groups by a meta key, singleton groups, TRL's batch scaling, the KL as a
reward penalty, DAPO's dropping of constant groups (with the padding that keeps processes in step),
dual-clip, and verl's KL estimators as config names."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_rl_helpers import hand_run
from test_rl_ppo import Bigram

from vlalign.rollout.experience import Experience


def _cfg(**kw):
    from vlalign.trainers.pg import PGConfig

    return PGConfig.model_validate({
        "output_dir": "unused", "model": {"name_or_path": "unused"}, "data": {"train": "unused"},
        "reward": {"name": "test_letter"}, "optimizer": "sgd", "learning_rate": 1.0, "lr_scheduler": "constant",
        "max_grad_norm": None, "kl_coef": 0.0, "reference": "none", "per_device_batch_size": 2,
        "rollout": {"num_samples": 2}, "forward": "batched", **kw,
    })


def _exp(rewards, prompt_rows, metas=None, lengths=None) -> Experience:
    n = len(rewards)
    lengths = lengths or [1] * n
    t = 1 + max(lengths)
    ids = torch.zeros(n, t, dtype=torch.long)
    mask = torch.zeros(n, t)
    for i, length in enumerate(lengths):
        mask[i, 1 : 1 + length] = 1.0
    return Experience(
        input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=mask, image_inputs={},
        group_ids=torch.arange(n) // 2, texts=[""] * n, prompts=[""] * n, metas=metas or [{}] * n, images=[[]] * n,
        rewards=torch.tensor(rewards), extras={"prompt_row": torch.tensor(prompt_rows)},
    )


def _advantages(cfg, exp):
    from vlalign.trainers.pg import pg_advantages

    run = hand_run(cfg, Bigram())
    exp, metrics = pg_advantages(run, exp)
    per_row = (exp.advantages * exp.response_mask).sum(-1) / exp.response_mask.sum(-1).clamp(min=1)
    return exp, per_row, metrics


def test_group_by_meta_key_pools_prompts_into_one_group():
    # 3 prompt rows × K = 2; rows 0 and 2 share question "a" → group {1, 3, 5, 7} (mean 4,
    # std √(((−3)² + (−1)² + 1² + 3²)/3) = √(20/3) = 2.581989), prompt 1 alone → group {2, 2} (constant → 0)
    metas = [{"q": "a"}] * 2 + [{"q": "b"}] * 2 + [{"q": "a"}] * 2
    exp = _exp([1.0, 3.0, 2.0, 2.0, 5.0, 7.0], [0, 0, 1, 1, 2, 2], metas)
    _, adv, _ = _advantages(_cfg(group_by="q"), exp)
    s = math.sqrt(20 / 3) + 1e-6
    assert adv.tolist() == pytest.approx([-3 / s, -1 / s, 0.0, 0.0, 1 / s, 3 / s], abs=1e-6)
    # grouped by prompt instead: {1, 3}, {2, 2}, {5, 7} → ∓1/√2 each, 0 for the constant group
    _, by_prompt, _ = _advantages(_cfg(), _exp([1.0, 3.0, 2.0, 2.0, 5.0, 7.0], [0, 0, 1, 1, 2, 2], metas))
    r = 1 / (math.sqrt(2) + 1e-6)
    assert by_prompt.tolist() == pytest.approx([-r, r, 0.0, 0.0, -r, r], abs=1e-6)
    with pytest.raises(ValueError, match="group_by='missing'.*no meta key"):
        _advantages(_cfg(group_by="missing"), exp)


def test_singleton_groups_and_batch_scaling_from_the_config():
    metas = [{"q": "a"}, {"q": "a"}, {"q": "b"}, {"q": "c"}]  # groups {1, 3}, {4} alone, {8} alone
    exp = lambda: _exp([1.0, 3.0, 4.0, 8.0], [0, 0, 1, 1], metas)
    _, zero, _ = _advantages(_cfg(group_by="q"), exp())
    r = 1 / (math.sqrt(2) + 1e-6)
    assert zero.tolist() == pytest.approx([-r, r, 0.0, 0.0], abs=1e-6)
    _, raw, _ = _advantages(_cfg(group_by="q", singleton_groups="raw"), exp())
    assert raw.tolist() == pytest.approx([-r, r, 4 / (1 + 1e-6), 8 / (1 + 1e-6)], abs=1e-5)
    # batch scaling (TRL's scale_rewards="batch"): group-centred values ÷ std of all 4 rewards
    # rewards [1, 3, 4, 8]: mean 4, Σ(x − 4)² = 9 + 1 + 0 + 16 = 26, std = √(26/3) = 2.943920; prompts {1,3}, {4,8}
    _, batch, _ = _advantages(_cfg(scale_rewards="batch"), exp())
    s = math.sqrt(26 / 3) + 1e-6
    assert batch.tolist() == pytest.approx([-1 / s, 1 / s, -2 / s, 2 / s], abs=1e-6)


def test_kl_in_reward_penalises_the_score_before_the_baseline():
    # RLOO with kl_in_reward: score_i = r_i − β·Σ_t (old − ref); β = 0.5, one token each:
    # rows [r=1, kl 2], [r=1, kl 0] → scores 0, 1 → leave-one-out −1, +1
    cfg = _cfg(advantage_estimator="rloo", kl_in_reward=True, kl_estimator="k1", kl_coef=0.5, reference="copy")
    e = _exp([1.0, 1.0], [0, 0])
    e.old_logprobs = torch.tensor([[0.0, -1.0], [0.0, -1.0]])
    e.ref_logprobs = torch.tensor([[0.0, -3.0], [0.0, -1.0]])
    _, adv, metrics = _advantages(cfg, e)
    assert adv.tolist() == pytest.approx([-1.0, 1.0])
    assert metrics["kl/seq_mean"] == pytest.approx(1.0)  # (2 + 0)/2


def test_dropping_constant_groups_pads_with_masked_rows():
    # prompt 0 constant (0.5, 0.5) is dropped; prompt 1 (0, 1) kept → 2 real rows; the update needs
    # num_minibatches × accumulation = 2 × 2 = 4 micro-batch rows, so 2 masked copies are added
    cfg = _cfg(drop_zero_variance_groups=True, num_minibatches=2, gradient_accumulation_steps=2)
    exp, _, metrics = _advantages(cfg, _exp([0.5, 0.5, 0.0, 1.0], [0, 0, 1, 1]))
    assert metrics["rollout/trained_rows"] == 2.0 and exp.num_rows == 4
    assert exp.extras["real_row"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert exp.response_mask[2:].sum() == 0 and exp.advantages[2:].abs().sum() == 0


def test_dual_clip_and_verl_kl_names_reach_the_loss():
    from vlalign.trainers.pg import pg_loss

    # one token, old log-prob −3 under a policy giving it log ½ (uniform bigram): ρ = e^(−0.693 + 3) ≈ 10,
    # A = −1: the clipped surrogate gives max(10, 1.2) = 10; dual clip c = 3 caps it at 3
    for c, expected in ((None, math.exp(3 - math.log(2))), (3.0, 3.0)):
        run = hand_run(_cfg(dual_clip_c=c, loss_aggregation="token_mean"), Bigram())
        e = _exp([0.0, 0.0], [0, 0])
        e.input_ids[:, 1] = 1
        e.old_logprobs = torch.tensor([[0.0, -3.0], [0.0, -3.0]])
        e.advantages = torch.tensor([[0.0, -1.0], [0.0, -1.0]])
        share = pg_loss(run, kl_in_loss=True)(e, {"tokens": 2.0, "seqs": 2.0, "rows": 2.0})
        assert share.loss.item() == pytest.approx(expected, rel=1e-5)
    for name in ("low_var_kl", "abs"):
        assert _cfg(kl_estimator=name).kl_estimator == name
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        _cfg(kl_estimator="k4")
    with pytest.raises(ValueError, match="GAE needs a critic"):
        _cfg(advantage_estimator="gae")
