"""GRPO (Shao et al. 2024): K samples per prompt, group-relative advantages, clipped surrogate,
k3 KL to the reference inside the loss. Options, all by config:

- ``scale_rewards: false``            advantages r − mean_group (Dr. GRPO: no std scaling);
- ``loss_aggregation: token_sum_norm`` Σ tokens / constant (Dr. GRPO: no length normalisation);
- ``clip_eps_high``                   asymmetric clipping (DAPO clip-higher);
- ``drop_zero_variance_groups``       skip groups whose K rewards are equal (DAPO dynamic sampling:
                                       their advantages are 0, they only cost compute).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from vlalign.objectives import ADVANTAGE_ESTIMATORS, ppo_policy_loss, zero_variance_groups
from vlalign.trainers.rl_common import (
    RL_ALGORITHMS,
    RLAlgorithm,
    RLConfig,
    RLState,
    current_logprobs,
    outcome_token_rewards,
)


class GRPOConfig(RLConfig):
    scale_rewards: bool = Field(True, description="divide by the group's reward std (false = Dr. GRPO)")
    drop_zero_variance_groups: bool = Field(False, description="skip groups whose rewards are all equal")


def pg_loss(mb: Any, state: RLState, kl_in_loss: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss of a minibatch (shared by GRPO and RLOO)."""
    cfg = state.cfg
    logps, entropy = current_logprobs(state.policy, mb, cfg.rollout.temperature,
                                      forward=state.forward, group_size=cfg.rollout.num_samples)
    old = mb.old_logprobs if mb.old_logprobs is not None else logps.detach()
    mask = mb.response_mask
    use_kl = kl_in_loss and cfg.kl_coef > 0 and mb.ref_logprobs is not None
    out = ppo_policy_loss(
        logps,
        old,
        mb.advantages,
        mask,
        clip_eps=cfg.clip_eps,
        clip_eps_high=cfg.clip_eps_high,
        aggregation=cfg.loss_aggregation,
        norm_constant=float(cfg.rollout.max_new_tokens),
        ref_logprobs=mb.ref_logprobs if use_kl else None,
        kl_coef=cfg.kl_coef if use_kl else 0.0,
        kl_kind=cfg.kl_estimator,
    )
    ent = float((entropy.detach() * mask).sum() / mask.sum().clamp(min=1))
    metrics = {"policy/clip_fraction": float(out.clip_fraction), "policy/approx_kl": float(out.approx_kl),
               "policy/entropy": ent}
    if use_kl:
        metrics["kl/mean"] = float(out.kl)
    return out.loss, metrics


@RL_ALGORITHMS.register("grpo")
class GRPO(RLAlgorithm):
    name = "grpo"

    def prepare(self, exp: Any, state: RLState) -> tuple[Any, dict[str, float]]:
        cfg = state.cfg
        k = cfg.rollout.num_samples
        est = ADVANTAGE_ESTIMATORS.get("grpo" if cfg.scale_rewards else "dr_grpo")
        token_rewards = outcome_token_rewards(exp.rewards, exp.response_mask)  # (N, T)
        exp.advantages = est(token_rewards, exp.response_mask, group_size=k).advantages  # (N, T)
        flat = exp.rewards.view(-1, k)  # (G, K)
        zero = zero_variance_groups(exp.rewards, k)  # (G,)
        metrics = {"reward/zero_std_frac": float(zero.float().mean()),
                   "reward/group_std": float(flat.std(dim=1, unbiased=False).mean())}
        if cfg.drop_zero_variance_groups and zero.any():
            keep = (~zero).repeat_interleave(k).nonzero().squeeze(1)  # rows of informative groups
            exp = exp.select(keep.tolist())
        metrics["rollout/trained_rows"] = float(exp.num_rows)
        return exp, metrics

    def loss(self, mb: Any, state: RLState) -> tuple[torch.Tensor, dict[str, float]]:
        return pg_loss(mb, state, kl_in_loss=True)


def train_grpo(cfg: GRPOConfig, **kwargs: Any) -> dict[str, Any]:
    from vlalign.trainers.rl_common import run_rl

    return run_rl(cfg, "grpo", **kwargs)
