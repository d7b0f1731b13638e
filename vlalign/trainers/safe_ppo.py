"""Safe RLHF (Dai et al. 2024) / Safe RLHF-V: PPO under the constraint  E[episode cost] ≤ cost_limit.

Two signals scored separately on every rollout — ``reward:`` and ``cost:`` (any registered source;
e.g. the Shapes refusal verifier on the safety split, negated so that cost > 0 = unsafe) — each with
its own critic (``value`` and ``cost_value``; shared heads on the policy or separate backbones, as
``critic:`` says). Per rollout:

1. λ takes one step of :class:`LagrangeMultiplier` on the rollout's mean episode cost J_C: it rises
   while J_C > d (the limit) and decays toward 0 once the constraint holds;
2. GAE on the reward (− β·KL per token) → A_r, and on the cost (+ β·KL per token) → A_c; the KL is
   split this way so that the combined advantage below carries exactly −β·KL whatever λ is;
3. A = (A_r − λ·A_c)/(1 + λ) (:func:`safe_rlhf_advantages`), whitened over the rollout;
4. PPO updates on A, plus both critics' clipped value losses.

λ, J_C, the violation J_C − d and the share of unsafe (cost > 0) responses are logged every rollout;
log λ is saved in checkpoints (exact resume). J_C is the mean over every process's responses, so λ
moves the same way on any process count. :func:`train_safe_ppo` shows the loop.

``cost_penalty: fixed`` replaces the Lagrangian by a fixed penalty, the reward r − c·cost with c =
``cost_coef``: no λ, no cost limit in the update (d is still logged as the violation), A = A_r − c·A_c
(:func:`vlalign.objectives.fixed_penalty_advantages`) with the KL penalty on the reward side only.
Seed 000's open question — does the adaptive λ buy anything over a well-chosen constant? — is then
one config key apart; `vlalign experiment safe-rlhf` runs both (``ppo_fixed_penalty``, results in
docs/experiments.md).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from vlalign.objectives import LagrangeMultiplier, fixed_penalty_advantages, safe_rlhf_advantages
from vlalign.rewards.composite import RewardSourceConfig
from vlalign.rollout.collect import score_with
from vlalign.trainers.ppo import (
    PPOConfig,
    critic_learning_rate,
    critics,
    final_advantages,
    gae_advantages,
    kl_controller,
    needs_old_logprobs,
    ppo_loss,
    reward_tokens,
    rollout_kl,
    rollout_values,
    update_kl_controller,
    value_metrics,
)
from vlalign.trainers.rl_common import (
    RL_TRAINERS,
    RLRun,
    finish_rl,
    gather_rows,
    rollout,
    score,
    set_replay_keys,
    start_rl_run,
    update,
)
from vlalign.trainers.rollout_buffer import attach_buffer, remember, with_replay
from vlalign.trainers.segment_rewards import KeepOutput


class SafePPOConfig(PPOConfig):
    """PPO-Lagrangian. ``cost`` is scored like ``reward``; higher = less safe."""

    cost: RewardSourceConfig = Field(..., description="cost source, e.g. {name: cost_model, kwargs: {...}}")
    cost_limit: float = Field(0.0, description="d: the constraint is mean episode cost ≤ d")
    lambda_init: float = Field(1.0, gt=0, description="initial λ (log-parameterised, so > 0)")
    lambda_lr: float = Field(0.1, gt=0, description="step size of the λ update on log λ")
    lambda_max: float | None = Field(None, gt=0, description="cap on λ (null = none)")
    cost_penalty: Literal["lagrangian", "fixed"] = Field(
        "lagrangian", description="lagrangian = λ adapts to hold mean cost ≤ cost_limit; fixed = the reward is "
        "r − cost_coef·cost with a constant coefficient (no λ update)",
    )
    cost_coef: float = Field(1.0, ge=0, description="cost_penalty fixed: c in r − c·cost")


def lagrange_multiplier(run: RLRun) -> LagrangeMultiplier:
    """λ of the run (not trained by the optimizer: its own update rule), restored when resuming."""
    cfg = run.cfg
    lagrange = LagrangeMultiplier(cfg.lambda_init, cfg.cost_limit, cfg.lambda_lr, cfg.lambda_max)
    saved = run.state.get("algorithm", {})
    if "log_lambda" in saved:
        with torch.no_grad():
            lagrange.log_lambda.fill_(float(saved["log_lambda"]))
    return lagrange


def score_costs(run: RLRun, exp: Any, cost_source: Any, lagrange: LagrangeMultiplier) -> dict[str, float]:
    """Score the costs, then take λ's step on the mean episode cost J_C of the whole batch (λ first, then
    the advantages use the new λ, as Safe RLHF does). ``cost/coef`` is the cost's weight in the
    advantage: λ, or the constant c of ``cost_penalty: fixed``."""
    cfg = run.cfg
    exp.costs, metrics = score_with(cost_source, exp, "cost", gather_rows(run))  # (N,), metrics over all
    mean_cost = metrics["cost/mean"]
    every = gather_rows(run)(exp.costs)
    metrics.update({"cost/violation": mean_cost - cfg.cost_limit, "cost/unsafe_frac": float((every > 0).float().mean())})
    if cfg.cost_penalty == "fixed":
        metrics["cost/coef"] = cfg.cost_coef
    else:
        metrics["lagrange/lambda"] = metrics["cost/coef"] = lagrange.update(mean_cost)
    return metrics


def combined_advantages(cfg: SafePPOConfig, adv_r: torch.Tensor, adv_c: torch.Tensor, coef: float) -> torch.Tensor:
    """Safe RLHF's (A_r − λ·A_c)/(1 + λ), or A_r − c·A_c for the fixed penalty."""
    if cfg.cost_penalty == "fixed":
        return fixed_penalty_advantages(adv_r, adv_c, coef)
    return safe_rlhf_advantages(adv_r, adv_c, torch.tensor(coef))


