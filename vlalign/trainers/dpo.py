"""The DPO family (dpo, cdpo, ipo, hinge, simpo, orpo, kto, mdpo, dense_dpo) in one loop.

Per micro-batch: ONE policy forward over [chosen_0..B-1, rejected_0..B-1 (, extra block)] sharing
each pair's preprocessed image — with the shared-prefix forward (``forward: auto``, the default, on
the families where it is verified exact) packed as one row per pair [prompt+image, chosen, rejected]
so the prompt and image are computed once (vlalign.models.shared_prefix); only response-token
log-probs are computed; reference log-probs come
from the on-disk cache (keyed by the reference weights, the rows and the settings; scored before any
checkpoint is restored) or the adapter-disabled policy (never a second model copy); then the objective
picked by name from ``PREFERENCE_LOSSES`` turns them into per-pair losses. With held-out pairs
(``data.eval`` / ``data.eval_fraction``) and ``eval_steps``, ``eval/accuracy`` and ``eval/loss`` are
logged, which the ``preference_overfit`` monitor watches.

Extra response blocks, added only for the losses that need them:
- ``mdpo``: the chosen answer again under a corrupted image (conditional term);
- ``kto``: each prompt with another row's answer (mismatched pairs for the KL reference point z0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlalign.data.collate import EncodedDataset
from vlalign.models.shared_prefix import pick_pair_forward
from vlalign.objectives.preference import kto_kl_reference
from vlalign.objectives.preference_registry import PREFERENCE_LOSSES, PreferenceBatchLogps
from vlalign.trainers.configs import DPOConfig
from vlalign.trainers.reference import (
    AdapterReference,
    CachedReference,
    build_reference_cache,
    cache_key,
    weights_fingerprint,
)
from vlalign.trainers.replay import Replay, build_replay, replay_nll
from vlalign.trainers.run import (
    attach_dataset,
    collate_config,
    data_fingerprint,
    evaluate_sums,
    finish_run,
    start_run,
)
from vlalign.trainers.step import StepResult, mean_over

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


def record_margins(records: Any, loss: str, which: str = "train") -> torch.Tensor | None:
    """(R,) every pair's ``margin`` when ``loss`` reads the reward margin (MM-DPO's per-pair β), else None.
    A pair without one fails here, before training, with its row and the fix."""
    if "reward_margin" not in PREFERENCE_LOSSES.get(loss).required_fields:
        return None
    if records is None:
        raise ValueError(f"loss {loss!r} reads each pair's `margin`, which streamed data (data.streaming) does not "
                         "keep; set data.streaming=false")  # fmt: skip
    missing = [i for i, r in enumerate(records) if getattr(r, "margin", None) is None]
    if missing:
        raise ValueError(f"loss {loss!r} needs each pair's `margin` (the reward margin δ = r(chosen) − r(rejected)); "
                         f"{which} rows {missing[:5]} have none. Label the pairs with a scoring source (vlalign label, "
                         "iterative-dpo) or choose another loss")  # fmt: skip
    return torch.tensor([float(r.margin) for r in records], dtype=torch.float32)


def dpo_micro_step(model: Any, batch: Any, objective: Any, hparams: dict, reference: Any, extra: str | None,
                   sft_weight: float, forward: Any, replay: Replay | None = None,
                   margins: torch.Tensor | None = None) -> StepResult:
    B = batch.num_records
    logps, mask = forward(model, batch.inputs, batch.response_mask, B)  # (N, T), (N, T)
    ref = reference(model, batch) if reference is not None else None  # (N, T) or None
    pb = pack_logps(logps, mask, B, ref, batch.segment_mask)
    if margins is not None:  # (B,): the records' reward margins, for MM-DPO's per-pair β
        pb.reward_margin = margins[batch.rows].to(logps.device)
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


def reference_settings(cfg: DPOConfig, extra: str | None, forward_name: str) -> dict[str, Any]:
    """What the cached reference log-probs depend on besides the weights and the rows."""
    return {"max_length": cfg.data.max_length, "max_pixels": cfg.model.max_pixels, "extra": extra, "kind": "pair",
            "loss": cfg.loss, "forward": forward_name}


def train_dpo(cfg: DPOConfig, records: list[Any] | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Run a DPO-family objective as configured; returns the run summary."""
    objective = PREFERENCE_LOSSES.get(cfg.loss)
    hparams = loss_hparams(cfg, objective)
    mode = reference_mode(cfg, objective)
    extra = EXTRA_BLOCK_OF.get(cfg.loss)
    collate_cfg = collate_config(cfg)
    ctx: dict[str, Any] = {}

    def on_load(run: Any, model: Any) -> None:  # the reference = these weights, as loaded
        if mode == "cache":
            ctx["weights"] = weights_fingerprint(model)

    def before_resume(run: Any) -> None:
        """Datasets, the pair forward and the reference pass — on the weights as loaded, before any
        checkpoint is restored (a resumed run never scores its reference with the trained policy)."""
        name, ctx["forward"], reason = pick_pair_forward(cfg.forward, run.model, extra)
        run.log.info(f"pair forward: {name} (forward={cfg.forward}{f'; not shared_prefix: {reason}' if reason else ''})")
        sets = []
        if cfg.data.streaming:  # rows are encoded as they are read; the reference is scored on the fly
            ctx["train_reference"] = AdapterReference(ctx["forward"]) if mode == "adapter" else None
        else:
            ctx["train"] = EncodedDataset(run.records, run.processor, collate_cfg, "pair", extra=extra)
            ctx["train"].check_all(cfg.data.num_workers)
            attach_dataset(run, ctx["train"])
            sets.append(("train", run.records))
        if run.eval_records:
            ctx["eval"] = EncodedDataset(run.eval_records, run.processor, collate_cfg, "pair", extra=extra)
            ctx["eval"].check_all()
            sets.append(("eval", run.eval_records))
        for which, rows in sets:
            if mode == "cache":
                key = cache_key(ctx["weights"], data_fingerprint(rows), reference_settings(cfg, extra, name))
                cache_dir = Path(cfg.reference.cache_dir or Path(cfg.output_dir) / "reference_cache")
                table = build_reference_cache(run.acc, run.model, ctx[which], cache_dir / f"ref_logps-{key[:20]}.pt",
                                              cfg.reference.batch_size, run.log, ctx["forward"], key=key)
                ctx[f"{which}_reference"] = CachedReference(table)
            else:
                ctx[f"{which}_reference"] = AdapterReference(ctx["forward"]) if mode == "adapter" else None

    run = start_run(cfg, records, on_load=on_load, before_resume=before_resume, stream=("pair", extra))
    try:
        replay = build_replay(cfg, run.processor, collate_cfg, run.log)
        margins = record_margins(None if cfg.data.streaming else run.records, cfg.loss)
        loss_fn = mean_over("pairs", lambda b: dpo_micro_step(run.model, b, objective, hparams, ctx["train_reference"],
                                                              extra, cfg.sft_weight, ctx["forward"], replay, margins=margins))
        if "eval" in ctx:
            eval_margins = record_margins(run.eval_records, cfg.loss, "eval")
            run.evaluate = lambda: evaluate_sums(
                run, ctx["eval"], lambda b: dpo_micro_step(run.model, b, objective, hparams, ctx["eval_reference"], extra,
                                                           cfg.sft_weight, ctx["forward"], margins=eval_margins),
                lambda b: b.num_records, cfg.per_device_batch_size)
        run.stop_after = stop_after

        for step in run.steps():
            outcome = run.update(run.source.micro_batches(step), loss_fn, lambda b: {"pairs": b.num_records},
                                 where=step + 1)
            if run.end_step(step, outcome.metrics, outcome.finite):
                break
    except BaseException:
        run.close()
        raise
    return finish_run(run)
