"""The DPO family (dpo, cdpo, ipo, hinge, simpo, orpo, kto, mdpo, dense_dpo) in one loop.

Per micro-batch: ONE policy forward over [chosen_0..B-1, rejected_0..B-1 (, extra block)] sharing
each pair's preprocessed image — with the shared-prefix forward (``forward: auto``, the default, on
the families where it is verified exact) packed as one row per pair [prompt+image, chosen, rejected]
so the prompt and image are computed once (vlalign.models.shared_prefix); only response-token
log-probs are computed; reference log-probs come
from the on-disk cache or the adapter-disabled policy (never a second model copy); then the objective
picked by name from ``PREFERENCE_LOSSES`` turns them into per-pair losses.

Extra response blocks, added only for the losses that need them:
- ``mdpo``: the chosen answer again under a corrupted image (conditional term);
- ``kto``: each prompt with another row's answer (mismatched pairs for the KL reference point z0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlalign.data.collate import CollateConfig, EncodedDataset
from vlalign.models.shared_prefix import pick_pair_forward
from vlalign.objectives.preference import kto_kl_reference
from vlalign.objectives.preference_registry import PREFERENCE_LOSSES, PreferenceBatchLogps
from vlalign.trainers.common import LoopSpec, StepResult, train_loop
from vlalign.trainers.configs import DPOConfig
from vlalign.trainers.reference import AdapterReference, CachedReference, build_reference_cache, fingerprint
from vlalign.trainers.replay import Replay, build_replay, replay_nll
from vlalign.trainers.run import finish_run, start_run

# loss name -> extra response block it needs (see vlalign.data.collate.EXTRA_BLOCKS)
EXTRA_BLOCK_OF = {"mdpo": "corrupted", "kto": "mismatched"}


def reference_mode(cfg: DPOConfig, objective: Any) -> str:
    """``auto`` → ``none`` for reference-free losses, else ``cache``; a loss that needs a reference
    with mode ``none`` (or ``adapter`` without LoRA) is a config error."""
    mode = cfg.reference.mode
    if mode == "auto":
        return "cache" if objective.requires_reference else "none"
    if mode == "none" and objective.requires_reference:
        raise ValueError(f"loss {cfg.loss!r} needs reference log-probs; set reference.mode to cache or adapter")
    if mode == "adapter" and not cfg.model.lora.enabled:
        raise ValueError("reference.mode=adapter needs model.lora.enabled=true (the base model is the reference)")
    return mode


def loss_hparams(cfg: DPOConfig, objective: Any) -> dict[str, Any]:
    """``beta`` (when set) + ``loss_kwargs``; unknown names fail in the objective itself."""
    hp = dict(cfg.loss_kwargs)
    if cfg.beta is not None and "beta" in objective.defaults:
        hp.setdefault("beta", cfg.beta)
    return hp


def pack_logps(logps: torch.Tensor, mask: torch.Tensor, B: int, ref: torch.Tensor | None, seg: Any) -> PreferenceBatchLogps:
    """Token log-probs of [chosen; rejected; extra] rows (N, T) → the objectives' batch of (B,) sums."""
    seq = logps.sum(-1)  # (N,)
    count = mask.sum(-1)  # (N,)
    c, r = slice(0, B), slice(B, 2 * B)
    pb = PreferenceBatchLogps(
        policy_chosen_logps=seq[c], policy_rejected_logps=seq[r],
        chosen_token_count=count[c], rejected_token_count=count[r],
        policy_chosen_token_logps=logps[c], policy_rejected_token_logps=logps[r],
        chosen_mask=mask[c], rejected_mask=mask[r],
        chosen_segment_mask=None if seg is None else seg[c], rejected_segment_mask=None if seg is None else seg[r],
    )
    if ref is not None:
        ref_seq = ref.sum(-1)  # (N,)
        pb.ref_chosen_logps, pb.ref_rejected_logps = ref_seq[c], ref_seq[r]
        pb.ref_chosen_token_logps, pb.ref_rejected_token_logps = ref[c], ref[r]
    return pb


def add_extra_block(pb: PreferenceBatchLogps, extra: str | None, logps: torch.Tensor, ref: torch.Tensor | None, B: int) -> None:
    """Fill the fields the extra block feeds: mDPO's corrupted-image logps or KTO's z0."""
    if extra is None:
        return
    x = slice(2 * B, 3 * B)
    policy_x = logps[x].sum(-1)  # (B,)
    ref_x = ref[x].sum(-1)  # (B,)
    if extra == "corrupted":
        pb.policy_chosen_corrupted_logps, pb.ref_chosen_corrupted_logps = policy_x, ref_x
    else:
        pb.kl_ref = kto_kl_reference(policy_x.detach(), ref_x)