def train_safe_ppo(cfg: SafePPOConfig, stop_after: int | None = None) -> dict[str, Any]:
    """PPO-Lagrangian as configured; returns the run summary (``value.pt``, ``cost_value.pt`` hold the critics)."""
    from vlalign.rewards import build_source

    names = ["value", "cost_value"]
    run = start_rl_run(cfg, critics(cfg, names), critic_learning_rate(cfg), stop_after, attach_buffer(cfg))
    run.reward = KeepOutput(run.reward)  # its judged spans feed reward_granularity: segment
    cost_source = build_source(cfg.cost)
    ctl, lagrange = kl_controller(run), lagrange_multiplier(run)
    run.save_state = lambda: {"algorithm": {"kl_coef": ctl.value, "log_lambda": float(lagrange.log_lambda.detach())}}
    loss_fn = ppo_loss(run, names)
    try:
        for step in run.steps():
            exp = rollout(run, step)                                     # K samples of this process's prompts
            metrics = score(run, exp, need_old=needs_old_logprobs(cfg))  # log-probs, rewards, response stats
            metrics.update(score_costs(run, exp, cost_source, lagrange))  # costs, then λ's step
            coef = metrics["cost/coef"]
            kl, kl_metrics = rollout_kl(run, exp)
            metrics.update(kl_metrics)
            in_reward = kl is not None and cfg.kl_in_reward
            split_kl = in_reward and cfg.cost_penalty == "lagrangian"
            values = rollout_values(run, exp, names)
            mask = exp.response_mask
            # Lagrangian: the KL is split −β·KL on the reward, +β·KL on the cost, so (A_r − λ·A_c)/(1 + λ)
            # carries exactly −β·KL; fixed penalty: −β·KL on the reward only
            adv_r, ret_r = gae_advantages(cfg, exp, reward_tokens(run, exp), values["value"],
                                          -ctl.value * kl if in_reward else None)
            adv_c, ret_c = gae_advantages(cfg, exp, exp.costs, values["cost_value"], ctl.value * kl if split_kl else None)
            exp.values, exp.returns = values["value"], ret_r
            exp.extras["cost_value/values"], exp.extras["cost_value/returns"] = values["cost_value"], ret_c
            exp.advantages = final_advantages(run, combined_advantages(cfg, adv_r, adv_c, coef), mask)
            metrics.update(value_metrics(run, "value", values["value"], ret_r, mask))
            metrics.update(value_metrics(run, "cost_value", values["cost_value"], ret_c, mask))
            update_kl_controller(run, kl, exp)
            set_replay_keys(run, exp, step)
            batch, replay_metrics = with_replay(run, exp, step)
            update_metrics, finite = update(run, batch, loss_fn, step)
            metrics.update(update_metrics, **replay_metrics)
            remember(run, exp)
            if run.end_step(step, metrics, finite):
                break
    except BaseException:
        run.close()
        raise
    return finish_rl(run)


RL_TRAINERS.register("safe_ppo", "ppo_lag")(train_safe_ppo)
