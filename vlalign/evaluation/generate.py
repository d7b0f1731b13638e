"""Batched answer generation for evaluation: ``model.generate`` with the KV cache, greedy by default.

WHY separate from :mod:`vlalign.rollout.generate`: rollouts always sample K answers per prompt for
training; evaluation wants ONE deterministic (greedy) answer per prompt, deduplicated prompts (POPE
splits share their positive probes) and batches sorted by prompt length so little padding is
computed. The building blocks (prompt encoding through the chat template, left padding, cutting
at eos) are shared with the rollout code rather than rewritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from vlalign.config import BaseConfig


class GenerationConfig(BaseConfig):
    """How evaluation answers are produced. Greedy (``do_sample: false``) makes metrics reproducible."""

    max_new_tokens: int = Field(40, ge=1, description="longest answer; Shapes captions need ~25 tokens")
    batch_size: int = Field(64, ge=1, description="prompts per generate call")
    do_sample: bool = Field(False, description="false = greedy; true = sample with temperature/top_p")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_pixels: int | None = Field(None, ge=1, description="cap on pixels per image before the processor")


def _batches(order: Sequence[int], size: int) -> list[list[int]]:
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


def _stack_images(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    import torch

    keys = sorted({k for it in items for k in it})
    return {k: torch.cat([it[k] for it in items if k in it], dim=0) for k in keys}


def encode_records(processor: Any, records: Sequence[Any], cfg: GenerationConfig,
                   base_dir: str | None = None) -> list[tuple[list[int], dict[str, Any]]]:
    """Each record's prompt through the chat template, with its images: [(prompt ids, image tensors)]."""
    from vlalign.data.collate import CollateConfig, encode_prompt

    ccfg = CollateConfig(max_pixels=cfg.max_pixels, base_dir=base_dir)
    return [encode_prompt(processor, rec, ccfg) for rec in records]


def encode_conversation(processor: Any, images: Sequence[Any], turns: Sequence[str], cfg: GenerationConfig,
                        base_dir: str | None = None) -> tuple[list[int], dict[str, Any]]:
    """A multi-turn chat (user, assistant, user, ...; ``turns`` alternate, starting and ending with the
    user) with the images in the first user turn → (prompt ids, image tensors), ready to generate the
    next assistant turn. Used by the sycophancy probe ("Are you sure?" after the model's answer)."""
    from vlalign.data.images import open_image
    from vlalign.models.chat import user_message

    if len(turns) % 2 != 1:
        raise ValueError(f"a conversation to answer has an odd number of turns (user first and last), got {len(turns)}")
    messages = [user_message(turns[0], len(images))]
    for k, text in enumerate(turns[1:]):
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]} if k % 2 == 0
                        else user_message(text, 0))
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if images:
        kwargs["images"] = [[open_image(ref, base_dir, cfg.max_pixels) for ref in images]]
    out = processor(**kwargs)
    from vlalign.data.collate import IMAGE_KEYS

    return out["input_ids"][0].tolist(), {k: out[k] for k in IMAGE_KEYS if k in out and out[k] is not None}


