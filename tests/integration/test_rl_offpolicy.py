"""Sample efficiency on the RL core: several PPO epochs × minibatches per rollout (by hand, bigram),
the off-policy rollout buffer (experiences concatenated and renumbered; truncated importance weights by
hand through the trainer's loss), and exact resume of a PPO run that replays past rollouts."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_rl_helpers import hand_run
from test_rl_ppo import Bigram, _experience

from vlalign.trainers.logging import read_metrics

HALF = math.log(0.5)


def test_two_epochs_of_two_minibatches_by_hand():
    from test_rl_ppo import _cfg

    from vlalign.trainers.ppo import critics, final_advantages, gae_advantages, ppo_loss, rollout_values
    from vlalign.trainers.rl_common import update

    cfg = _cfg(ppo_epochs=2, num_minibatches=2, clip_eps=0.9)
    policy = Bigram()
    run = hand_run(cfg, policy, critics(cfg, ["value"])(policy))
    # row 0: after token 0 says 1; row 1: after token 1 says 0; both reward +1 (V = 0 → A = +1); π_old = ½
    exp = _experience([[0, 1], [1, 0]], [[0, 1], [0, 1]], [1.0, 1.0])
    exp.old_logprobs = torch.tensor([[0.0, HALF], [0.0, HALF]])
    values = rollout_values(run, exp, ["value"])["value"]
    adv, returns = gae_advantages(cfg, exp, exp.rewards, values, None)
    exp.values, exp.returns, exp.advantages = values, returns, final_advantages(run, adv, exp.response_mask)
    steps = []
    run.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    update(run, exp, ppo_loss(run, ["value"]), step=0)
    assert len(steps) == 4  # 2 epochs × 2 minibatches, one row each (the rows use different columns of W)
    # each row alone in its minibatch: L = −A·ρ. Epoch 1, ρ = 1: ∂L/∂z = −(onehot(a) − (½, ½)) → z = ±(½, −½).
    # Epoch 2: p(a) = σ(1) = 0.731059, ρ = 0.731059/0.5 = 1.462117 (< 1 + ε = 1.9: not clipped);
    # ∂L/∂z = −ρ·(onehot(a) − p) → |step| = 1.462117·0.268941 = 0.393224 → |z| = 0.893224
    z = 0.5 + 1.462117 * (1 - 0.731059)
    assert torch.allclose(run.policy.head.weight, torch.tensor([[-z, z], [z, -z]]), atol=1e-5)


def test_second_epoch_is_clipped_by_hand():
    from test_rl_ppo import _cfg

    from vlalign.trainers.ppo import critics, final_advantages, gae_advantages, ppo_loss, rollout_values
    from vlalign.trainers.rl_common import update

    cfg = _cfg(ppo_epochs=2, num_minibatches=1, clip_eps=0.2)
    policy = Bigram()
    run = hand_run(cfg, policy, critics(cfg, ["value"])(policy))
    exp = _experience([[0, 1]], [[0, 1]], [1.0])
    exp.old_logprobs = torch.tensor([[0.0, HALF]])
    values = rollout_values(run, exp, ["value"])["value"]
    adv, returns = gae_advantages(cfg, exp, exp.rewards, values, None)
    exp.values, exp.returns, exp.advantages = values, returns, final_advantages(run, adv, exp.response_mask)
    update(run, exp, ppo_loss(run, ["value"]), step=0)
    # epoch 1 moves z to (−½, ½); epoch 2: ρ = 1.462 > 1.2 with A > 0 → the clipped branch, zero gradient
    assert torch.allclose(run.policy.head.weight[:, 0], torch.tensor([-0.5, 0.5]), atol=1e-6)


def test_cat_experiences_pads_tokens_and_keeps_groups_apart():
    from vlalign.trainers.rollout_buffer import cat_experiences, split_groups

    a = _experience([[0, 1], [0, 0]], [[0, 1], [0, 1]], [1.0, 2.0])  # T = 2, groups 0, 1
    b = _experience([[1, 0, 1]], [[0, 1, 1]], [3.0])  # T = 3, group 0
    a.extras["entropy"], b.extras["entropy"] = torch.ones(2, 2), torch.ones(1, 3)
    a.extras["prompt_row"], b.extras["prompt_row"] = torch.tensor([5, 6]), torch.tensor([7])
    both = cat_experiences([a, b])
    assert both.input_ids.tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 1]]
    assert both.response_mask.tolist() == [[0, 1, 0], [0, 1, 0], [0, 1, 1]]
    assert both.extras["entropy"].shape == (3, 3) and both.extras["prompt_row"].tolist() == [5, 6, 7]
    assert both.group_ids.tolist() == [0, 1, 2] and both.rewards.tolist() == [1.0, 2.0, 3.0]
    assert [g.num_rows for g in split_groups(both)] == [1, 1, 1]


def _pg_cfg(rho_bar):
    from vlalign.trainers.pg import PGConfig

    return PGConfig.model_validate({
        "output_dir": "unused", "model": {"name_or_path": "unused"}, "data": {"train": "unused"},
        "reward": {"name": "test_letter"}, "optimizer": "sgd", "learning_rate": 1.0, "lr_scheduler": "constant",
        "max_grad_norm": None, "kl_coef": 0.0, "reference": "none", "rollout": {"num_samples": 1},
        "singleton_groups": "raw", "offpolicy": {"capacity": 4, "groups_per_update": 1, "rho_bar": rho_bar},
    })


@pytest.mark.parametrize("rho_bar, w", [(1.0, 1.0), (None, 2.0), (1.5, 1.5)])
def test_replayed_group_is_weighted_by_the_truncated_ratio_by_hand(rho_bar, w):
    from vlalign.trainers.pg import pg_loss
    from vlalign.trainers.rl_common import update
    from vlalign.trainers.rollout_buffer import RolloutBuffer, with_replay

    cfg = _pg_cfg(rho_bar)
    run = hand_run(cfg, Bigram())
    buffer = run.extra["buffer"] = RolloutBuffer(cfg.offpolicy, run.dist, seed=0)
    # a past group: after token 0 the old policy μ said 1 with μ = ¼ (log-prob stored), advantage +1
    past = _experience([[0, 1]], [[0, 1]], [1.0])
    past.old_logprobs, past.advantages = torch.tensor([[0.0, math.log(0.25)]]), torch.tensor([[0.0, 1.0]])
    buffer.add(past)
    # the fresh rollout: after token 1 the policy (π = ½ everywhere, W = 0) said 0, advantage +1
    fresh = _experience([[1, 0]], [[0, 1]], [1.0])
    fresh.old_logprobs, fresh.advantages = torch.tensor([[0.0, HALF]]), torch.tensor([[0.0, 1.0]])
    batch, metrics = with_replay(run, fresh, step=0)
    assert batch.num_rows == 2 and batch.extras["replayed"].tolist() == [0.0, 1.0]
    assert metrics["offpolicy/replayed_rows"] == 1.0 and metrics["offpolicy/is_weight_mean"] == pytest.approx(w)
    update(run, batch, pg_loss(run, kl_in_loss=False), step=0)
    # π_prox/μ = ½ / ¼ = 2, truncated at ρ̄ → w. One update (ρ = 1), seq_mean over 2 rows:
    #   L = −½·[w·A·log π(1 | 0) + A·log π(0 | 1)]
    #   ∂L/∂W[:, 0] = −½·w·((0, 1) − (½, ½)) = (w/4, −w/4) → W[:, 0] = (−w/4, w/4)
    #   ∂L/∂W[:, 1] = −½·((1, 0) − (½, ½)) = (−¼, ¼)      → W[:, 1] = (¼, −¼)
    want = torch.tensor([[-w / 4, 0.25], [w / 4, -0.25]])
    assert torch.allclose(run.policy.head.weight, want, atol=1e-6)


def test_buffer_is_fifo_seeded_and_round_trips():
    from vlalign.trainers.rollout_buffer import OffPolicyConfig, RolloutBuffer

    run = hand_run(_pg_cfg(1.0), Bigram())
    buffer = RolloutBuffer(OffPolicyConfig(capacity=3, groups_per_update=2), run.dist, seed=0)
    for r in range(5):  # 5 rollouts of one group each, rewards 0..4; capacity 3 keeps the last three
        exp = _experience([[0, 1]], [[0, 1]], [float(r)])
        exp.old_logprobs = torch.zeros(1, 2)
        buffer.add(exp)
    assert [float(g.rewards[0]) for g in buffer.groups] == [2.0, 3.0, 4.0]
    draw = [float(g.rewards[0]) for g in buffer.sample(step=7)]
    assert len(draw) == 2 and draw == [float(g.rewards[0]) for g in buffer.sample(step=7)]  # seeded by step
    other = RolloutBuffer(OffPolicyConfig(capacity=3, groups_per_update=2), run.dist, seed=0)
    other.load_state_dict(buffer.state_dict())
    assert [float(g.rewards[0]) for g in other.sample(step=7)] == draw


def test_ppo_with_replay_resumes_exactly(tmp_path):
    from test_rl_ppo import check_resume

    check_resume(tmp_path, "ppo", critic="shared", offpolicy={"capacity": 3, "groups_per_update": 2})
    full = [r for r in read_metrics(tmp_path / "full" / "run") if "reward/mean" in r]
    again = [r for r in read_metrics(tmp_path / "killed" / "run") if "reward/mean" in r]
    # past groups are replayed from the second rollout on (2 groups × 2 samples) — also right after the
    # resume, so the buffer came back with the checkpoint
    assert [r["offpolicy/replayed_rows"] for r in full] == [0.0, 4.0, 4.0, 4.0]
    assert [r["offpolicy/replayed_rows"] for r in again][-2:] == [4.0, 4.0]
    assert [r["offpolicy/is_weight_mean"] for r in full[-2:]] == [r["offpolicy/is_weight_mean"] for r in again[-2:]]
