"""Off-policy replay of past rollouts (``offpolicy:``), for the critic-free PG trainer and PPO.

Each rollout's prompt groups (the K samples of a prompt, with their advantages, value targets,
reference log-probs and the log-probs μ of the policy that sampled them) go into a FIFO buffer of
``capacity`` groups per process; every later update mixes ``groups_per_update`` of them, drawn
uniformly without replacement, into the fresh rollout. Samples of an older policy need an importance
correction. The choice here is the decoupled PPO objective (Hilton et al. 2022, "Batch
size-invariance for policy optimization") with V-trace's truncation (Espeholt et al. 2018, "IMPALA"):

    ℓ_t = w_t · PPO-clip(π_θ / π_prox, A_t),   w_t = min(ρ̄, π_prox(y_t) / μ(y_t))   (detached)

π_prox = the policy at the start of this update (one no-grad forward over the replayed rows). WHY
this and not the plain PPO ratio π_θ/μ: with a stale μ the ratio sits far outside [1 − ε, 1 + ε]
from the first step, so clipping zeroes the gradient of most replayed tokens and the replay buys
nothing; decoupling keeps the trust region around the current policy and moves the off-policy
correction into a weight, truncated at ρ̄ so that a few large ratios cannot dominate the step (the
price is a bias towards μ, V-trace's trade-off). Fresh samples have π_prox = μ, so w = 1 and the
loss is PPO's. The stored advantages are kept as they were computed (rewards do not change; PPO's
critic-based advantages and value targets age with the critic — a bias the truncation bounds but
does not remove; keep ``capacity`` small with PPO).

Resume: the buffer is registered with accelerate's checkpointing (``custom_checkpoint_<i>.pkl`` in
every checkpoint, covered by the manifest), every process's part gathered to the main process, so a
resumed run replays exactly what the uninterrupted one would. The draw is seeded by (seed, step,
process).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import torch
from pydantic import Field

from vlalign.config import BaseConfig
from vlalign.objectives import masked_sum, truncated_importance_weights
from vlalign.rollout.experience import Experience
from vlalign.rollout.forward import experience_logprobs


class OffPolicyConfig(BaseConfig):
    """Replay of past rollouts with an importance correction (see :mod:`vlalign.trainers.rollout_buffer`)."""

    capacity: int = Field(0, ge=0, description="prompt groups kept per process (FIFO); 0 = off")
    groups_per_update: int = Field(1, ge=1, description="past prompt groups mixed into each rollout's update, "
                                   "per process (fewer while the buffer fills)")
    rho_bar: float | None = Field(1.0, gt=0, description="truncation ρ̄ of the weight π_prox/μ; null = none")

    @property
    def enabled(self) -> bool:
        return self.capacity > 0


# ------------------------------------------------------------------------------------- experiences


def _pad_tokens(t: torch.Tensor, width: int) -> torch.Tensor:
    """(N, T, ...) right-padded with zeros to (N, width, ...)."""
    if t.shape[1] == width:
        return t
    pad = torch.zeros((t.shape[0], width - t.shape[1], *t.shape[2:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=1)


def cat_experiences(parts: list[Experience]) -> Experience:
    """Rows of several experiences as one (token tensors right-padded to the longest; image tensors and
    their per-row chunk sizes concatenated; group ids renumbered so groups never merge)."""
    width = max(p.input_ids.shape[1] for p in parts)
    per_token = {"input_ids", "attention_mask", "response_mask", "old_logprobs", "ref_logprobs", "values", "advantages",
                 "returns"}
    out: dict[str, Any] = {}
    for f in fields(Experience):
        values = [getattr(p, f.name) for p in parts]
        if f.name == "image_inputs":
            out[f.name] = {k: torch.cat([v[k] for v in values]) for k in values[0]}
        elif f.name == "group_ids":
            ids, base = [], 0
            for v in values:
                ids.append(torch.unique(v, return_inverse=True)[1] + base)
                base = int(ids[-1].max()) + 1 if v.numel() else base
            out[f.name] = torch.cat(ids)
        elif f.name == "extras":
            keys = list(values[0])
            if any(set(v) != set(keys) for v in values):
                raise ValueError(f"cat_experiences: the parts carry different extras {[sorted(v) for v in values]}")
            # per-token extras (N, T_part) are padded like the token tensors; per-row ones (N,) concatenated
            out[f.name] = {k: torch.cat([_pad_tokens(v[k], width) if v[k].dim() >= 2 and v[k].shape[1] == p.input_ids.shape[1]
                                         else v[k] for v, p in zip(values, parts, strict=True)]) for k in keys}
        elif isinstance(values[0], torch.Tensor):
            if any(v is None for v in values):
                raise ValueError(f"cat_experiences: {f.name} is set on some parts only")
            out[f.name] = torch.cat([_pad_tokens(v, width) if f.name in per_token else v for v in values])
        elif isinstance(values[0], list):
            out[f.name] = [x for v in values for x in v]
        else:
            if any(v is not None for v in values):
                raise ValueError(f"cat_experiences: {f.name} is set on some parts only")
            out[f.name] = None
    return replace(parts[0], **out)


def split_groups(exp: Experience) -> list[Experience]:
    """The experience as one Experience per prompt group (rows of equal ``group_ids``, in order)."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(exp.group_ids.tolist()):
        groups.setdefault(g, []).append(i)
    return [exp.select(rows) for rows in groups.values()]


