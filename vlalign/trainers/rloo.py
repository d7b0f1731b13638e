"""RLOO (Ahmadian et al. 2024, "Back to Basics"): REINFORCE with a leave-one-out baseline over the
K samples of each prompt. As in that paper the KL to the reference is a penalty on the reward
(r − β·Σ_t k1_t per response), not a loss term; with one update per rollout the clipped surrogate
reduces to plain REINFORCE (ratio = 1).

Option: ``normalize_advantages: true`` whitens the advantages over the rollout batch (mean 0, std 1;
TRL's RLOO ``normalize_advantages``). Off by default, as in the paper, TRL (default False) and OpenRLHF
(which whitens gae/reinforce/reinforce_baseline, not rloo).

What it does and does not fix (issue #7, toy task of tests/integration/test_rl_grpo.py, lr 3e-2): raw
leave-one-out advantages there are ~0.05 against GRPO's ~0.7, but with Adam a constant factor cancels
(raw advantages × 14 gave nearly the whitened run's reward curve; neither rose by 0.1). The test failed
because 8 rollouts of 8 samples were too few (GRPO itself missed the +0.1 on seed 1, Dr. GRPO on all 3
seeds). With 16 rollouts of 16 samples GRPO, Dr. GRPO and whitened RLOO rose > 0.1 on every seed tried,
raw RLOO on 4 of 5 (0.099 on the fifth); whitened RLOO rose faster than raw (mean 0.27 vs 0.20 over 5
seeds): every rollout gets the same step size, whatever its reward spread.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from vlalign.objectives import ADVANTAGE_ESTIMATORS, kl_estimate, masked_sum
from vlalign.trainers.grpo import pg_loss
from vlalign.trainers.rl_common import RL_ALGORITHMS, RLAlgorithm, RLConfig, RLState, outcome_token_rewards


class RLOOConfig(RLConfig):
    """RLOO: K (rollout.num_samples ≥ 2), kl_coef (a penalty on the reward), the shared PG settings, and
    whether to whiten the advantages over the batch."""

    normalize_advantages: bool = Field(
        False,
        description="whiten advantages over the rollout batch (mean 0, std 1), so their size no longer "
        "depends on the reward's spread; off = plain leave-one-out advantages, in reward units",
    )


@RL_ALGORITHMS.register("rloo")
class RLOO(RLAlgorithm):
    name = "rloo"

    def needs_old_logprobs(self, cfg: RLConfig) -> bool:
        return True  # the reward's KL penalty needs log π of the sampled tokens

    def prepare(self, exp: Any, state: RLState) -> tuple[Any, dict[str, float]]:
        cfg = state.cfg
        mask = exp.response_mask
        token_rewards = outcome_token_rewards(exp.rewards, mask)  # (N, T)
        metrics: dict[str, float] = {}
        if cfg.kl_coef > 0 and exp.ref_logprobs is not None:
            kl = kl_estimate(exp.old_logprobs, exp.ref_logprobs, kind="k1", mask=mask)  # (N, T)
            token_rewards = token_rewards - cfg.kl_coef * kl
            seq_kl = masked_sum(kl, mask, dim=-1)  # (N,)
            metrics["kl/mean"] = float(seq_kl.mean() / mask.sum(-1).clamp(min=1).mean())
            metrics["kl/seq_mean"] = float(seq_kl.mean())
        est = ADVANTAGE_ESTIMATORS.get("rloo")
        whiten = getattr(cfg, "normalize_advantages", False)  # a plain RLConfig has no such field
        exp.advantages = est(token_rewards, mask, group_size=cfg.rollout.num_samples, whiten=whiten).advantages
        # one advantage per sample, broadcast over its tokens: read it back as the row's masked mean
        per_sample = masked_sum(exp.advantages, mask, dim=-1) / mask.sum(-1).clamp(min=1)  # (N,)
        metrics["advantage/abs_mean"] = float(per_sample.abs().mean())
        return exp, metrics

    def loss(self, mb: Any, state: RLState) -> tuple[torch.Tensor, dict[str, float]]:
        return pg_loss(mb, state, kl_in_loss=False)


def train_rloo(cfg: RLOOConfig, **kwargs: Any) -> dict[str, Any]:
    from vlalign.trainers.rl_common import run_rl

    return run_rl(cfg, "rloo", **kwargs)
