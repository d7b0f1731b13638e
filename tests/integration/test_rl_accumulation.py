"""RL updates split over micro-batches equal one big batch: 4 micro-batches × 2 rows = 1 × 8 with ragged
response lengths, for every policy-loss aggregation (token_mean, seq_mean_token_mean, token_sum_norm),
the in-loss KL term (GRPO) and PPO's token-mean value loss — the losses are normalised by the global
count of their unit, not per micro-batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_rl_helpers import hand_run
from test_rl_ppo import Bigram

from vlalign.rollout.experience import Experience

LENGTHS = [1, 3, 2, 4, 1, 2, 4, 3]  # ragged responses after a one-token prompt


def _experience() -> Experience:
    gen = torch.Generator().manual_seed(0)
    n, t = len(LENGTHS), 1 + max(LENGTHS)
    ids = torch.randint(0, 3, (n, t), generator=gen)
    mask = torch.zeros(n, t)
    for i, length in enumerate(LENGTHS):
        mask[i, 1 : 1 + length] = 1.0
    return Experience(
        input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=mask, image_inputs={},
        group_ids=torch.arange(n) // 4, texts=[""] * n, prompts=[""] * n, metas=[{}] * n, images=[[]] * n,
        old_logprobs=-torch.rand(n, t, generator=gen) * mask, ref_logprobs=-torch.rand(n, t, generator=gen) * mask,
        advantages=torch.randn(n, t, generator=gen) * mask, values=torch.randn(n, t, generator=gen) * mask,
        returns=torch.randn(n, t, generator=gen) * mask, rewards=torch.zeros(n),
    )


def _policy() -> Bigram:
    policy = Bigram(vocab=3)
    torch.nn.init.normal_(policy.head.weight, generator=torch.Generator().manual_seed(1))
    return policy


def _one_update(trainer: str, aggregation: str, accumulation: int) -> tuple[dict, dict[str, torch.Tensor]]:
    from vlalign.trainers.grpo import GRPOConfig
    from vlalign.trainers.pg import pg_loss
    from vlalign.trainers.ppo import PPOConfig, critics, ppo_loss
    from vlalign.trainers.rl_common import update

    common = {"output_dir": "unused", "model": {"name_or_path": "unused"}, "data": {"train": "unused"},
              "reward": {"name": "test_letter"}, "optimizer": "sgd", "learning_rate": 0.5, "max_grad_norm": None,
              "lr_scheduler": "constant", "per_device_batch_size": 2, "rollout": {"num_samples": 4},
              "gradient_accumulation_steps": accumulation, "loss_aggregation": aggregation,
              "kl_coef": 0.1, "reference": "copy", "forward": "batched"}
    policy = _policy()
    if trainer == "grpo":
        run = hand_run(GRPOConfig.model_validate(common), policy)
        loss_fn = pg_loss(run, kl_in_loss=True)
    else:
        cfg = PPOConfig.model_validate({**common, "critic": "separate", "kl_in_reward": False})
        run = hand_run(cfg, policy, critics(cfg, ["value"])(policy))
        from vlalign.trainers.ppo import kl_controller

        kl_controller(run)
        loss_fn = ppo_loss(run, ["value"])
    metrics, finite = update(run, _experience(), loss_fn, step=0)
    assert finite
    weights = {f"policy.{k}": v.clone() for k, v in run.policy.state_dict().items()}
    for name, module in run.modules.items():
        weights.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
    return metrics, weights


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "token_sum_norm"])
@pytest.mark.parametrize("trainer", ["grpo", "ppo"])
def test_four_micro_batches_of_two_equal_one_of_eight(trainer, aggregation):
    whole, w1 = _one_update(trainer, aggregation, 1)
    split, w4 = _one_update(trainer, aggregation, 4)
    for key in ("loss", "policy/clip_fraction", "policy/approx_kl") + (("value/loss",) if trainer == "ppo" else ()):
        assert split[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-7), key
    assert w1.keys() == w4.keys()
    for k in w1:
        assert torch.allclose(w1[k], w4[k], atol=1e-6), k
    moved = _policy().state_dict()["head.weight"]
    assert not torch.allclose(w1["policy.head.weight"], moved)  # the update did something
