"""Plain functions shared by the RL trainers (critic-free policy gradient, PPO, Safe-PPO).

Each trainer's file holds its own loop and reads top to bottom, as cleanrl's ``ppo.py`` does::

    run = start_rl_run(cfg)
    for step in run.steps():
        exp = rollout(run, step)                  # this process's prompts, K samples each
        metrics = score(run, exp, need_old=...)   # old / reference log-probs, rewards, response stats
        metrics |= <its advantages>(run, exp)      # group baselines, or critic values + GAE
        metrics |= update(run, exp, <its loss>, step)   # ppo_epochs × num_minibatches optimizer steps
        if run.end_step(step, metrics, finite): break
    return finish_rl(run)

On N processes each process rolls out its own slice of the step's prompts (the same seeded order as
the supervised trainers' rows) on its own RNG stream; every quantity that spans the batch — reward
statistics, group baselines, advantage whitening, the KL controller's and the Lagrange multiplier's
inputs, the token counts that normalise the losses — is reduced over processes
(:mod:`vlalign.trainers.dist`), so a run is the same run whatever the process count (exactly so with
``rollout.sampling_seed: prompt``, where each prompt's samples have their own stream).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from vlalign.registry import Registry
from vlalign.rewards.composite import RewardSourceConfig
from vlalign.rollout.collect import (
    response_stats,
    sample_experience,
    score_experience,
    score_with,
    seeded,
    stream_seed,
)
from vlalign.rollout.config import RolloutConfig
from vlalign.trainers.configs import ReplayConfig, TrainConfig
from vlalign.trainers.dist import global_masked_stats
from vlalign.trainers.run import Run, _Interrupt, build_run, collate_config, open_run, resume_run
from vlalign.trainers.step import Share

__all__ = ["RL_TRAINERS", "RLConfig", "RLRun", "_Interrupt", "finish_rl", "minibatch_rows", "outcome_token_rewards",
           "rollout", "run_rl", "score", "start_rl_run", "update"]


class RLConfig(TrainConfig):
    """Shared by every RL trainer. ``per_device_batch_size`` = prompts per rollout and process (each
    sampled ``rollout.num_samples`` times); ``max_steps`` = rollouts."""

    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardSourceConfig = Field(..., description="reward source, e.g. {name: shapes_rules, kwargs: {...}}")
    gold: RewardSourceConfig | None = Field(
        None, description="held-out verifier scored on the same rollouts (logged as gold/*; reward-hacking monitor)"
    )
    reference: Literal["auto", "adapter", "copy", "none"] = Field(
        "auto", description="auto = adapter for LoRA, else a frozen copy; none = no KL (kl_coef must be 0)"
    )
    kl_coef: float = Field(0.04, ge=0, description="β of the KL to the reference")
    kl_estimator: str = Field("k3", description="name in objectives KL_ESTIMATORS (k1, k2, k3, low_var_kl, abs)")
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout")
    num_minibatches: int = Field(1, ge=1, description="optimizer steps per pass over a rollout")
    clip_eps: float = Field(0.2, gt=0)
    clip_eps_high: float | None = Field(None, description="DAPO clip-higher: upper ε (default = clip_eps)")
    dual_clip_c: float | None = Field(
        None, gt=1, description="dual-clip PPO (Ye et al. 2020): for A < 0 the per-token loss is capped at −A·c "
        "(verl's clip_ratio_c, 3.0 there); None = off",
    )
    loss_aggregation: str = Field("seq_mean_token_mean", description="name in objectives PG_LOSS_AGGREGATIONS")
    replay: ReplayConfig = Field(
        default_factory=ReplayConfig,
        description="SFT rows trained beside each policy update (InstructGPT's PPO-ptx): one replay row per "
        "experience row, + weight × the mean of their token-mean NLLs, added to every minibatch loss",
    )
    forward: Literal["auto", "shared_prefix", "batched"] = Field(
        "auto",
        description="how the policy / old-policy / reference passes score the K samples of a prompt: "
        "shared_prefix = one packed row [prompt+image, r_1..r_K] per group (prompt and image computed once, "
        "same log-probs); batched = one row per sample; auto = shared_prefix where it is exact (llava, "
        "idefics3, qwen2_vl with sdpa/eager attention, K >= 2), else batched (the reason is logged)",
    )

    @model_validator(mode="after")
    def _rl_names(self) -> RLConfig:
        from vlalign.objectives import KL_ESTIMATORS, PG_LOSS_AGGREGATIONS
        from vlalign.trainers.configs import _check_name

        _check_name(KL_ESTIMATORS, self.kl_estimator)
        _check_name(PG_LOSS_AGGREGATIONS, self.loss_aggregation)
        rows = self.per_device_batch_size * self.rollout.num_samples
        need = self.num_minibatches * self.gradient_accumulation_steps
        if rows < need:
            raise ValueError(f"each process samples per_device_batch_size × rollout.num_samples = {rows} rows per "
                             f"rollout, fewer than num_minibatches × gradient_accumulation_steps = {need} micro-batches")
        return self


class RLRun(Run):
    """A :class:`~vlalign.trainers.run.Run` plus what the RL loop needs."""

    reference: Any = None  # frozen copy of the policy, or None (LoRA: the adapter-disabled policy; or no KL)
    uses_reference: bool = False
    policy: Any = None  # the unwrapped policy (generation and no-grad passes)
    reward: Any = None
    gold: Any = None
    forward: str = "batched"
    collate_cfg: Any = None
    replay: Any = None
    extra: dict[str, Any]

    @property
    def group_size(self) -> int:
        return self.cfg.rollout.num_samples


# ------------------------------------------------------------------------------------------ set-up


def load_prompt_records(cfg: RLConfig) -> tuple[list[Any], str | None]:
    """Prompt records of ``data.train`` (any supported format) and the folder images resolve against:
    none, because ``load_records`` already resolved relative image paths against ``data.image_root`` or
    the data file's folder (joining that folder again would look for ``runs/shapes/runs/shapes/...``)."""
    from vlalign.data.validate import load_records

    result = load_records(cfg.data)  # the whole data: section (split, subset, revision, options, report, ...)
    records = result.records[: cfg.data.limit] if cfg.data.limit else result.records
    if not records:
        raise ValueError(f"{cfg.data.train}: no usable prompt rows; RL needs records with images + prompt")
    return records, None