def dpo_micro_step(model: Any, batch: Any, objective: Any, hparams: dict, reference: Any, extra: str | None,
                   sft_weight: float, forward: Any, replay: Replay | None = None) -> StepResult:
    B = batch.num_records
    logps, mask = forward(model, batch.inputs, batch.response_mask, B)  # (N, T), (N, T)
    ref = reference(model, batch) if reference is not None else None  # (N, T) or None
    pb = pack_logps(logps, mask, B, ref, batch.segment_mask)
    add_extra_block(pb, extra, logps, ref, B)
    out = objective(pb, **hparams)
    loss_sum = out.losses.sum()
    avg_chosen = pb.policy_chosen_logps / pb.chosen_token_count.clamp(min=1)  # (B,)
    if sft_weight:
        loss_sum = loss_sum + sft_weight * (-avg_chosen).sum()
    replay_sum = None
    if replay is not None:  # one replay row per pair: + weight × its token-mean NLL
        nll, count = replay_nll(model, replay.batch(batch.rows))  # (B,), (B,)
        replay_sum = (nll / count.clamp(min=1)).sum()
        loss_sum = loss_sum + replay.weight * replay_sum
    margin = out.chosen_rewards - out.rejected_rewards  # (B,)
    sums = {
        "reward_chosen": out.chosen_rewards.sum(),
        "reward_rejected": out.rejected_rewards.sum(),
        "margin": margin.sum(),
        "accuracy": (margin > 0).float().sum(),
        "logp_chosen": pb.policy_chosen_logps.detach().sum(),
        "logp_rejected": pb.policy_rejected_logps.detach().sum(),
    }
    if ref is not None:  # per-token log-ratio on the chosen answers: a sample estimate of KL(π‖π_ref)
        sums["kl_ref"] = ((pb.policy_chosen_logps.detach() - pb.ref_chosen_logps) / pb.chosen_token_count.clamp(min=1)).sum()
    if replay_sum is not None:
        sums["replay_nll"] = replay_sum
    for k, v in out.extras.items():
        sums[f"loss_{k}"] = v.sum()
    return StepResult(loss_sum, {k: v.detach() for k, v in sums.items()}, int(batch.inputs["attention_mask"].sum()))


def train_dpo(cfg: DPOConfig, records: list[Any] | None = None) -> dict[str, Any]:
    """Run a DPO-family objective as configured; returns the run summary."""
    objective = PREFERENCE_LOSSES.get(cfg.loss)
    hparams = loss_hparams(cfg, objective)
    mode = reference_mode(cfg, objective)
    extra = EXTRA_BLOCK_OF.get(cfg.loss)
    run = start_run(cfg, records)
    collate_cfg = CollateConfig(cfg.data.max_length, cfg.model.max_pixels)
    dataset = EncodedDataset(run.records, run.processor, collate_cfg, "pair", extra=extra)
    dataset.check_all()
    replay = build_replay(cfg, run.processor, collate_cfg, run.log)
    forward_name, forward, reason = pick_pair_forward(cfg.forward, run.model, extra)
    why = f"; not shared_prefix: {reason}" if reason else ""
    run.log.info(f"pair forward: {forward_name} (forward={cfg.forward}{why})")

    reference = None
    if mode == "cache":
        settings = {"max_length": cfg.data.max_length, "extra": extra, "kind": "pair"}
        fp = fingerprint(cfg.model, run.records, settings)
        cache_dir = Path(cfg.reference.cache_dir or Path(cfg.output_dir) / "reference_cache")
        table = build_reference_cache(run.acc, run.model, dataset, cache_dir / f"ref_logps-{fp}.pt",
                                      cfg.reference.batch_size, run.log, forward)
        reference = CachedReference(table)
    elif mode == "adapter":
        reference = AdapterReference(forward)

    spec = LoopSpec(
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        batches=dataset.batch,
        units=lambda b: b.num_records,
        micro_step=lambda b: dpo_micro_step(run.model, b, objective, hparams, reference, extra, cfg.sft_weight,
                                                forward, replay),
        num_rows=len(dataset),
        unit_name="pairs",
    )
    skipped = train_loop(run.acc, spec, cfg, run.start_step, run.total, run.log, run.checkpoint)
    return finish_run(run, skipped + int(run.state.get("skipped_steps", 0)))
