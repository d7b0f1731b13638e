"""The RL loop shared by GRPO, RLOO, PPO and Safe-PPO: rollout → score → advantages → update.

WHY one loop: the four algorithms differ only in how an :class:`Experience` becomes advantages and
how a minibatch becomes a loss. Each is an :class:`RLAlgorithm` registered by name in
:data:`RL_ALGORITHMS`; everything else — accelerate, LoRA, reference log-probs, reward sources,
checkpoints with exact resume (model, optimizer, scheduler, RNG states incl. the sampling RNG,
algorithm state such as the KL coefficient or λ), the NaN guard, metrics JSONL/TensorBoard, progress
bar, and the failure-mode monitors — lives here once. The formulas come from
:mod:`vlalign.objectives`; nothing here re-implements one.

One optimizer step per (minibatch × PPO epoch); ``max_steps`` counts rollouts (RL iterations).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from vlalign.config import save_config
from vlalign.monitors import MonitorSet, MonitorSpec
from vlalign.registry import Registry
from vlalign.rewards.composite import RewardSourceConfig
from vlalign.rollout.config import RolloutConfig
from vlalign.trainers.configs import ReplayConfig, TrainConfig
from vlalign.trainers.replay import build_replay, replay_nll


class RLConfig(TrainConfig):
    """Shared by every RL trainer. ``per_device_batch_size`` = prompts per rollout (each sampled
    ``rollout.num_samples`` times); ``max_steps`` = rollouts."""

    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardSourceConfig = Field(..., description="reward source, e.g. {name: shapes_rules, kwargs: {...}}")
    gold: RewardSourceConfig | None = Field(
        None, description="held-out verifier scored on the same rollouts (logged as gold/*; reward-hacking monitor)"
    )
    monitors: list[MonitorSpec] = Field(default_factory=list)
    reference: Literal["auto", "adapter", "copy", "none"] = Field(
        "auto", description="auto = adapter for LoRA, else a frozen copy; none = no KL (kl_coef must be 0)"
    )
    kl_coef: float = Field(0.04, ge=0, description="β of the KL to the reference")
    kl_estimator: str = Field("k3", description="name in objectives KL_ESTIMATORS (k1, k2, k3)")
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout")
    num_minibatches: int = Field(1, ge=1, description="optimizer steps per pass over a rollout")
    clip_eps: float = Field(0.2, gt=0)
    clip_eps_high: float | None = Field(None, description="DAPO clip-higher: upper ε (default = clip_eps)")
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


# ------------------------------------------------------------------------------------------ algorithm


@dataclass
class RLState:
    """What the loop hands an algorithm: the models and the algorithm's own modules/state."""

    policy: Any
    reference: Any | None
    cfg: RLConfig
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)  # trained with the policy (value heads)
    extra: dict[str, Any] = field(default_factory=dict)  # KL controller, Lagrange multiplier, sources ...
    forward: str = "batched"  # log-prob forward the loop resolved from cfg.forward (rollout.forward.resolve_forward)
    replay: Any = None  # vlalign.trainers.replay.Replay when cfg.replay.train is set (PPO-ptx)


class RLAlgorithm:
    """Override ``setup`` (extra modules/state), ``prepare`` (advantages) and ``loss``."""

    name = "base"
    uses_values = False

    def setup(self, state: RLState) -> None:
        return None

    def needs_old_logprobs(self, cfg: RLConfig) -> bool:
        """With one update per rollout π_old = π, so the detached current log-probs are exact."""
        return cfg.ppo_epochs > 1 or cfg.num_minibatches > 1

    def adjust_optimizer(self, optimizer: torch.optim.Optimizer, state: RLState) -> None:
        """Hook, before the schedule is built: e.g. give the critic its own learning rate."""
        return

    def prepare(self, exp: Any, state: RLState) -> tuple[Any, dict[str, float]]:
        raise NotImplementedError

    def loss(self, mb: Any, state: RLState) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def state_dict(self, state: RLState) -> dict[str, Any]:
        """JSON-able algorithm state for checkpoints (e.g. the adaptive KL coefficient)."""
        return {}

    def load_state_dict(self, state: RLState, saved: dict[str, Any]) -> None:
        return None