def start_rl_run(cfg: RLConfig, modules: Callable[[Any], dict[str, Any]] | None = None,
                 adjust_optimizer: Callable[[Any, dict[str, Any]], None] | None = None,
                 stop_after: int | None = None, before_resume: Callable[[RLRun], None] | None = None) -> RLRun:
    """Folder, accelerator, prompts, reward sources, policy (+ a frozen reference copy and the trainer's
    extra ``modules(policy)``, e.g. critics), optimizer over policy + modules, prepare,
    ``before_resume(run)`` (e.g. register more state for checkpointing), resume."""
    from vlalign.data.collate import CollateConfig
    from vlalign.models.load import load_model
    from vlalign.rewards import build_source
    from vlalign.rollout.forward import resolve_forward
    from vlalign.trainers.replay import build_replay

    run = open_run(cfg, cls=RLRun)
    try:
        run.extra = {}
        records, base_dir = load_prompt_records(cfg)
        run.reward = build_source(cfg.reward)
        run.gold = build_source(cfg.gold) if cfg.gold else None
        loaded = load_model(cfg.model)
        lora = cfg.model.lora.enabled
        ref_mode = cfg.reference if cfg.reference != "auto" else ("adapter" if lora else "copy")
        if ref_mode == "none" and cfg.kl_coef > 0:
            raise ValueError("reference: none needs kl_coef: 0 (there is nothing to measure the KL against)")
        if ref_mode == "adapter" and not lora:
            raise ValueError("reference: adapter needs model.lora.enabled: true; use reference: copy for full fine-tuning")
        run.uses_reference = ref_mode != "none" and cfg.kl_coef > 0
        if ref_mode == "copy":  # taken before any update: the policy as loaded
            run.reference = copy.deepcopy(loaded.model).eval().requires_grad_(False)
        mods = modules(loaded.model) if modules is not None else {}
        adjust = (lambda opt: adjust_optimizer(opt, mods)) if adjust_optimizer is not None else None
        build_run(run, loaded.model, loaded.processor, records, accumulation=1,
                  updates_per_step=cfg.ppo_epochs * cfg.num_minibatches, modules=mods, adjust_optimizer=adjust)
        if run.reference is not None:
            run.reference = run.reference.to(run.acc.device)
        run.policy = run.acc.unwrap_model(run.model)
        run.collate_cfg = CollateConfig(max_length=cfg.data.max_length, max_pixels=cfg.model.max_pixels,
                                        base_dir=base_dir)
        run.replay = build_replay(cfg, loaded.processor, collate_config(cfg), run.log)
        run.forward, why = resolve_forward(cfg.forward, run.policy, cfg.rollout.num_samples)
        run.log.info(f"log-prob forward: {run.forward}"
                     + (f" (shared_prefix not used: {why})" if why and cfg.forward != "batched" else ""))
        if before_resume is not None:
            before_resume(run)
        resume_run(run)
        run.stop_after = stop_after
        return run
    except BaseException:
        run.close()
        raise


