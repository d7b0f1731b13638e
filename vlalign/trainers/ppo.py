"""PPO with a critic (Schulman et al. 2017; the RLHF recipe of Ziegler et al. 2019 / Ouyang et al. 2022).

Per rollout: score the responses, put each score on its last response token, subtract the per-token
KL penalty β·KL(π_old ‖ π_ref) (``kl_in_reward: true``; else the KL is a loss term), read the
critic's values V(s_t), run GAE(γ, λ) → advantages and value targets, whiten the advantages; then
``ppo_epochs`` × ``num_minibatches`` optimizer steps on the clipped policy loss + ``vf_coef`` × the
clipped value loss. β is held by a KL controller picked by name (``fixed`` or ``adaptive``).

The critic, by config:

- ``critic: shared``   a value head on the policy's own last hidden states: no second model, one
                       forward gives log-probs and values (the value loss also trains the backbone);
- ``critic: separate`` its own copy of the backbone + a value head (the InstructGPT layout; twice the
                       memory, but the value loss cannot disturb the policy).

The critics are prepared with the policy (DDP/FSDP synchronise their gradients too), trained by the
same optimizer, saved in checkpoints (exact resume) and written as ``<name>.pt`` at the end. All
formulas come from :mod:`vlalign.objectives`; this file wires them, and :func:`train_ppo` shows the
loop: rollout → score → KL → values → GAE → whiten → update.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from vlalign.objectives import (
    ADVANTAGE_ESTIMATORS,
    PG_LOSS_AGGREGATIONS,
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    masked_sum,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    zero_masked,
)
from vlalign.registry import Registry
from vlalign.trainers.dist import global_masked_stats
from vlalign.trainers.rl_common import (
    RL_TRAINERS,
    RLConfig,
    RLRun,
    finish_rl,
    global_kl_metrics,
    outcome_token_rewards,
    replay_share,
    rollout,
    score,
    set_replay_keys,
    start_rl_run,
    update,
)
from vlalign.trainers.rollout_buffer import (
    OffPolicyConfig,
    attach_buffer,
    remember,
    replay_weights,
    with_replay,
)
from vlalign.trainers.segment_rewards import KeepOutput, segment_token_rewards
from vlalign.trainers.step import LossFn, Share


class PPOConfig(RLConfig):
    """Actor-critic PPO. ``kl_coef`` is the initial β of the KL controller."""

    critic: Literal["shared", "separate"] = Field(
        "shared", description="shared = value head on the policy's hidden states; separate = own backbone copy"
    )
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount per token")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ (1 = Monte-Carlo returns, 0 = one-step TD)")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss in the total loss")
    critic_learning_rate: float | None = Field(
        None, gt=0, description="learning rate of the critic's own parameters (null = learning_rate); with "
        "Adam, vf_coef cannot slow a separate critic down (Adam is scale-invariant), this can"
    )
    value_clip_eps: float | None = Field(0.2, gt=0, description="clip V − V_old to ±ε; null = no value clipping")
    kl_in_reward: bool = Field(True, description="true = −β·KL per token in the reward; false = β·KL loss term")
    kl_estimator: str = Field("k1", description="KL estimator (k1 is the usual per-token reward penalty)")
    kl_controller: str = Field("fixed", description="name in KL_CONTROLLERS: fixed or adaptive (Ziegler et al.)")
    kl_target: float = Field(6.0, gt=0, description="adaptive: target KL per response (nats)")
    kl_horizon: int = Field(10000, ge=1, description="adaptive: horizon in responses")
    whiten_rewards: bool = Field(False, description="divide the rollout's scores by their std (mean kept)")
    reward_granularity: Literal["sequence", "segment"] = Field(
        "sequence", description="sequence = the score on the last response token; segment = each span the "
        "source judged (e.g. every Shapes mention) gets its share of the score on the token where it ends, "
        "the rest on the last token (same total per answer, finer credit; vlalign.trainers.segment_rewards)",
    )
    whiten_advantages: bool = Field(True, description="whiten advantages over the rollout's response tokens")
    offpolicy: OffPolicyConfig = Field(
        default_factory=OffPolicyConfig, description="replay of past rollouts with truncated importance weights "
        "(vlalign.trainers.rollout_buffer); capacity 0 = off",
    )


# name -> factory(cfg) -> controller with .value and .update(kl, n_steps)
KL_CONTROLLERS: Registry[Callable[[PPOConfig], Any]] = Registry("KL controller")
KL_CONTROLLERS.register("fixed")(lambda cfg: FixedKLController(cfg.kl_coef))
KL_CONTROLLERS.register("adaptive")(lambda cfg: AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon))


# ---------------------------------------------------------------------------------------------- critics


def zero_init(head: nn.Module) -> nn.Module:
    """Start the critic at V = 0: a random head gives values of order 1 per token, noise that would
    swamp the first advantages (rewards are often ~0.1); at 0 the first advantages are the returns."""
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
    return head


class SharedValueHead(nn.Module):
    """Value head on the policy's hidden states (no backbone of its own)."""

    needs_policy_hidden = True

    def __init__(self, policy: Any) -> None:
        super().__init__()
        from vlalign.models.heads import ScalarHead, hidden_size_of

        self.head = zero_init(ScalarHead(hidden_size_of(policy)))

    def forward(self, inputs: dict[str, Any], hidden: torch.Tensor | None) -> torch.Tensor:
        if hidden is None:
            raise ValueError("the shared value head needs the policy's hidden states (B, T, H)")
        return self.head(hidden)  # (B, T)


