"""Critic-free policy gradient: GRPO, Dr. GRPO and RLOO as ONE trainer, the estimator picked by name.

``advantage_estimator`` names an entry of :data:`vlalign.objectives.ADVANTAGE_ESTIMATORS` (verl's
``algorithm.adv_estimator``):

- ``grpo``    (r − mean_group) / std — ``scale_rewards: group`` (Shao et al. 2024), ``batch`` (one std over
              the whole batch, TRL's ``scale_rewards="batch"``) or ``none`` (Dr. GRPO, Liu et al. 2025);
- ``dr_grpo`` r − mean_group;
- ``rloo``    r − mean of the OTHER samples of the group (Ahmadian et al. 2024); ``normalize_advantages``
              whitens them over the batch (TRL's RLOO option).

Groups are the K samples of each prompt, or — ``group_by: <meta key>`` — every sample of every prompt
row whose record meta holds the same value (non-consecutive, any size, across processes); a group
of one sample gets 0 (``singleton_groups: zero``) or its raw reward (``raw``, verl's choice). The KL
to the reference is a loss term (GRPO) or a per-token penalty on the reward (``kl_in_reward``, RLOO).
Advantages are computed from every process's rewards (gathered: a handful of floats), so batch
statistics and groups spanning processes are exact. ``vlalign grpo`` / ``vlalign rloo`` and
:func:`train_grpo` / :func:`train_rloo` are presets of this trainer (:mod:`.grpo`, :mod:`.rloo`).

Per rollout: rollout → score → advantages → update, written out in :func:`train_pg`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from vlalign.objectives import (
    ADVANTAGE_ESTIMATORS,
    PG_LOSS_AGGREGATIONS,
    constant_group_rows,
    kl_estimate,
    masked_sum,
    ppo_policy_loss,
    whiten_batch_advantages,
    zero_masked,
)
from vlalign.trainers.rl_common import (
    RL_TRAINERS,
    RLConfig,
    RLRun,
    current_logprobs,
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
from vlalign.trainers.step import LossFn, Share

CRITIC_FREE = ("grpo", "dr_grpo", "rloo")


class PGConfig(RLConfig):
    """Critic-free policy gradient (GRPO / Dr. GRPO / RLOO) with the shared RL settings."""

    advantage_estimator: str = Field("grpo", description="grpo | dr_grpo | rloo (objectives ADVANTAGE_ESTIMATORS)")
    scale_rewards: bool | Literal["group", "batch", "none"] | None = Field(
        None, description="grpo: divide by the group's reward std (group / true), the batch's (batch) or not at "
        "all (none / false = Dr. GRPO); None = the estimator's default (grpo: group)",
    )
    normalize_advantages: bool = Field(
        False, description="whiten the per-sample advantages over the whole batch (mean 0, std 1): their size no "
        "longer depends on the reward's spread (TRL's RLOO normalize_advantages)",
    )
    group_by: str = Field(
        "prompt", description="prompt = the K samples of each prompt row form a group; any other name = a key "
        "of the records' meta: samples of every prompt row with the same value form one group",
    )
    singleton_groups: Literal["zero", "raw"] = Field(
        "zero", description="a group of one sample: zero = advantage 0 (no baseline, no signal); raw = its "
        "reward (verl: baseline 0, std 1)",
    )
    kl_in_reward: bool = Field(False, description="true = −β·KL per token on the reward (RLOO); false = β·KL loss term (GRPO)")
    drop_zero_variance_groups: bool = Field(False, description="skip groups whose rewards are all equal (DAPO)")
    offpolicy: OffPolicyConfig = Field(
        default_factory=OffPolicyConfig, description="replay of past rollouts with truncated importance weights "
        "(vlalign.trainers.rollout_buffer); capacity 0 = off",
    )

    @model_validator(mode="after")
    def _estimator(self) -> PGConfig:
        if self.advantage_estimator not in CRITIC_FREE:
            raise ValueError(f"advantage_estimator must be one of {', '.join(CRITIC_FREE)} (critic-free); got "
                             f"{self.advantage_estimator!r}" + ("; GAE needs a critic: use vlalign ppo"
                                                                if self.advantage_estimator == "gae" else ""))
        scale = self.scale_rewards
        if scale is not None and self.advantage_estimator != "grpo" and scale not in (False, "none"):
            raise ValueError(f"scale_rewards={scale!r} applies to advantage_estimator grpo, not "
                             f"{self.advantage_estimator!r}")
        if self.offpolicy.enabled and self.drop_zero_variance_groups:
            raise ValueError("offpolicy replay stores whole prompt groups; it cannot be combined with "
                             "drop_zero_variance_groups: true (set one of them off)")
        if self.group_by == "prompt" and self.rollout.num_samples < 2 and self.singleton_groups == "zero":
            raise ValueError("rollout.num_samples is 1, so every group has one sample and its advantage is 0 "
                             "(nothing to learn); sample K >= 2 per prompt, or set singleton_groups: raw")
        return self

    def estimator_hparams(self) -> dict[str, Any]:
        """Keyword arguments of the registered estimator for this config."""
        hp: dict[str, Any] = {"singleton": self.singleton_groups}
        if self.advantage_estimator == "grpo":
            scale = self.scale_rewards
            hp["scale"] = "group" if scale in (None, True) else "none" if scale is False else scale
        if self.advantage_estimator == "rloo":
            hp["whiten"] = self.normalize_advantages
        return hp


# ------------------------------------------------------------------------------------- advantages


def group_ids(run: RLRun, exp: Any) -> torch.Tensor:
    """(N_global,) group id of every sample of every process (ids are positions in a shared key list)."""
    cfg = run.cfg
    if cfg.group_by == "prompt":
        keys = exp.extras["prompt_row"].tolist()
    else:
        missing = [i for i, m in enumerate(exp.metas) if cfg.group_by not in m]
        if missing:
            raise ValueError(f"group_by={cfg.group_by!r}: the prompt rows of samples {missing[:5]} have no meta "
                             f"key {cfg.group_by!r}; add it to every row or use group_by: prompt")
        keys = [repr(m[cfg.group_by]) for m in exp.metas]
    every = run.dist.gather_objects(keys)
    index = {k: i for i, k in enumerate(dict.fromkeys(every))}
    return torch.tensor([index[k] for k in every], dtype=torch.long)


def pg_advantages(run: RLRun, exp: Any) -> tuple[Any, dict[str, float]]:
    """Per-sample advantages from the whole batch's rewards (− the KL penalty when ``kl_in_reward``),
    broadcast over each response's tokens; drops constant groups when asked. Returns (exp, metrics)."""
    cfg, dist = run.cfg, run.dist
    mask = exp.response_mask
    token_rewards = outcome_token_rewards(exp.rewards, mask)  # (N, T)
    metrics: dict[str, float] = {}
    if cfg.kl_in_reward and run.uses_reference:
        kl = kl_estimate(exp.old_logprobs, exp.ref_logprobs, kind=cfg.kl_estimator, mask=mask)  # (N, T)
        token_rewards = token_rewards - cfg.kl_coef * kl
        metrics.update(global_kl_metrics(run, kl, mask))
    scores, offset = dist.gather_rows(masked_sum(token_rewards, mask, dim=-1))  # (N_global,)
    ids = group_ids(run, exp)  # (N_global,)
    est = ADVANTAGE_ESTIMATORS.get(cfg.advantage_estimator)
    adv = est(scores[:, None], torch.ones_like(scores)[:, None], group_ids=ids,
              **cfg.estimator_hparams()).advantages[:, 0]  # (N_global,)
    if cfg.normalize_advantages and cfg.advantage_estimator != "rloo":  # rloo whitens inside its estimator
        adv = whiten_batch_advantages(adv)
    n = exp.num_rows
    exp.advantages = zero_masked(adv[offset : offset + n, None].expand_as(mask), mask)  # (N, T)

    rewards, _ = dist.gather_rows(exp.rewards)
    constant = constant_group_rows(rewards, ids)  # (N_global,)
    sizes = torch.bincount(ids)
    group_std = [float(rewards[ids == g].std(unbiased=False)) for g in range(len(sizes)) if sizes[g] > 1]
    metrics.update({"reward/zero_std_frac": float(constant.float().sum() / max(1, int(sizes[sizes > 1].sum()))),
                    "reward/group_std": sum(group_std) / max(1, len(group_std)),
                    "advantage/abs_mean": float(adv.abs().mean())})
    trained = len(scores)
    if cfg.drop_zero_variance_groups:
        silent = constant | ((sizes[ids] == 1) & (cfg.singleton_groups == "zero"))  # rows with advantage 0
        trained = int((~silent).sum())
        exp = keep_rows(run, exp, ~silent[offset : offset + n], trained)
    metrics["rollout/trained_rows"] = float(trained)
    return exp, metrics


