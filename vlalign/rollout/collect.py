"""Rollout → Experience: sample, lay out, score log-probs (policy, reference) and rewards.

Forward count per rollout: generation (KV cache) + one no-grad policy forward (old log-probs and
entropy, skipped when the trainer takes a single update per rollout and uses the detached current
log-probs instead) + one reference forward (LoRA: the same model with its adapter disabled).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from vlalign.data.collate import CollateConfig
from vlalign.monitors.text_stats import batch_text_stats
from vlalign.registry import Registry
from vlalign.rewards.base import Sample
from vlalign.rollout.config import RolloutConfig
from vlalign.rollout.experience import Experience
from vlalign.rollout.generate import (
    encode_prompts,
    hf_generate,
    layout_rows,
    repeat_image_inputs,
)
from vlalign.rollout.vllm_backend import vllm_generate

# backend name -> generate(model, processor, encoded, cfg) -> list of N response-token lists
ROLLOUT_BACKENDS: Registry[Callable[..., list[list[int]]]] = Registry("rollout backend")
ROLLOUT_BACKENDS.register("hf")(hf_generate)
ROLLOUT_BACKENDS.register("vllm")(vllm_generate)  # imports vllm only when called


def _pad_id(processor: Any) -> int:
    tok = getattr(processor, "tokenizer", processor)
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block on its own RNG stream ``seed`` (CPU and the current CUDA device), leaving the
    caller's RNG state untouched; ``None`` = the caller's stream."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def stream_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (e.g. run seed, rollout step, process rank): well-mixed, so
    neighbouring steps or ranks get unrelated streams."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_experience(
    policy: Any, processor: Any, records: Sequence[Any], cfg: RolloutConfig, collate_cfg: CollateConfig,
    seeds: Sequence[int] | None = None, prompt_rows: Sequence[int] | None = None,
) -> Experience:
    """Generate K responses for each record; returns the laid-out :class:`Experience` (no scores yet).

    ``seeds``: one RNG stream per record — each record is then sampled on its own (one generate call
    per prompt), so its K responses depend only on its seed, not on which other prompts share the
    batch or the process. ``prompt_rows``: the records' row indices in the prompt data (a global
    identity, kept in ``extras["prompt_row"]``)."""
    encoded = encode_prompts(processor, records, collate_cfg)  # images preprocessed ONCE per record
    generate = ROLLOUT_BACKENDS.get(cfg.backend)
    if seeds is None:
        responses = generate(policy, processor, encoded, cfg)
    else:
        responses = []
        for enc, seed in zip(encoded, seeds, strict=True):
            with seeded(seed):
                responses += generate(policy, processor, [enc], cfg)
    k = cfg.num_samples
    input_ids, attention, response_mask = layout_rows(encoded, responses, k, _pad_id(processor))
    images, chunks = repeat_image_inputs(encoded, k)  # processed pixel tensors repeated K×
    tok = getattr(processor, "tokenizer", processor)
    recs = [encoded[i // k].record for i in range(len(responses))]
    extras = {f"_chunks/{key}": c for key, c in chunks.items()}
    if prompt_rows is not None:
        extras["prompt_row"] = torch.tensor(list(prompt_rows), dtype=torch.long).repeat_interleave(k)  # (N,)
    return Experience(
        input_ids=input_ids,
        attention_mask=attention,
        response_mask=response_mask,
        image_inputs=images,
        group_ids=torch.arange(len(encoded)).repeat_interleave(k),  # (N,)
        texts=tok.batch_decode(responses, skip_special_tokens=True),
        prompts=[r.prompt for r in recs],
        metas=[_sample_meta(r) for r in recs],
        images=[list(r.images) for r in recs],
        extras=extras,
        ids=[f"{encoded[i // k].record.id}/{i % k}" for i in range(len(responses))],
    )


def reference_context(policy: Any, reference: Any | None) -> tuple[Any, contextlib.AbstractContextManager]:
    """(model to run, context) for reference log-probs: a frozen copy if given, else the LoRA policy
    with its adapter disabled (no second model in memory)."""
    if reference is not None:
        return reference, contextlib.nullcontext()
    from vlalign.models.load import disable_adapter

    return policy, disable_adapter(policy)


@torch.no_grad()
def score_experience(
    exp: Experience,
    policy: Any,
    reference: Any | None,
    *,
    need_old_logprobs: bool,
    need_reference: bool,
    temperature: float = 1.0,
    forward: str = "batched",
    group_size: int = 1,
) -> dict[str, float]:
    """Fill ``old_logprobs`` (+ entropy in extras) and ``ref_logprobs``; returns entropy/length metrics.

    ``forward`` names the layout in :data:`vlalign.rollout.forward.RL_FORWARDS` (``shared_prefix``:
    each group's prompt and image computed once, ``group_size`` = K samples per prompt).
    """
    from vlalign.rollout.forward import experience_logprobs

    device = next(policy.parameters()).device
    on_device = exp.to(device)
    mask = on_device.response_mask
    metrics: dict[str, float] = {}
    was_training = policy.training
    policy.eval()
    try:
        if need_old_logprobs:
            logps, _, entropy = experience_logprobs(policy, on_device, forward=forward, group_size=group_size,
                                                    temperature=temperature, return_entropy=True)
            exp.old_logprobs = logps.cpu()
            exp.extras["entropy"] = (entropy * mask).cpu()  # (N, T) per response token
            metrics["policy/entropy"] = float((entropy * mask).sum() / mask.sum().clamp(min=1))
        if need_reference:
            model, ctx = reference_context(policy, reference)
            with ctx:
                exp.ref_logprobs = experience_logprobs(model, on_device, forward=forward, group_size=group_size,
                                                       temperature=temperature)[0].cpu()
    finally:
        policy.train(was_training)
    return metrics


def samples_of(exp: Experience) -> list[Sample]:
    """What a reward source sees for each row."""
    return [
        Sample(images=imgs, prompt=p, response=r, meta=m)
        for imgs, p, r, m in zip(exp.images, exp.prompts, exp.texts, exp.metas, strict=True)
    ]


def score_with(source: Any, exp: Experience, prefix: str,
               gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Score every row with a reward (or cost) source → (scores (N,), metrics named ``prefix/...``).

    ``gather(t)`` returns every process's rows of ``t`` (multi-process runs), so the metrics are those
    of the whole global batch; the returned scores stay this process's."""
    out = source.score(samples_of(exp))
    scores = out.rewards.detach().float().cpu()  # (N,)
    if scores.shape != (exp.num_rows,):
        raise ValueError(
            f"{prefix} source {getattr(source, 'name', source)!r} returned shape {tuple(scores.shape)}, "
            f"expected ({exp.num_rows},)"
        )
    whole = gather or (lambda t: t)
    every = whole(scores)
    metrics = {f"{prefix}/mean": float(every.mean()), f"{prefix}/std": float(every.std(unbiased=False))}
    metrics.update({f"{prefix}/{k}": float(whole(v.detach().float().cpu().reshape(-1)).mean())
                    for k, v in out.parts.items()})
    metrics.update({f"{prefix}/{k}": float(v) for k, v in out.info.items()})
    return scores, metrics


def response_stats(exp: Experience, max_new_tokens: int,
                   gather: Callable[[list[Any]], list[Any]] | None = None) -> dict[str, float]:
    """Length / repetition / truncation stats of the responses (inputs of the monitors); ``gather`` as in
    :func:`score_with` (over lists: every process's token lists)."""
    toks = [row[m.bool()].tolist() for row, m in zip(exp.input_ids, exp.response_mask, strict=True)]
    toks = gather(toks) if gather is not None else toks
    stats = batch_text_stats(toks)
    stats["response/clipped_frac"] = sum(1 for t in toks if len(t) >= max_new_tokens) / max(1, len(toks))
    return stats


def _sample_meta(record) -> dict:
    """What reward sources see as ``Sample.meta``: the record's meta plus its reference answer
    (reference-based rules such as ``exact_match`` read ``meta["reference"]``)."""
    meta = dict(record.meta or {})
    reference = getattr(record, "reference", None)
    if reference is not None:
        meta.setdefault("reference", reference)
    return meta