# ------------------------------------------------------------------------------------------ buffer


class RolloutBuffer:
    """FIFO of past prompt groups on this process; ``state_dict`` gathers every process's groups (call
    it on every process, as accelerate's ``save_state`` does)."""

    def __init__(self, cfg: OffPolicyConfig, dist: Any, seed: int) -> None:
        self.cfg, self.dist, self.seed = cfg, dist, seed
        self.groups: list[Experience] = []

    def __len__(self) -> int:
        return len(self.groups)

    def add(self, exp: Experience) -> None:
        """Store the fresh rollout's groups (behaviour log-probs = its ``old_logprobs``), dropping the oldest."""
        if exp.old_logprobs is None:
            raise ValueError("the rollout buffer stores the behaviour policy's log-probs: score the rollout "
                             "with need_old=True when offpolicy.capacity > 0")
        for group in split_groups(exp):
            stored = replace(group, extras={k: v for k, v in group.extras.items() if k not in ("replayed", "behaviour_logprobs")})
            self.groups.append(stored.to("cpu"))
        del self.groups[: max(0, len(self.groups) - self.cfg.capacity)]

    def sample(self, step: int) -> list[Experience]:
        """``groups_per_update`` stored groups (all of them while fewer are stored), drawn by (seed, step, process)."""
        n = min(self.cfg.groups_per_update, len(self.groups))
        if n == 0:
            return []
        gen = torch.Generator().manual_seed(self.seed * 1_000_033 + step * 7_919 + self.dist.rank * 104_729 + 11)
        picks = torch.randperm(len(self.groups), generator=gen)[:n].sort().values.tolist()
        return [self.groups[i] for i in picks]

    def state_dict(self) -> dict[str, Any]:
        return {"world": self.dist.world, "groups": self.dist.gather_objects([self.groups])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("world") != self.dist.world:
            raise ValueError(f"the checkpoint's rollout buffer was saved by {state.get('world')} processes; "
                             f"resume with the same number ({self.dist.world} now)")
        self.groups = list(state["groups"][self.dist.rank])


def mix_replay(fresh: Experience, replayed: list[Experience], prox: Any) -> Experience:
    """The fresh rollout followed by the replayed groups, flagged in ``extras["replayed"]`` (N,), with the
    behaviour log-probs μ in ``extras["behaviour_logprobs"]`` and π_prox (``prox(exp)`` → (N, T), the
    current policy, no grad) as the replayed rows' ``old_logprobs``."""
    if not replayed:
        return fresh
    past = cat_experiences(replayed)
    past = replace(past, extras={k: v for k, v in past.extras.items() if k in fresh.extras})
    missing = sorted(set(fresh.extras) - set(past.extras))
    if missing:
        raise ValueError(f"replayed groups lack {missing}: the buffer was filled under another configuration")
    behaviour = past.old_logprobs
    past.old_logprobs = prox(past).to(behaviour.dtype)
    past.extras["behaviour_logprobs"], past.extras["replayed"] = behaviour, torch.ones(past.num_rows)
    fresh = replace(fresh, extras={**fresh.extras, "behaviour_logprobs": fresh.old_logprobs.clone(),
                                   "replayed": torch.zeros(fresh.num_rows)})
    return cat_experiences([fresh, past])


def replay_weights(mb: Any, logps: torch.Tensor, rho_bar: float | None) -> torch.Tensor | None:
    """(N, T) per-token weights of a minibatch: min(ρ̄, π_prox/μ) on replayed rows, 1 on fresh ones;
    None when nothing is replayed."""
    flag = mb.extras.get("replayed")
    if flag is None:
        return None
    prox = mb.old_logprobs if mb.old_logprobs is not None else logps.detach()
    w = truncated_importance_weights(prox, mb.extras["behaviour_logprobs"].to(prox.device), mb.response_mask, rho_bar)
    return torch.where(flag.bool().to(w.device)[:, None], w, mb.response_mask.to(w.dtype))  # (N, T)


# ------------------------------------------------------------------------------ the trainers' calls


def attach_buffer(cfg: Any) -> Any:
    """``before_resume`` hook of :func:`vlalign.trainers.rl_common.start_rl_run`: with ``offpolicy.capacity``
    > 0, a buffer in ``run.extra["buffer"]``, registered for checkpointing before any checkpoint loads."""

    def attach(run: Any) -> None:
        if cfg.offpolicy.enabled:
            run.extra["buffer"] = RolloutBuffer(cfg.offpolicy, run.dist, cfg.seed)
            run.acc.register_for_checkpointing(run.extra["buffer"])

    return attach


@torch.no_grad()
def current_logprobs_of(run: Any, exp: Experience) -> torch.Tensor:
    """(N, T) log-probs of ``exp``'s responses under the policy as it is now (π_prox), no grad."""
    policy = run.policy
    was_training = policy.training
    policy.eval()
    try:
        device = next(policy.parameters()).device
        out = experience_logprobs(policy, exp.to(device), forward=run.forward, group_size=run.group_size,
                                  temperature=run.cfg.rollout.temperature)
    finally:
        policy.train(was_training)
    return out[0].cpu()


def with_replay(run: Any, exp: Experience, step: int) -> tuple[Experience, dict[str, float]]:
    """The update's rows: the fresh rollout plus the replayed groups (none without a buffer)."""
    buffer = run.extra.get("buffer")
    if buffer is None:
        return exp, {}
    replayed = buffer.sample(step)
    mixed = mix_replay(exp, replayed, lambda past: current_logprobs_of(run, past))
    metrics = {"offpolicy/buffer_groups": float(len(buffer)),
               "offpolicy/replayed_rows": float(sum(g.num_rows for g in replayed))}
    if replayed:
        flag = mixed.extras["replayed"].bool()
        w = truncated_importance_weights(mixed.old_logprobs[flag], mixed.extras["behaviour_logprobs"][flag],
                                         mixed.response_mask[flag], run.cfg.offpolicy.rho_bar)
        tokens = run.dist.sum_dict({"w": float(masked_sum(w, mixed.response_mask[flag])),
                                    "n": float(mixed.response_mask[flag].sum())})
        metrics["offpolicy/is_weight_mean"] = tokens["w"] / max(tokens["n"], 1.0)
    return mixed, metrics


def remember(run: Any, fresh: Experience) -> None:
    """After the update: the fresh rollout's groups join the buffer (if there is one)."""
    if run.extra.get("buffer") is not None:
        run.extra["buffer"].add(fresh)