RL_ALGORITHMS: Registry[Callable[[], RLAlgorithm]] = Registry("RL algorithm")


# ---------------------------------------------------------------------------------------------- helpers


def outcome_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scalar score per response → (N, T) token rewards with the score on the last response token."""
    from vlalign.models.heads import last_token_index

    out = torch.zeros_like(mask, dtype=torch.float32)  # (N, T)
    has = mask.bool().any(dim=1)  # (N,) empty responses get no reward token
    if has.any():
        idx = last_token_index(mask[has].bool())  # (n,)
        out[has.nonzero().squeeze(1), idx] = scores[has].float()
    return out


def minibatch_rows(n: int, num_minibatches: int, seed: int, step: int, epoch: int) -> list[list[int]]:
    """Row order of one PPO epoch: a permutation that is a pure function of (seed, step, epoch), so a
    resumed run visits the same minibatches as an uninterrupted one."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    size = math.ceil(n / num_minibatches)
    return [perm[i : i + size] for i in range(0, n, size)]


def current_logprobs(policy: Any, mb: Any, temperature: float, with_entropy: bool = True, *,
                     forward: str = "batched", group_size: int = 1) -> tuple[torch.Tensor, ...]:
    """(logps (N, T), entropy (N, T) or None) of the minibatch's responses under the current policy
    (with grad); ``forward``/``group_size`` as in :func:`vlalign.rollout.forward.experience_logprobs`."""
    from vlalign.rollout.forward import experience_logprobs

    device = mb.input_ids.device
    out = experience_logprobs(policy, mb, forward=forward, group_size=group_size, temperature=temperature,
                              return_entropy=with_entropy)
    return out[0].to(device), (out[2] if with_entropy else None)


def load_prompt_records(cfg: RLConfig) -> tuple[list[Any], str]:
    """Prompt records of ``data.train`` (any supported format) and the folder images resolve against."""
    from vlalign.data.collate import default_base_dir
    from vlalign.data.validate import load_records

    result = load_records(cfg.data.train, cfg.data.format, cfg.data.on_bad_rows)
    records = result.records[: cfg.data.limit] if cfg.data.limit else result.records
    if not records:
        raise ValueError(f"{cfg.data.train}: no usable prompt rows; RL needs records with images + prompt")
    return records, default_base_dir(cfg.data.train)


# --------------------------------------------------------------------------------------------- the loop


class _Interrupt(RuntimeError):
    """Raised by tests (``stop_after``) to simulate a kill right after a checkpoint."""