# ---------------------------------------------------------------------------- rollout and scoring


def rollout(run: RLRun, step: int) -> Any:
    """Sample K responses for each of this process's prompts of rollout ``step`` → Experience.

    The samples come from a stream seeded by (seed, step, process) — or by (seed, step, prompt row)
    with ``rollout.sampling_seed: prompt`` — so a resumed run re-samples exactly what the killed one
    did, and two processes never draw the same stream."""
    cfg = run.cfg
    rows = run.source.micro_batches(step)[0]  # this process's prompt rows
    records = [run.records[i] for i in rows]
    if cfg.rollout.sampling_seed == "prompt":
        seeds = [stream_seed(cfg.seed, "rollout", step, "prompt", r) for r in rows]
        return sample_experience(run.policy, run.processor, records, cfg.rollout, run.collate_cfg, seeds, rows)
    with seeded(stream_seed(cfg.seed, "rollout", step, "process", run.dist.rank)):
        return sample_experience(run.policy, run.processor, records, cfg.rollout, run.collate_cfg, None, rows)


def gather_rows(run: RLRun) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: run.dist.gather_rows(t)[0]


def score(run: RLRun, exp: Any, need_old: bool) -> dict[str, float]:
    """Old-policy and reference log-probs (as needed), rewards (+ gold) and response statistics; every
    metric is over the whole global batch."""
    cfg = run.cfg
    score_experience(exp, run.policy, run.reference, need_old_logprobs=need_old,
                     need_reference=run.uses_reference, temperature=cfg.rollout.temperature,
                     forward=run.forward, group_size=run.group_size)
    metrics: dict[str, float] = {}
    if need_old:
        metrics["policy/entropy"] = global_masked_stats(run.dist, exp.extras["entropy"], exp.response_mask)[0]
    exp.rewards, reward_metrics = score_with(run.reward, exp, "reward", gather_rows(run))
    metrics.update(reward_metrics)
    if run.gold is not None:
        metrics.update(score_with(run.gold, exp, "gold", gather_rows(run))[1])
    metrics.update(response_stats(exp, cfg.rollout.max_new_tokens, run.dist.gather_objects))
    return metrics


def outcome_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scalar score per response → (N, T) token rewards with the score on the last response token."""
    from vlalign.models.heads import last_token_index

    out = torch.zeros_like(mask, dtype=torch.float32)  # (N, T)
    has = mask.bool().any(dim=1)  # (N,) empty responses get no reward token
    if has.any():
        idx = last_token_index(mask[has].bool())  # (n,)
        out[has.nonzero().squeeze(1), idx] = scores[has].float()
    return out


def global_kl_metrics(run: RLRun, kl: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """``kl/mean`` (per token) and ``kl/seq_mean`` (per response) of a per-token KL over every process."""
    seq = (kl * mask).sum(-1)  # (N,)
    totals = run.dist.sum_dict({"kl": float(seq.sum()), "tokens": float(mask.sum()), "rows": float(seq.numel())})
    return {"kl/mean": totals["kl"] / max(totals["tokens"], 1.0), "kl/seq_mean": totals["kl"] / max(totals["rows"], 1.0)}


# --------------------------------------------------------------------------------------- updates


def minibatch_rows(n: int, num_minibatches: int, seed: int, step: int, epoch: int, rank: int = 0) -> list[list[int]]:
    """Row order of one PPO epoch on one process: a permutation that is a pure function of (seed, step,
    epoch, process), so a resumed run visits the same minibatches as an uninterrupted one."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + epoch + rank * 7_919_993)
    perm = torch.randperm(n, generator=gen).tolist()
    size = math.ceil(n / num_minibatches)
    return [perm[i : i + size] for i in range(0, n, size)]