def keep_rows(run: RLRun, exp: Any, keep: torch.Tensor, kept_globally: int) -> Any:
    """This process's kept rows, padded (every process must run the same number of micro-batches) with
    copies of its own rows whose response mask is zeroed: they cost a forward and add nothing."""
    counts, _ = run.dist.gather_rows(torch.tensor([int(keep.sum())]))
    cfg = run.cfg
    target = max(int(counts.max()), cfg.num_minibatches * cfg.gradient_accumulation_steps) if kept_globally else 0
    rows = keep.nonzero().squeeze(1).tolist()
    pad = [i % exp.num_rows for i in range(target - len(rows))]
    out = exp.select(rows + pad)
    real = torch.cat([torch.ones(len(rows)), torch.zeros(len(pad))])
    out.extras["real_row"] = real
    out.response_mask = out.response_mask * real[:, None]
    if out.advantages is not None:
        out.advantages = out.advantages * real[:, None]
    return out


# -------------------------------------------------------------------------------------------- loss


def pg_loss(run: RLRun, kl_in_loss: bool) -> LossFn:
    """The clipped policy-gradient loss of a micro-batch as its share of the global batch (+ replay)."""
    cfg = run.cfg
    agg = PG_LOSS_AGGREGATIONS.get(cfg.loss_aggregation)

    def loss_fn(mb: Any, totals: dict[str, float]) -> Share:
        logps, entropy = current_logprobs(run.model, mb, cfg.rollout.temperature, forward=run.forward,
                                          group_size=run.group_size)
        old = mb.old_logprobs if mb.old_logprobs is not None else logps.detach()
        mask = mb.response_mask
        use_kl = kl_in_loss and run.uses_reference and mb.ref_logprobs is not None
        out = ppo_policy_loss(
            logps, old, mb.advantages, mask, clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
            clip_c=cfg.dual_clip_c, aggregation=cfg.loss_aggregation, norm_constant=float(cfg.rollout.max_new_tokens),
            ref_logprobs=mb.ref_logprobs if use_kl else None, kl_coef=cfg.kl_coef if use_kl else 0.0,
            kl_kind=cfg.kl_estimator, denominator=totals[agg.unit],
            token_weights=replay_weights(mb, logps, cfg.offpolicy.rho_bar),
        )
        tokens = max(totals["tokens"], 1.0)
        metrics = {"policy/clip_fraction": float(out.clipped_tokens) / tokens,
                   "policy/approx_kl": float(out.approx_kl_sum) / tokens,
                   "policy/entropy": float((entropy.detach() * mask).sum()) / tokens}
        if use_kl:
            metrics["kl/mean"] = float(out.kl_sum) / tokens
        loss = out.loss
        if run.replay is not None:
            extra, replay_metrics = replay_share(run, mb, totals)
            loss = loss + extra
            metrics.update(replay_metrics)
        return Share(loss, metrics)

    return loss_fn