def run_rl(cfg: RLConfig, algorithm: str, stop_after: int | None = None) -> dict[str, Any]:
    """Train with ``algorithm`` (a name in :data:`RL_ALGORITHMS`); returns a summary dict.

    ``stop_after`` (tests only) ends the process-equivalent abruptly after that many rollouts, as a
    kill would, so resume can be compared with an uninterrupted run.
    """
    from vlalign.data.collate import CollateConfig
    from vlalign.models.load import load_model
    from vlalign.rewards import build_source
    from vlalign.rollout.collect import response_stats, sample_experience, score_experience, score_with
    from vlalign.trainers import checkpoint as ckpt
    from vlalign.trainers.common import build_optimizer, build_scheduler, memory_metrics, setup_accelerator
    from vlalign.trainers.logging import RunLogger

    algo = RL_ALGORITHMS.get(algorithm)()
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    acc = setup_accelerator(cfg)
    loaded = load_model(cfg.model)
    policy, processor = loaded.model, loaded.processor
    lora = cfg.model.lora.enabled
    ref_mode = cfg.reference if cfg.reference != "auto" else ("adapter" if lora else "copy")
    if ref_mode == "none" and cfg.kl_coef > 0:
        raise ValueError("reference: none needs kl_coef: 0 (there is nothing to measure the KL against)")
    if ref_mode == "adapter" and not lora:
        raise ValueError("reference: adapter needs model.lora.enabled: true; use reference: copy for full fine-tuning")
    reference = None
    if ref_mode == "copy":
        reference = copy.deepcopy(policy).eval().requires_grad_(False).to(acc.device)
    state = RLState(policy=policy, reference=reference, cfg=cfg)
    state.extra["reward"] = build_source(cfg.reward)
    state.extra["gold"] = build_source(cfg.gold) if cfg.gold else None
    algo.setup(state)

    records, base_dir = load_prompt_records(cfg)
    collate_cfg = CollateConfig(max_length=cfg.data.max_length, max_pixels=cfg.model.max_pixels, base_dir=base_dir)
    state.replay = build_replay(cfg, processor, CollateConfig(cfg.data.max_length, cfg.model.max_pixels))
    total = cfg.max_steps or max(1, int(cfg.num_epochs * len(records) // cfg.per_device_batch_size))
    updates_per_rollout = cfg.ppo_epochs * cfg.num_minibatches
    trainable = torch.nn.ModuleDict({"policy": policy, **state.modules})
    optimizer = build_optimizer(trainable, cfg)
    algo.adjust_optimizer(optimizer, state)
    scheduler = build_scheduler(optimizer, cfg, total * updates_per_rollout)
    policy, optimizer = acc.prepare(policy, optimizer)
    state.policy = policy
    for name, module in state.modules.items():
        state.modules[name] = module.to(acc.device)
    acc.register_for_checkpointing(scheduler)
    for module in state.modules.values():
        acc.register_for_checkpointing(module)

    start, skipped = 0, 0
    ckpt.remove_partial(out_dir)
    latest = ckpt.latest_checkpoint(out_dir) if cfg.resume else None
    if latest is not None:
        saved = ckpt.load_checkpoint(acc, latest)
        start, skipped = int(saved["step"]), int(saved.get("skipped_steps", 0))
        algo.load_state_dict(state, saved.get("algorithm", {}))
    log = RunLogger(acc, out_dir, total, start, cfg.progress, cfg)
    if latest is not None:
        log.info(f"resumed from {latest} at rollout {start}")
    if state.replay is not None:
        log.info(f"replay: {len(state.replay.perm)} rows from {cfg.replay.train}, weight {cfg.replay.weight}")
    monitors = MonitorSet(cfg.monitors)
    consecutive, stop_reason = 0, None
    last_good: Path | None = latest

    def save(step_done: int) -> Path:
        payload = {"skipped_steps": skipped, "algorithm": algo.state_dict(state)}
        return ckpt.save_checkpoint(acc, out_dir, step_done, payload, cfg.save_total_limit)

    unwrapped = acc.unwrap_model(policy)
    from vlalign.rollout.forward import resolve_forward

    forward, why = resolve_forward(cfg.forward, unwrapped, cfg.rollout.num_samples)
    state.forward = forward
    log.info(f"log-prob forward: {forward}" + (f" (shared_prefix not used: {why})" if why and cfg.forward != "batched"
                                              else ""))
    try:
        for step in range(start, total):
            from vlalign.trainers.common import global_batch_indices

            rows = global_batch_indices(step, len(records), cfg.per_device_batch_size, cfg.seed)
            exp = sample_experience(unwrapped, processor, [records[i] for i in rows], cfg.rollout, collate_cfg)
            metrics = score_experience(
                exp,
                unwrapped,
                reference,
                need_old_logprobs=algo.needs_old_logprobs(cfg),
                need_reference=ref_mode != "none" and cfg.kl_coef > 0,
                temperature=cfg.rollout.temperature,
                forward=forward,
                group_size=cfg.rollout.num_samples,
            )
            exp.rewards, reward_metrics = score_with(state.extra["reward"], exp, "reward")
            metrics.update(reward_metrics)
            if state.extra["gold"] is not None:
                metrics.update(score_with(state.extra["gold"], exp, "gold")[1])
            metrics.update(response_stats(exp, cfg.rollout.max_new_tokens))
            exp, algo_metrics = algo.prepare(exp, state)
            metrics.update(algo_metrics)

            update_metrics, finite = _update(acc, algo, state, exp, optimizer, scheduler, step)
            metrics.update(update_metrics)
            if not finite:
                consecutive, skipped = consecutive + 1, skipped + 1
                log.warning(f"rollout {step + 1}: non-finite loss or gradient; update skipped")
                if consecutive >= cfg.max_consecutive_nonfinite:
                    raise RuntimeError(
                        f"{consecutive} consecutive rollouts had a non-finite loss; lower learning_rate or kl_coef"
                    )
            else:
                consecutive = 0
            alerts = monitors.update(step + 1, metrics)
            metrics.update(MonitorSet.as_metrics(alerts))
            if (step + 1) % cfg.logging_steps == 0 or step + 1 == total or alerts:
                # process CPU seconds so far (all threads): unlike wall time, barely moved by other jobs
                # sharing the cores, so benchmarks on a loaded machine can compare work done
                log.step(step + 1, {**metrics, **memory_metrics(), "skipped_steps": skipped,
                                    "time/process_cpu_s": time.process_time()})
            for alert in alerts:
                log.event(step + 1, {"event": "monitor", **alert.to_dict()})
            decision = MonitorSet.decision(alerts)
            if decision in ("stop", "rollback"):
                stop_reason = f"{decision} by monitor(s) {', '.join(a.monitor for a in alerts)} at rollout {step + 1}"
                if decision == "rollback" and last_good is not None:
                    ckpt.load_checkpoint(acc, last_good)
                    stop_reason += f"; weights restored from {last_good}"
                log.warning(stop_reason)
                break
            if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < total and finite:
                last_good = save(step + 1)
            if stop_after is not None and step + 1 >= start + stop_after:
                raise _Interrupt(f"stopped after {stop_after} rollouts (simulated kill)")
    finally:
        log.close()
    written = ckpt.save_final(acc, policy, processor, out_dir, merge_lora=cfg.save_merged)
    for name, module in state.modules.items():
        if acc.is_main_process:
            torch.save(module.state_dict(), out_dir / f"{name}.pt")
    return {"steps": total if stop_reason is None else None, "stop_reason": stop_reason, "written": written,
            "alerts": [a.to_dict() for a in monitors.alerts], "skipped_steps": skipped}


def replay_loss(state: RLState, keys: list[int], device: Any) -> torch.Tensor:
    """Mean token-mean NLL of the replay rows of ``keys`` (rollout × rows + row: a fixed function of
    where the update is, so a resumed run replays the same rows)."""
    nll, count = replay_nll(state.policy, state.replay.batch(keys).to(device))  # (B,), (B,)
    return (nll / count.clamp(min=1)).mean()


def _update(acc: Any, algo: RLAlgorithm, state: RLState, exp: Any, optimizer: Any, scheduler: Any,
            step: int) -> tuple[dict[str, float], bool]:
    """PPO epochs × minibatches of optimizer steps on one rollout; returns averaged metrics and
    whether every step was finite (a non-finite step is skipped, never applied)."""
    cfg = state.cfg
    sums: dict[str, float] = {}
    count, all_finite = 0, True
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state.policy.train()
    for epoch in range(cfg.ppo_epochs):
        for rows in minibatch_rows(exp.num_rows, cfg.num_minibatches, cfg.seed, step, epoch):
            if not rows:
                continue
            mb = exp.select(rows).to(acc.device)
            loss, m = algo.loss(mb, state)
            if state.replay is not None:
                replay = replay_loss(state, [step * exp.num_rows + r for r in rows], acc.device)
                loss = loss + state.replay.weight * replay
                m["replay_nll"] = float(replay.detach())
            finite = bool(torch.isfinite(loss))
            if finite:
                acc.backward(loss)
                max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                finite = math.isfinite(grad_norm)
                m["grad_norm"] = grad_norm
            if finite:
                optimizer.step()
            all_finite = all_finite and finite
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            m["loss"] = float(loss.detach())
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
    out = {k: v / max(count, 1) for k, v in sums.items()}
    out["lr"] = scheduler.get_last_lr()[0]
    return out, all_finite