def split(rows: list[int], parts: int) -> list[list[int]]:
    """``rows`` in ``parts`` consecutive, near-equal, non-empty pieces."""
    size, extra = divmod(len(rows), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(rows[start:end])
        start = end
    return out


def rl_counts(mb: Any) -> dict[str, float]:
    """Loss units of a micro-batch: response tokens, sequences with a token, real (not padding) rows."""
    mask = mb.response_mask
    real = mb.extras.get("real_row")
    return {"tokens": float(mask.sum()), "seqs": float((mask.sum(-1) > 0).sum()),
            "rows": float(real.sum()) if real is not None else float(mask.shape[0])}


def update(run: RLRun, exp: Any, loss_fn: Callable[[Any, dict[str, float]], Share], step: int) -> tuple[dict, bool]:
    """``ppo_epochs`` × ``num_minibatches`` optimizer steps on this process's rows of the rollout, each
    over ``gradient_accumulation_steps`` micro-batches; returns the steps' mean metrics and whether
    every step was applied."""
    cfg = run.cfg
    sums: dict[str, float] = {}
    count, all_finite = 0, True
    run.model.train()
    for epoch in range(cfg.ppo_epochs):
        for rows in minibatch_rows(exp.num_rows, cfg.num_minibatches, cfg.seed, step, epoch, run.dist.rank):
            micro = [exp.select(part) for part in split(rows, cfg.gradient_accumulation_steps)]
            outcome = run.update(micro, loss_fn, rl_counts, where=step + 1)
            all_finite = all_finite and outcome.finite
            for k, v in outcome.metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
    out = {k: v / max(count, 1) for k, v in sums.items()}
    out["lr"] = run.scheduler.get_last_lr()[0]
    return out, all_finite


def current_logprobs(policy: Any, mb: Any, temperature: float, with_entropy: bool = True, *,
                     forward: str = "batched", group_size: int = 1) -> tuple[torch.Tensor, ...]:
    """(logps (N, T), entropy (N, T) or None) of the minibatch's responses under the current policy
    (with grad); ``forward``/``group_size`` as in :func:`vlalign.rollout.forward.experience_logprobs`."""
    from vlalign.rollout.forward import experience_logprobs

    device = mb.input_ids.device
    out = experience_logprobs(policy, mb, forward=forward, group_size=group_size, temperature=temperature,
                              return_entropy=with_entropy)
    return out[0].to(device), (out[2] if with_entropy else None)


def set_replay_keys(run: RLRun, exp: Any, step: int) -> None:
    """Key each row's replay row by (rollout, global row), the same on any process count and on resume."""
    if run.replay is None:
        return
    n = torch.tensor([exp.num_rows])
    counts, offset = run.dist.gather_rows(n)
    exp.extras["replay_key"] = step * int(counts.sum()) + offset + torch.arange(exp.num_rows)


def replay_share(run: RLRun, mb: Any, totals: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """weight × Σ (token-mean NLL of each row's replay row) / global rows (the PPO-ptx term), and its metric."""
    from vlalign.trainers.replay import replay_nll

    keys = mb.extras["replay_key"].tolist()
    nll, count = replay_nll(run.model, run.replay.batch(keys).to(mb.input_ids.device))  # (B,), (B,)
    real = mb.extras.get("real_row", torch.ones(len(keys))).to(nll.device)
    share = (nll / count.clamp(min=1) * real).sum() / max(totals["rows"], 1.0)
    return run.replay.weight * share, {"replay_nll": float(share.detach())}


# ------------------------------------------------------------------------------------------- the end


def finish_rl(run: RLRun) -> dict[str, Any]:
    """Save ``final/`` and each trained module (critics) as ``<name>.pt``; returns the summary."""
    try:
        from vlalign.trainers.checkpoint import save_final

        saved = save_final(run.acc, run.model, run.processor, run.output_dir, merge_lora=run.cfg.save_merged)
        for name, module in run.modules.items():
            if run.acc.is_main_process:
                torch.save(run.acc.unwrap_model(module).state_dict(), Path(run.output_dir) / f"{name}.pt")
        return run.summary(saved)
    finally:
        run.close()


# name -> train function (cfg, stop_after=None) -> summary; filled by the trainer modules
RL_TRAINERS: Registry[Callable[..., dict[str, Any]]] = Registry("RL trainer")
_MODULES = ("vlalign.trainers.pg", "vlalign.trainers.ppo", "vlalign.trainers.safe_ppo")


def run_rl(cfg: RLConfig, algorithm: str, stop_after: int | None = None) -> dict[str, Any]:
    """Train with the RL trainer named ``algorithm`` (grpo, dr_grpo, rloo, ppo, safe_ppo); returns its summary."""
    import importlib

    for module in _MODULES:
        importlib.import_module(module)
    return RL_TRAINERS.get(algorithm)(cfg, stop_after=stop_after)
