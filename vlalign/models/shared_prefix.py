"""Shared-prefix forward: a preference pair's prompt + image computed ONCE, not once per response.

WHY: in VLM preference data the prompt (image tokens included) is ~80% of every sequence, and the
plain batched forward ([chosen_0..B-1, rejected_0..B-1], see :mod:`vlalign.data.collate`) runs it
(and the vision tower) for the chosen AND the rejected row. Here each record becomes ONE packed row

    [prompt | response_0 | response_1 | ... ]          (blocks: chosen, rejected, KTO's mismatched)

with a 4D attention mask in which every response attends to the prompt and to its own earlier tokens
but never to another response, and position ids that restart where the prompt ended for each
response. Every response token then sees exactly the context (same tokens, same positions) it sees
in the batched layout, so the log-probs are the same up to float rounding, and the image is encoded
once per record.

The result is laid out like the batched forward's — ``(N, T)`` with ``N = blocks × B`` rows of the
batched batch — so the trainers, the reference cache and the objectives read it unchanged.

Per family we need the batched layout's position ids (``PAIR_POSITIONS``): plain ``arange`` for
Llama-style decoders (LLaVA, Idefics3/SmolVLM), M-RoPE (3, N, T) for Qwen2-VL. Families that are not
registered, attention kernels that ignore a custom 4D mask (flash-attention), and response blocks
with their own images (mDPO's corrupted image) fall back to the batched forward; ``unsupported_reason``
says why. The trainers' default ``forward: auto`` goes one step further and packs only the model
types in ``VERIFIED_EXACT`` (each one tested equal to the batched forward, gradients included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vlalign.data.collate import IMAGE_KEYS
from vlalign.models.logprobs import (
    _check_mask,
    head_logprobs,
    response_logprobs,
    scatter_tokens,
    unwrap_model,
)
from vlalign.registry import Registry

# model_type -> fn(hf_model, inputs) -> position ids of the batched (right-padded) layout: (N, T) or (C, N, T)
PAIR_POSITIONS: Registry[Callable[[Any, dict[str, Any]], torch.Tensor]] = Registry("shared-prefix position rule")

# name -> fn(model, inputs, response_mask, num_records) -> (logps (N, T), mask (N, T)); the config picks one
PAIR_FORWARDS: Registry[Callable[..., tuple[torch.Tensor, torch.Tensor]]] = Registry("pair forward")

# attention kernels that apply a custom additive 4D mask as given
MASKED_ATTENTION = ("sdpa", "eager")


class SharedPrefixError(ValueError):
    """A batch cannot be packed with a shared prefix (the message says why and what to use instead)."""


def hf_model(model: Any) -> Any:
    """The transformers model under DDP/accelerate/peft wrappers (for its config and helper methods)."""
    base = unwrap_model(model)
    return base.get_base_model() if hasattr(base, "get_base_model") else base


# --------------------------------------------------------------------------------- family rules


@PAIR_POSITIONS.register("llava", "idefics3")
def _arange_positions(hf: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """Llama-style decoders: right-padded rows use positions 0..T-1 (the model's own default)."""
    ids = inputs["input_ids"]  # (N, T)
    return torch.arange(ids.shape[1], device=ids.device).expand_as(ids)  # (N, T)


def mm_token_type_ids(config: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Qwen2-VL's modality of each token: 0 text, 1 image, 2 video (what its processor returns)."""
    types = torch.zeros_like(input_ids, dtype=torch.int32)  # (N, T)
    types[input_ids == config.image_token_id] = 1
    video = getattr(config, "video_token_id", None)
    if video is not None:
        types[input_ids == video] = 2
    return types


@PAIR_POSITIONS.register("qwen2_vl")
def _mrope_positions(hf: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """Qwen2-VL: 3D M-RoPE positions (temporal, height, width) from the model's own ``get_rope_index``."""
    ids = inputs["input_ids"]  # (N, T)
    types = inputs.get("mm_token_type_ids")
    if types is None:
        types = mm_token_type_ids(hf.config, ids)
    pos, _ = hf.model.get_rope_index(
        ids, mm_token_type_ids=types, image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"), attention_mask=inputs["attention_mask"],
    )
    return pos  # (3, N, T)


def complete_inputs(model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Add model inputs the collator does not produce: Qwen2-VL needs ``mm_token_type_ids`` for M-RoPE."""
    config = hf_model(model).config
    if config.model_type in ("qwen2_vl", "qwen2_5_vl") and "mm_token_type_ids" not in inputs:
        return {**inputs, "mm_token_type_ids": mm_token_type_ids(config, inputs["input_ids"])}
    return inputs


def unsupported_reason(model: Any, extra: str | None = None) -> str | None:
    """Why the shared-prefix forward cannot be exact for this model / block layout; None when it can."""
    hf = hf_model(model)
    model_type = hf.config.model_type
    if model_type not in PAIR_POSITIONS:
        return f"model type {model_type!r} has no shared-prefix position rule (known: {', '.join(PAIR_POSITIONS.names())})"
    attn = getattr(hf.config, "_attn_implementation", None) or "eager"
    if attn not in MASKED_ATTENTION:
        return f"attention implementation {attn!r} ignores custom 4D masks (use sdpa or eager)"
    if extra == "corrupted":
        return "mDPO's corrupted-image block has its own image, so it shares no prefix with chosen/rejected"
    return None


# --------------------------------------------------------------------------------- packing


def _prompt_lengths(response_mask: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """First response token of each row (= prompt length); a row without response tokens is all prompt."""
    has = response_mask.any(-1)  # (N,)
    first = response_mask.int().argmax(-1)  # (N,)
    return torch.where(has, first, attention_mask.sum(-1)).tolist()


def _block_images(inputs: dict[str, Any], blocks: int) -> dict[str, torch.Tensor]:
    """The image tensors of block 0; every block must carry the same images (collate repeats them)."""
    out = {}
    for key in IMAGE_KEYS:
        v = inputs.get(key)
        if v is None:
            continue
        n = v.shape[0] // blocks
        if n * blocks != v.shape[0] or any(not torch.equal(v[:n], v[j * n : (j + 1) * n]) for j in range(1, blocks)):
            raise SharedPrefixError(
                f"`{key}` differs between response blocks (each block has its own images), so they share no "
                "prefix; use forward=batched for this loss"
            )
        out[key] = v[:n]
    return out


def pack_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                num_records: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where every packed token comes from and where every batched hidden state lives in the pack.

    Batched row ``i = j*B + b`` is response block ``j`` of record ``b``. Returns
      src (B, S): flat index ``i*T + t`` of the batched token at packed slot s (0 at padding);
      seg (B, S): -1 padding, 0 prompt, j+1 response block j;
      hidden_at (N, T): flat index ``b*S + s`` of the packed slot whose hidden state equals the batched
        hidden state at (i, t) (0 beyond the row's length).
    """
    N, T = input_ids.shape
    B = num_records
    if N % B:
        raise SharedPrefixError(f"batch has {N} rows, not a multiple of its {B} records")
    blocks = N // B
    lengths = attention_mask.sum(-1).tolist()  # (N,)
    prompt = _prompt_lengths(response_mask, attention_mask)
    for i in range(N):
        b = i % B
        if prompt[i] != prompt[b] or not torch.equal(input_ids[i, : prompt[b]], input_ids[b, : prompt[b]]):
            raise SharedPrefixError(
                f"rows {b} and {i} (record {b}, blocks 0 and {i // B}) do not start with the same prompt; "
                "the shared-prefix forward needs every block of a record to share it (use forward=batched)"
            )
    S = max(prompt[b] + sum(lengths[j * B + b] - prompt[b] for j in range(blocks)) for b in range(B))
    src = torch.zeros(B, S, dtype=torch.long)
    seg = torch.full((B, S), -1, dtype=torch.long)
    hidden_at = torch.zeros(N, T, dtype=torch.long)
    for b in range(B):
        P = prompt[b]
        src[b, :P] = b * T + torch.arange(P)
        seg[b, :P] = 0
        start = P
        for j in range(blocks):
            i = j * B + b
            n = lengths[i] - P  # response tokens of row i
            src[b, start : start + n] = i * T + P + torch.arange(n)
            seg[b, start : start + n] = j + 1
            hidden_at[i, :P] = b * S + torch.arange(P)
            hidden_at[i, P : P + n] = b * S + start + torch.arange(n)
            start += n
    return src, seg, hidden_at


def block_attention_mask(seg: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, S, S) mask: causal, and a response sees the prompt and itself, never another response.

    Padding (seg -1) attends to earlier padding only, so no query row is fully masked (a fully masked
    softmax row gives NaN, and NaN times a zero gradient is still NaN in the backward pass).
    """
    S = seg.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool, device=seg.device).tril()  # (S, S)
    q, k = seg[:, :, None], seg[:, None, :]  # (B, S, 1), (B, 1, S)
    allowed = causal & ((k == 0) & (q >= 0) | (k == q))  # (B, S, S)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]  # (B, 1, S, S)


def _gather_last(x: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """x (..., N, T) → (..., *flat_index.shape) picking x.flatten(-2)[..., flat_index]."""
    lead = x.shape[:-2]
    return x.reshape(*lead, -1)[..., flat_index.reshape(-1)].reshape(*lead, *flat_index.shape)


def packed_inputs(
    hf: Any, ids: torch.Tensor, positions: torch.Tensor, seg: torch.Tensor, src: torch.Tensor, images: dict[str, Any]
) -> dict[str, Any]:
    """Model inputs of packed rows from the per-sequence ``ids`` (N, T) and ``positions`` ((N, T) or
    (C, N, T)), given the packed layout ``seg``/``src`` (B, S) of :func:`pack_layout`; shared by the
    pair (DPO) and group (GRPO/RLOO) packings."""
    real = seg >= 0  # (B, S)
    packed_ids = _gather_last(ids, src)  # (B, S)
    # padding repeats the row's last real token (a text token: an image-token id would desync the image)
    last = packed_ids.gather(1, real.sum(-1, keepdim=True) - 1)  # (B, 1)
    return {
        "input_ids": torch.where(real, packed_ids, last),  # (B, S)
        "position_ids": _gather_last(positions, src) * real,  # (B, S) or (C, B, S)
        "attention_mask": block_attention_mask(seg, hf.get_input_embeddings().weight.dtype),  # (B, 1, S, S)
        **images,
    }


# --------------------------------------------------------------------------------- forwards


def shared_prefix_logprobs(model: Any, inputs: dict[str, Any], response_mask: torch.Tensor,
                           num_records: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Response log-probs of a response-major batch (see module doc), computing each prompt once.

    Args:
        inputs: the batched collator output (input_ids/attention_mask (N, T), image tensors repeated
            per block), i.e. exactly what the batched forward would take.
        response_mask: (N, T) bool, True at the response tokens to score.
        num_records: B; N must be blocks × B.
    Returns:
        ``(logps, mask)`` (N, T) float32, equal to ``response_logprobs(model, inputs, response_mask)``.
    """
    hf = hf_model(model)
    reason = unsupported_reason(model)
    if reason:
        raise SharedPrefixError(f"shared-prefix forward unavailable: {reason}")
    input_ids = inputs["input_ids"]  # (N, T)
    mask = _check_mask(input_ids, response_mask)  # (N, T)
    N = input_ids.shape[0]
    device = input_ids.device
    src, seg, hidden_at = (t.to(device) for t in pack_layout(input_ids, inputs["attention_mask"], mask, num_records))
    B, S = seg.shape
    positions = PAIR_POSITIONS.get(hf.config.model_type)(hf, inputs)  # (N, T) or (C, N, T)
    packed = packed_inputs(hf, input_ids, positions, seg, src, _block_images(inputs, N // num_records))
    out = model(**packed, logits_to_keep=1, output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]  # (B, S, H)

    predicts = mask[:, 1:]  # (N, T-1): batched hidden at t-1 predicts token t
    selected = hidden.reshape(B * S, -1)[hidden_at[:, :-1][predicts]]  # (M, H)
    targets = input_ids[:, 1:][predicts]  # (M,)
    token_logp, _ = head_logprobs(model, selected, targets)  # (M,)
    return scatter_tokens(token_logp, predicts), mask.float()


@PAIR_FORWARDS.register("batched")
def batched_pair_logprobs(model: Any, inputs: dict[str, Any], response_mask: torch.Tensor,
                          num_records: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every block as its own row: the prompt and image run once per response (the simple layout)."""
    logps, mask = response_logprobs(model, complete_inputs(model, inputs), response_mask)
    return logps, mask


PAIR_FORWARDS.register("shared_prefix")(shared_prefix_logprobs)


# Model types whose shared-prefix log-probs AND gradients are tested equal to the batched forward's
# (tests/unit/test_shared_prefix.py, one tiny model per family): ``forward: auto`` uses the fast path
# only for these. Having a position rule (PAIR_POSITIONS) is necessary, not sufficient: a new family
# joins this set when its equality test passes, not before.
VERIFIED_EXACT: frozenset[str] = frozenset({"llava", "qwen2_vl", "idefics3"})


def auto_forward_reason(model: Any, extra: str | None = None) -> str | None:
    """Why ``forward: auto`` keeps the batched forward for this model / block layout; None → shared_prefix."""
    model_type = hf_model(model).config.model_type
    if model_type not in VERIFIED_EXACT:
        return (f"model type {model_type!r} is not verified exact with shared_prefix "
                f"(verified: {', '.join(sorted(VERIFIED_EXACT))}); set forward=shared_prefix to try it")
    return unsupported_reason(model, extra)


def pick_pair_forward(name: str, model: Any, extra: str | None = None) -> tuple[str, Callable[..., Any], str | None]:
    """Config name → (name actually used, forward, reason for using ``batched`` or None).

    ``auto`` → ``shared_prefix`` where it is verified exact (:data:`VERIFIED_EXACT`, and no reason of
    :func:`unsupported_reason`), else ``batched``; an explicit ``shared_prefix`` falls back to
    ``batched`` only where it cannot be exact (unknown positions, flash-attention, mDPO's images).
    """
    if name in ("auto", "shared_prefix"):
        reason = auto_forward_reason(model, extra) if name == "auto" else unsupported_reason(model, extra)
        if reason:
            return "batched", PAIR_FORWARDS.get("batched"), reason
        return "shared_prefix", PAIR_FORWARDS.get("shared_prefix"), None
    return name, PAIR_FORWARDS.get(name), None