# ------------------------------------------------------------------------------------------- the loop


def train_pg(cfg: PGConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Train a critic-free policy-gradient trainer as configured; returns the run summary."""
    run = start_rl_run(cfg, stop_after=stop_after, before_resume=attach_buffer(cfg))
    # with one update per rollout π_old = π, so the detached current log-probs are exact; a rollout
    # buffer stores them as the behaviour policy's
    need_old = (cfg.ppo_epochs > 1 or cfg.num_minibatches > 1 or (cfg.kl_in_reward and run.uses_reference)
                or cfg.offpolicy.enabled)
    loss_fn = pg_loss(run, kl_in_loss=not cfg.kl_in_reward)
    try:
        for step in run.steps():
            exp = rollout(run, step)                       # K samples of each of this process's prompts
            metrics = score(run, exp, need_old=need_old)   # log-probs, rewards, response stats
            exp, adv_metrics = pg_advantages(run, exp)     # group baselines over the whole batch
            metrics.update(adv_metrics)
            finite = True
            if metrics["rollout/trained_rows"] > 0:
                set_replay_keys(run, exp, step)
                batch, replay_metrics = with_replay(run, exp, step)  # + past groups (offpolicy)
                update_metrics, finite = update(run, batch, loss_fn, step)
                metrics.update(update_metrics, **replay_metrics)
            remember(run, exp)
            if run.end_step(step, metrics, finite):
                break
    except BaseException:
        run.close()
        raise
    return finish_rl(run)


for _name in CRITIC_FREE:
    RL_TRAINERS.register(_name)(lambda cfg, stop_after=None: train_pg(cfg, stop_after))