class SeparateCritic(nn.Module):
    """Its own copy of the policy's backbone (taken at setup, before training) + a value head."""

    needs_policy_hidden = False

    def __init__(self, policy: Any) -> None:
        super().__init__()
        from vlalign.models.heads import ScalarHeadModel

        self.model = ScalarHeadModel(copy.deepcopy(policy))
        zero_init(self.model.head)

    def forward(self, inputs: dict[str, Any], hidden: torch.Tensor | None) -> torch.Tensor:
        return self.model.values(inputs)  # (B, T)


CRITICS: Registry[Callable[[Any], nn.Module]] = Registry("critic")
CRITICS.register("shared")(SharedValueHead)
CRITICS.register("separate")(SeparateCritic)


def token_values(position_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Value of each response token's state: token t is chosen from the state read at position t−1
    (the same shift as its log-prob), so V(s_t) = v[t−1]. (B, T) -> (B, T), 0 off the response."""
    first = position_values.new_zeros(position_values.shape[0], 1)  # (B, 1)
    shifted = torch.cat([first, position_values[:, :-1]], dim=1)  # (B, T)
    return zero_masked(shifted, mask)


@torch.no_grad()
def rollout_values(run: RLRun, exp: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """V(s_t) (N, T) of every critic in ``names`` on the rollout (no grad; one policy forward at most)."""
    from vlalign.models.logprobs import last_hidden_states

    policy = run.policy
    device = next(policy.parameters()).device
    inputs = {k: v.to(device) for k, v in exp.model_inputs().items()}
    mask = exp.response_mask.to(device)
    critics = [run.acc.unwrap_model(run.modules[n]) for n in names]
    was_training = policy.training
    policy.eval()
    try:
        hidden = last_hidden_states(policy, inputs) if any(c.needs_policy_hidden for c in critics) else None
        return {n: token_values(c(inputs, hidden).float(), mask).cpu() for n, c in zip(names, critics, strict=True)}
    finally:
        policy.train(was_training)


# ------------------------------------------------------------------------------ plain functions


def critics(cfg: PPOConfig, names: list[str]) -> Any:
    """``modules(policy)`` for :func:`start_rl_run`: one critic of kind ``cfg.critic`` per name."""
    return lambda policy: {name: CRITICS.get(cfg.critic)(policy) for name in names}


def critic_learning_rate(cfg: PPOConfig) -> Any:
    """``adjust_optimizer`` for :func:`start_rl_run`: the critics' parameters in their own group at
    ``critic_learning_rate`` (None: leave the optimizer as it is)."""
    if cfg.critic_learning_rate is None:
        return None

    def adjust(optimizer: torch.optim.Optimizer, modules: dict[str, nn.Module]) -> None:
        ids = {id(p) for m in modules.values() for p in m.parameters() if p.requires_grad}
        group = optimizer.param_groups[0]
        critic_params = [p for p in group["params"] if id(p) in ids]
        group["params"] = [p for p in group["params"] if id(p) not in ids]
        optimizer.add_param_group({"params": critic_params, "lr": cfg.critic_learning_rate})

    return adjust


def rollout_kl(run: RLRun, exp: Any) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Per-token KL(π_old ‖ π_ref) (N, T) of the rollout (None without a reference) and its global metrics."""
    if not run.uses_reference or exp.ref_logprobs is None:
        return None, {}
    mask = exp.response_mask
    kl = kl_estimate(exp.old_logprobs, exp.ref_logprobs, kind=run.cfg.kl_estimator, mask=mask)  # (N, T)
    return kl, {**global_kl_metrics(run, kl, mask), "kl/coef": run.extra["kl_ctl"].value}


def gae_advantages(cfg: PPOConfig, exp: Any, scores: torch.Tensor, values: torch.Tensor,
                   kl_penalty: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (N,) on the last token — or token rewards (N, T) as they are — + ``kl_penalty`` (N, T) per
    token, GAE → (advantages, returns)."""
    token_rewards = scores if scores.dim() == 2 else outcome_token_rewards(scores, exp.response_mask)  # (N, T)
    if kl_penalty is not None:
        token_rewards = token_rewards + kl_penalty
    out = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards, exp.response_mask, values=values, gamma=cfg.gamma, lam=cfg.lam)
    return out.advantages, out.returns


def scaled_scores(run: RLRun, raw: torch.Tensor) -> torch.Tensor:
    """``whiten_rewards``: the rollout's scores divided by their std over every process (mean kept)."""
    if not run.cfg.whiten_rewards:
        return raw
    ones = torch.ones_like(raw)
    return masked_whiten(raw, ones, shift_mean=False, stats=global_masked_stats(run.dist, raw, ones))  # (N,)


def reward_tokens(run: RLRun, exp: Any) -> torch.Tensor:
    """The rollout's rewards as the GAE input: (N,) scores (``sequence``: GAE puts each on the last
    token) or (N, T) token rewards from the source's judged spans (``segment``), after ``whiten_rewards``."""
    scores = scaled_scores(run, exp.rewards)  # (N,)
    if run.cfg.reward_granularity == "sequence":
        return scores
    scale = 1.0
    if run.cfg.whiten_rewards:  # the spans are parts of the raw score: scale them like it
        scale = float(torch.rsqrt(torch.tensor(global_masked_stats(run.dist, exp.rewards, torch.ones_like(scores))[1]) + 1e-8))
    tok = getattr(run.processor, "tokenizer", run.processor)
    return segment_token_rewards(tok, exp, scores, run.reward.last, scale, run.cfg.reward.name)  # (N, T)


def final_advantages(run: RLRun, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Whiten over every process's response tokens (``whiten_advantages``), else just mask."""
    if not run.cfg.whiten_advantages:
        return zero_masked(adv, mask)
    return masked_whiten(adv, mask, stats=global_masked_stats(run.dist, adv, mask))


def value_metrics(run: RLRun, prefix: str, values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> dict:
    """Mean value and explained variance 1 − Var(R − V)/Var(R) over every process (1 = perfect, ≤ 0 = useless)."""
    mean_v, _ = global_masked_stats(run.dist, values, mask)
    _, var_r = global_masked_stats(run.dist, returns, mask)
    _, var_e = global_masked_stats(run.dist, returns - values, mask)
    return {f"{prefix}/mean": mean_v, f"{prefix}/explained_var": 1 - var_e / var_r if var_r > 0 else 0.0}


def update_kl_controller(run: RLRun, kl: torch.Tensor | None, exp: Any) -> None:
    """After the advantages (which used the current β): move β toward the target KL per response."""
    if kl is not None:
        seq = masked_sum(kl, exp.response_mask, dim=-1)  # (N,)
        totals = run.dist.sum_dict({"kl": float(seq.sum()), "rows": float(seq.numel())})
        run.extra["kl_ctl"].update(totals["kl"] / max(totals["rows"], 1.0), int(totals["rows"]))


def stored_values(mb: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(old values, returns) (N, T) of critic ``name`` in a minibatch."""
    if name == "value":
        return mb.values, mb.returns
    return mb.extras[f"{name}/values"], mb.extras[f"{name}/returns"]


def ppo_loss(run: RLRun, names: list[str]) -> LossFn:
    """Clipped policy loss + ``vf_coef`` × each critic's clipped value loss, as the micro-batch's share."""
    cfg = run.cfg
    agg = PG_LOSS_AGGREGATIONS.get(cfg.loss_aggregation)

    def loss_fn(mb: Any, totals: dict[str, float]) -> Share:
        from vlalign.models.logprobs import response_logprobs

        mods = {n: run.modules[n] for n in names}
        need_hidden = any(run.acc.unwrap_model(c).needs_policy_hidden for c in mods.values())
        mask = mb.response_mask
        out = response_logprobs(run.model, mb.model_inputs(), mask.bool(), return_entropy=True,
                                temperature=cfg.rollout.temperature, return_hidden=need_hidden)
        logps, entropy, hidden = out[0], out[2], (out[3] if need_hidden else None)
        old = mb.old_logprobs if mb.old_logprobs is not None else logps.detach()
        kl_loss = not cfg.kl_in_reward and run.uses_reference and mb.ref_logprobs is not None
        pg = ppo_policy_loss(
            logps, old, mb.advantages, mask, clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
            clip_c=cfg.dual_clip_c, aggregation=cfg.loss_aggregation, norm_constant=float(cfg.rollout.max_new_tokens),
            ref_logprobs=mb.ref_logprobs if kl_loss else None, kl_coef=run.extra["kl_ctl"].value if kl_loss else 0.0,
            kl_kind=cfg.kl_estimator, denominator=totals[agg.unit],
            token_weights=replay_weights(mb, logps, cfg.offpolicy.rho_bar),
        )
        tokens = max(totals["tokens"], 1.0)
        metrics = {"policy/loss": float(pg.loss.detach()), "policy/clip_fraction": float(pg.clipped_tokens) / tokens,
                   "policy/approx_kl": float(pg.approx_kl_sum) / tokens,
                   "policy/entropy": float((entropy.detach() * mask).sum()) / tokens}
        if kl_loss:
            metrics["kl/loss_term"] = float(pg.kl_sum) / tokens
        total = pg.loss
        inputs = mb.model_inputs()
        for name, critic in mods.items():
            values = token_values(critic(inputs, hidden).float(), mask)  # (N, T)
            old_values, returns = stored_values(mb, name)
            v_loss = ppo_value_loss(values, old_values, returns, mask, clip_eps=cfg.value_clip_eps,
                                    denominator=totals["tokens"])
            metrics[f"{name}/loss"] = float(v_loss.detach())
            total = total + cfg.vf_coef * v_loss
        if run.replay is not None:
            extra, replay_metrics = replay_share(run, mb, totals)
            total = total + extra
            metrics.update(replay_metrics)
        return Share(total, metrics)

    return loss_fn


def kl_controller(run: RLRun) -> Any:
    """The run's KL controller (β), restored from the checkpoint when resuming."""
    ctl = KL_CONTROLLERS.get(run.cfg.kl_controller)(run.cfg)
    saved = run.state.get("algorithm", {})
    if "kl_coef" in saved:
        ctl.value = float(saved["kl_coef"])
    run.extra["kl_ctl"] = ctl
    return ctl


def needs_old_logprobs(cfg: PPOConfig) -> bool:
    """π_old is needed with several updates per rollout, for the KL penalty / controller, and as the
    behaviour log-probs a rollout buffer stores."""
    return cfg.ppo_epochs > 1 or cfg.num_minibatches > 1 or cfg.kl_coef > 0 or cfg.offpolicy.enabled


# ------------------------------------------------------------------------------------------- the loop


def train_ppo(cfg: PPOConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Actor-critic PPO as configured; returns the run summary (``value.pt`` holds the critic)."""
    names = ["value"]
    run = start_rl_run(cfg, critics(cfg, names), critic_learning_rate(cfg), stop_after, attach_buffer(cfg))
    run.reward = KeepOutput(run.reward)  # its judged spans feed reward_granularity: segment
    ctl = kl_controller(run)
    run.save_state = lambda: {"algorithm": {"kl_coef": ctl.value}}
    loss_fn = ppo_loss(run, names)
    try:
        for step in run.steps():
            exp = rollout(run, step)                                     # K samples of this process's prompts
            metrics = score(run, exp, need_old=needs_old_logprobs(cfg))  # log-probs, rewards, response stats
            kl, kl_metrics = rollout_kl(run, exp)                        # KL(π_old ‖ π_ref) per token
            metrics.update(kl_metrics)
            penalty = -ctl.value * kl if (kl is not None and cfg.kl_in_reward) else None
            values = rollout_values(run, exp, names)["value"]            # V(s_t) of the critic
            adv, returns = gae_advantages(cfg, exp, reward_tokens(run, exp), values, penalty)
            exp.values, exp.returns = values, returns
            exp.advantages = final_advantages(run, adv, exp.response_mask)
            metrics.update(value_metrics(run, "value", values, returns, exp.response_mask))
            update_kl_controller(run, kl, exp)                           # β toward the target KL (adaptive)
            set_replay_keys(run, exp, step)
            batch, replay_metrics = with_replay(run, exp, step)          # + past groups (offpolicy)
            update_metrics, finite = update(run, batch, loss_fn, step)   # epochs × minibatches of steps
            metrics.update(update_metrics, **replay_metrics)
            remember(run, exp)
            if run.end_step(step, metrics, finite):
                break
    except BaseException:
        run.close()
        raise
    return finish_rl(run)


RL_TRAINERS.register("ppo")(train_ppo)
