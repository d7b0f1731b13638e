"""Batched sampling from the policy: K responses per prompt, images preprocessed once per prompt.

WHY this shape: each prompt record is encoded once (chat template + image preprocessing, see
:func:`vlalign.data.collate.encode_prompt`); its processed pixel tensors are then *repeated* for its
K samples (a tensor copy, not K more runs of the image processor), and all B·K rows are sampled in one
``model.generate`` call with the KV cache. Where the family allows it (``rollout.prefill: auto``), the
prompt + image runs once per prompt and its KV cache is repeated for the K samples
(:func:`prefill_groups`): the prompt is ~85% of every sequence, so this removes most of the prefill. The sampled rows are re-laid out right-padded
(``[prompt | response | pad]``) so that training, reference and value forwards are ordinary forwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlalign.data.collate import CollateConfig, encode_prompt, pad_rows
from vlalign.models.chat import image_token_ids
from vlalign.models.shared_prefix import hf_model, mm_token_type_ids
from vlalign.registry import Registry
from vlalign.rollout.config import RolloutConfig


@dataclass
class EncodedPrompt:
    """One prompt record after tokenization + image preprocessing (done once, reused K times)."""

    prompt_ids: list[int]
    image_inputs: dict[str, torch.Tensor]  # processor image tensors of this record
    record: Any  # the PromptRecord (text, images, meta for the reward)
    base_dir: str | None = None  # where the record's relative image paths resolve (backends that reload images)
    max_pixels: int | None = None  # the same pixel cap the processor inputs were made with


def encode_prompts(processor: Any, records: Sequence[Any], cfg: CollateConfig) -> list[EncodedPrompt]:
    return [EncodedPrompt(*encode_prompt(processor, rec, cfg), rec, cfg.base_dir, cfg.max_pixels) for rec in records]


def repeat_image_inputs(
    encoded: Sequence[EncodedPrompt], k: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stack each prompt's processed image tensors K times, grouped by prompt (rows g·K … g·K+K−1).

    Returns (image tensors for the N = B·K rows, per-key chunk sizes (N,) = how many dim-0 entries each
    row owns, so that minibatches can cut rows out again).
    """
    keys = sorted({key for e in encoded for key in e.image_inputs})
    images, chunks = {}, {}
    for key in keys:
        parts = [e.image_inputs[key] for e in encoded for _ in range(k) if key in e.image_inputs]
        if len(parts) != len(encoded) * k:
            raise ValueError(f"image tensor {key!r} is missing for some prompts; mix of text-only and image rows")
        images[key] = torch.cat(parts, dim=0)
        chunks[key] = torch.tensor([p.shape[0] for p in parts], dtype=torch.long)  # (N,)
    return images, chunks


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt id lists → left-padded ids (N, P) and attention mask (N, P), as generation needs."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (N, P)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, P)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def trim_response(tokens: list[int], eos_ids: set[int], pad_id: int | None) -> list[int]:
    """Cut a generated row at its end: through the first eos (kept — the policy learns to stop), or
    before the first pad that ``generate`` writes after a row finished on a stop string."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: i + 1]
        if pad_id is not None and t == pad_id and pad_id not in eos_ids:
            return tokens[:i]
    return tokens


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def sampling_kwargs(cfg: RolloutConfig) -> dict[str, Any]:
    """``generate`` keyword arguments of a rollout config (top_k=0 means off, as in HF)."""
    return {
        "do_sample": True,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k if cfg.top_k > 0 else None,
        "max_new_tokens": cfg.max_new_tokens,
        "repetition_penalty": cfg.repetition_penalty,
    }


# model_type -> prefill(model, prompt_ids (B, P), prompt_mask (B, P), images of the B prompts, k) -> KV cache of the
# B·K rows (grouped by prompt) holding every prompt token but the last, positioned as ``generate`` would.
SHARED_PREFILLS: Registry[Any] = Registry("shared prefill rule")


@SHARED_PREFILLS.register("llava", "idefics3")
def _prefill_text_positions(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                            images: dict[str, torch.Tensor], k: int) -> Any:
    """Decoders whose positions are the running count of real tokens (what ``generate`` derives from the
    attention mask): the prompt's cache is the same for each of its K samples."""
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    out = model(input_ids=prompt_ids[:, :-1], attention_mask=prompt_mask[:, :-1], position_ids=positions[:, :-1],
                **images, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)  # (B·K, heads, P−1, d) per layer, rows grouped by prompt
    return cache