def generate_token_ids(
    model: Any,
    processor: Any,
    records: Sequence[Any],
    cfg: GenerationConfig,
    base_dir: str | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """One answer per record (token ids, cut after the first eos), in the order of ``records``.

    Prompts are encoded once each, grouped into batches of similar length (less left padding) and
    generated with ``use_cache=True``. ``seed`` seeds sampling when ``cfg.do_sample`` is true.
    """
    if not records:
        return []
    return generate_from_encoded(model, processor, encode_records(processor, records, cfg, base_dir), cfg, seed)


def generate_from_encoded(model: Any, processor: Any, encoded: Sequence[tuple[list[int], dict[str, Any]]],
                          cfg: GenerationConfig, seed: int | None = None) -> list[list[int]]:
    """:func:`generate_token_ids` on prompts already encoded (e.g. multi-turn ones)."""
    import torch

    from vlalign.rollout.generate import eos_token_ids, left_pad, trim_response

    if not encoded:
        return []
    tok = getattr(processor, "tokenizer", processor)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    eos = eos_token_ids(model, tok)
    device = next(model.parameters()).device
    sample_kw: dict[str, Any] = (
        {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": None}
        if cfg.do_sample
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    if cfg.do_sample and seed is not None:
        torch.manual_seed(seed)
    out: list[list[int]] = [[] for _ in encoded]
    was_training = model.training
    model.eval()
    try:
        for idx in _batches(order, cfg.batch_size):
            ids, mask = left_pad([encoded[i][0] for i in idx], pad_id)  # (B, P), (B, P)
            images = _stack_images([encoded[i][1] for i in idx])
            with torch.no_grad():
                gen = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    **{k: v.to(device) for k, v in images.items()},
                    max_new_tokens=cfg.max_new_tokens,
                    pad_token_id=pad_id,
                    use_cache=True,
                    **sample_kw,
                )  # (B, P + R)
            for row, i in enumerate(idx):
                out[i] = trim_response(gen[row, ids.shape[1] :].tolist(), eos, pad_id)
    finally:
        model.train(was_training)
    return out


def decode(processor: Any, ids: Sequence[list[int]]) -> list[str]:
    """Token ids → text (special tokens dropped, stripped)."""
    tok = getattr(processor, "tokenizer", processor)
    return [tok.decode(t, skip_special_tokens=True).strip() for t in ids]


def first_token_ids(processor: Any, words: Sequence[str]) -> list[int]:
    """The first token id of each word as it starts an answer (``"Yes"`` → one id per spelling)."""
    tok = getattr(processor, "tokenizer", processor)
    return [tok.encode(w, add_special_tokens=False)[0] for w in words]


def next_token_choice_probs(model: Any, processor: Any, encoded: Sequence[tuple[list[int], dict[str, Any]]],
                            groups: Sequence[Sequence[int]], batch_size: int = 32) -> Any:
    """(N, G) probability of each group of first tokens, renormalised over the groups.

    For yes/no probes ``groups = [ids of "Yes"/"yes", ids of "No"/"no"]``: P(yes) = Σ p(yes ids) /
    (Σ p(yes ids) + Σ p(no ids)) from the next-token distribution right where the answer starts —
    the answer-token probability calibration is measured on. A token that appears in two groups is
    an error (the groups could not be told apart)."""
    import torch

    from vlalign.rollout.generate import left_pad

    flat = [t for g in groups for t in g]
    if len(set(flat)) != len(flat):
        raise ValueError(f"answer groups share a first token ({groups}); pick spellings that start differently")
    tok = getattr(processor, "tokenizer", processor)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    rows = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            ids, mask = left_pad([e[0] for e in chunk], pad_id)  # (B, P), (B, P)
            images = _stack_images([e[1] for e in chunk])
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                               **{k: v.to(device) for k, v in images.items()}).logits[:, -1]  # (B, V)
            probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
            mass = torch.stack([probs[:, list(g)].sum(-1) for g in groups], dim=-1)  # (B, G)
            rows.append((mass / mass.sum(-1, keepdim=True).clamp_min(1e-30)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(rows) if rows else torch.zeros(0, len(groups))


def generate_answers(
    model: Any,
    processor: Any,
    records: Sequence[Any],
    cfg: GenerationConfig,
    base_dir: str | None = None,
    seed: int | None = None,
) -> list[str]:
    """Like :func:`generate_token_ids` but decoded to text (special tokens dropped, stripped).

    Identical (images, prompt) pairs are generated once: POPE's three splits repeat every positive
    probe, so this saves about a third of the POPE work under greedy decoding. Sampling never
    deduplicates (each row gets its own draw).
    """
    if cfg.do_sample:
        uniq_records, back = list(records), list(range(len(records)))
    else:
        keys: dict[tuple[str, str], int] = {}
        uniq_records, back = [], []
        for rec in records:
            key = (repr(rec.images), rec.prompt)
            if key not in keys:
                keys[key] = len(uniq_records)
                uniq_records.append(rec)
            back.append(keys[key])
    texts = decode(processor, generate_token_ids(model, processor, uniq_records, cfg, base_dir, seed))
    return [texts[j] for j in back]