@SHARED_PREFILLS.register("qwen2_vl")
def _prefill_mrope(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   images: dict[str, torch.Tensor], k: int) -> Any:
    """Qwen2-VL: the model computes the prompt's M-RoPE positions itself (``get_rope_index``) and keeps
    each row's offset between text position and M-RoPE position (``rope_deltas``, (B, 1)) for the decode
    steps. The offset depends only on the prompt, and the last prompt token (left out here, run by
    ``generate``) is text, so the truncated prompt's offset is the full prompt's; both the cache and the
    offsets are repeated to the K samples of each prompt."""
    hf = hf_model(model)
    types = mm_token_type_ids(hf.config, prompt_ids)  # (B, P)
    hf.model.rope_deltas = None  # a stale offset from an earlier call must not be reused
    out = model(input_ids=prompt_ids[:, :-1], attention_mask=prompt_mask[:, :-1], mm_token_type_ids=types[:, :-1],
                **images, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    hf.model.rope_deltas = hf.model.rope_deltas.repeat_interleave(k, 0)  # (B·K, 1)
    return cache


SHARED_PREFILL_TYPES: tuple[str, ...] = tuple(SHARED_PREFILLS.names())


def shared_prefill_reason(model: Any, cfg: RolloutConfig) -> str | None:
    """Why the prompt cannot be prefilled once per group for this model/config; None when it can."""
    if cfg.prefill == "per_sample":
        return "rollout.prefill is per_sample"
    if cfg.num_samples < 2:
        return "one sample per prompt"
    model_type = hf_model(model).config.model_type
    if model_type not in SHARED_PREFILLS:
        return f"model type {model_type!r} is not one of {', '.join(SHARED_PREFILL_TYPES)}"
    return None


def prefill_groups(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                   images: dict[str, torch.Tensor], k: int) -> Any:
    """KV cache of every prompt but its last token, computed once per prompt and repeated K times.

    prompt_ids/prompt_mask: (B, P) left-padded; images: the B prompts' image tensors (once each).
    The last prompt token is left out so that ``generate`` still has one new token to run, which
    yields the first sampled token's logits for all B·K rows. The family's rule
    (:data:`SHARED_PREFILLS`) positions the cached keys exactly as ``generate`` would have for each of
    the K rows itself.
    """
    return SHARED_PREFILLS.get(hf_model(model).config.model_type)(model, prompt_ids, prompt_mask, images, k)


@torch.no_grad()
def hf_generate(
    model: Any, processor: Any, encoded: Sequence[EncodedPrompt], cfg: RolloutConfig
) -> list[list[int]]:
    """Sample K responses per prompt with ``model.generate`` (KV cache on); returns N trimmed
    response-token lists, grouped by prompt.

    Where :func:`shared_prefill_reason` allows it, each prompt + image runs once (B rows) and its
    cache is expanded to the K samples; otherwise ``generate`` prefills all B·K rows.
    """
    tok = getattr(processor, "tokenizer", processor)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    k = cfg.num_samples
    device = next(model.parameters()).device
    shared = shared_prefill_reason(model, cfg) is None and max(len(e.prompt_ids) for e in encoded) > 1
    ids, mask = left_pad([e.prompt_ids for e in encoded], pad_id)  # (B, P)
    prompt_ids, prompt_mask = ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)  # (N, P)
    extra = {"stop_strings": cfg.stop_strings, "tokenizer": tok} if cfg.stop_strings else {}
    # A sampled image placeholder would make the response unscorable ("image features and image
    # tokens do not match"), so image tokens can never be generated.
    extra["suppress_tokens"] = image_token_ids(processor)
    was_training = model.training
    model.eval()
    try:
        if shared:
            once, _ = repeat_image_inputs(encoded, 1)
            extra["past_key_values"] = prefill_groups(
                model, ids.to(device), mask.to(device), {key: v.to(device) for key, v in once.items()}, k
            )
        else:
            images, _ = repeat_image_inputs(encoded, k)
            extra.update({key: v.to(device) for key, v in images.items()})
        out = model.generate(
            input_ids=prompt_ids.to(device),
            attention_mask=prompt_mask.to(device),
            **sampling_kwargs(cfg),
            pad_token_id=pad_id,
            use_cache=True,
            **extra,
        )
    finally:
        model.train(was_training)
    new_tokens = out[:, prompt_ids.shape[1] :].tolist()  # (N, R) generated part
    eos = eos_token_ids(model, tok)
    return [trim_response(row, eos, pad_id) for row in new_tokens]


def layout_rows(
    encoded: Sequence[EncodedPrompt], responses: Sequence[list[int]], k: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[prompt | response] per row, right-padded: input_ids (N, T), attention_mask (N, T), response_mask (N, T) float."""
    rows = [(encoded[i // k].prompt_ids, list(r), []) for i, r in enumerate(responses)]
    input_ids, attention, response, _ = pad_rows(rows, pad_id)
    return input_ids, attention, response.float()
