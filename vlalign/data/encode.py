"""Records → token ids and image tensors, one record at a time (the expensive part of the data path).

- the prompt — the record's conversation through the model's chat template, images where the source put
  them — is tokenized by the processor **once per record**, together with its images (capped to the
  processor's pixel limit first), so a preference pair's image is preprocessed once and its
  ``pixel_values`` are shared by the chosen and rejected rows;
- responses are tokenized separately and appended. When prompt + response is longer than
  ``max_length``, whole earlier exchanges of the conversation are dropped first (oldest first, never one
  that shows an image), then the responses are cut; image tokens are never cut. A row whose prompt alone
  leaves no room for one response token is an error naming the row and the ``max_length`` it needs;
- SFT on a conversation trains the final answer, or (``assistant_turns="all"``) every assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vlalign.data.images import open_image
from vlalign.data.messages import count_images, drop_first_exchange, record_messages

# Processor outputs that describe images; they are concatenated (not padded) when batching.
IMAGE_KEYS = ("pixel_values", "image_sizes", "image_grid_thw", "pixel_attention_mask", "image_attention_mask")


class CollateError(ValueError):
    """A record cannot be turned into model inputs; the message names the row and the fix."""


@dataclass
class CollateConfig:
    """How records become tensors. ``max_length`` counts prompt + image tokens + response."""

    max_length: int = 512
    # Images are downsized to at most this many pixels before the processor; None = the processor's own
    # limit (:func:`default_max_pixels`), so a huge image never costs its full-size preprocessing.
    max_pixels: int | None = None
    base_dir: str | None = None  # relative image paths resolve against this (the data file's folder)
    assistant_turns: str = "last"  # SFT on a conversation: "all" also trains the earlier assistant turns


@dataclass
class Encoded:
    """One record after tokenization: shared prompt, one or more responses, its image tensors."""

    row: int  # index of the record in the dataset (for error messages and NaN reports)
    id: str
    prompt_ids: list[int]
    responses: list[list[int]]  # token ids of each response (already truncated to fit)
    image_inputs: dict[str, torch.Tensor]  # processor image outputs for this record, computed once
    token_flags: list[list[bool]] = field(default_factory=list)  # per response: tokens inside a segment
    block_images: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # response j -> own images
    prompt_loss: list[bool] | None = None  # prompt tokens that are trained too (earlier assistant turns)
    dropped_turns: int = 0  # earlier exchanges dropped to fit max_length
    prompt_text: str = ""  # the rendered prompt (with placeholders) the ids came from


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


MIN_DEFAULT_CAP = 1024 * 1024  # ordinary photos (up to ~1 Mpx) reach the processor untouched: one resize


def default_max_pixels(processor: Any) -> int:
    """The pixel cap images get before the processor when ``max_pixels`` is not set: the processor's own
    pixel limit where it has one (Qwen2-VL-style dynamic resolution: ``size["longest_edge"]`` counts
    pixels), else 4x the pixels of the size it resizes to (2x per side), and never below 1024².

    Why: a 12000x12000 image decodes to 432 MB of RGB and the processor makes several float copies;
    every VLM processor shrinks it anyway, so shrinking first (a JPEG is even decoded at a reduced scale)
    loses nothing and bounds memory per row. The floor keeps ordinary images from being resized twice.
    """
    ip = getattr(processor, "image_processor", None)
    size = getattr(ip, "size", None) or {}
    size = size if isinstance(size, dict) else dict(getattr(size, "__dict__", {}))
    limit = getattr(ip, "max_pixels", None) or size.get("max_pixels")
    if limit:
        return int(limit)
    if size.get("longest_edge") and hasattr(ip, "merge_size"):  # dynamic resolution: a pixel count
        return max(int(size["longest_edge"]), MIN_DEFAULT_CAP)
    if size.get("longest_edge"):
        cap = (2 * int(size["longest_edge"])) ** 2
    elif size.get("height") and size.get("width"):
        cap = 4 * int(size["height"]) * int(size["width"])
    elif size.get("shortest_edge"):
        cap = (4 * int(size["shortest_edge"])) ** 2  # the long side may be ~2x the short one
    else:
        cap = 4096 * 4096
    return max(cap, MIN_DEFAULT_CAP)


def _max_pixels(processor: Any, cfg: CollateConfig) -> int | None:
    return cfg.max_pixels if cfg.max_pixels is not None else default_max_pixels(processor)


def open_images(processor: Any, record: Any, cfg: CollateConfig) -> list[Any]:
    return [open_image(ref, cfg.base_dir, _max_pixels(processor, cfg)) for ref in record.images]


def processor_ids(processor: Any, text: str, images: Sequence[Any]) -> tuple[list[int], dict[str, torch.Tensor]]:
    """(input ids, image tensors) of ``text`` with its image placeholders expanded for ``images``."""
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if images:
        kwargs["images"] = [list(images)]
    out = processor(**kwargs)
    return out["input_ids"][0].tolist(), {k: out[k] for k in IMAGE_KEYS if k in out and out[k] is not None}


def encode_prompt(processor: Any, record: Any, cfg: CollateConfig) -> tuple[list[int], dict[str, torch.Tensor]]:
    """Prompt (the record's conversation, or its one user turn) + images → (prompt ids, image tensors), once."""
    from vlalign.models import chat

    text = chat.render(processor, record_messages(record), add_generation_prompt=True)
    return processor_ids(processor, text, open_images(processor, record, cfg))


def fit_messages(processor: Any, messages: list[dict[str, Any]], images: Sequence[Any], room_needed: int,
                 max_length: int) -> tuple[str, list[int], dict[str, torch.Tensor], int]:
    """Render + encode the prompt, dropping whole earlier text-only exchanges (oldest first) while the
    prompt leaves less than ``room_needed`` tokens. Returns (text, ids, image tensors, turns dropped).

    The image expansion (image tokens minus their placeholders) does not depend on the text, so the
    shorter candidates are measured with the tokenizer alone and the processor runs once more at most.
    """
    from vlalign.models import chat

    tok = _tokenizer(processor)
    text = chat.render(processor, messages, add_generation_prompt=True)
    ids, image_inputs = processor_ids(processor, text, images)
    if len(ids) + room_needed <= max_length:
        return text, ids, image_inputs, 0
    expansion = len(ids) - len(tok(text)["input_ids"])
    dropped, candidate = 0, messages
    while len(ids) + room_needed > max_length:
        shorter = drop_first_exchange(candidate)
        if shorter is None:
            break
        candidate, dropped = shorter, dropped + 1
        text = chat.render(processor, candidate, add_generation_prompt=True)
        if len(tok(text)["input_ids"]) + expansion + room_needed <= max_length:
            break
    if dropped:
        ids, image_inputs = processor_ids(processor, text, images)
    return text, ids, image_inputs, dropped


def assistant_token_mask(processor: Any, messages: list[dict[str, Any]], images: Sequence[Any],
                         prompt_ids: list[int], row: int, rec_id: str) -> list[bool]:
    """Which prompt tokens belong to an earlier assistant turn (content + end-of-turn marker).

    Each turn is located by encoding the conversation up to its start and up to its end (with the
    images shown so far) and checked to be a prefix of the full prompt; a template that tokenizes
    differently turn by turn is refused rather than trained on the wrong tokens.
    """
    from vlalign.models import chat

    mask = [False] * len(prompt_ids)
    for k, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        shown = images[: count_images(messages[:k])]
        before = processor_ids(processor, chat.render(processor, messages[:k], add_generation_prompt=True), shown)[0]
        through = processor_ids(processor, chat.turn_end(processor, messages, k), shown)[0]
        if prompt_ids[: len(through)] != through or through[: len(before)] != before:
            raise CollateError(
                f"row {row} (id {rec_id!r}): the chat template does not tokenize assistant turn {k} the same way "
                "inside the conversation; train on the last turn only (data.assistant_turns=last)"
            )
        mask[len(before) : len(through)] = [True] * (len(through) - len(before))
    return mask


def encode_response(
    processor: Any, text: str, segments: Sequence[Any] = ()
) -> tuple[list[int], list[bool]]:
    """Response text + end-of-turn suffix → (ids, in-segment flag per token).

    A token is flagged when its character span overlaps a segment ``[start, end)`` of ``text``.
    """
    from vlalign.models import chat

    tok = _tokenizer(processor)
    full = text + chat.response_suffix(processor)
    if not segments:
        ids = tok(full, add_special_tokens=False)["input_ids"]
        return list(ids), [False] * len(ids)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    flags = [
        any(s < seg.end and e > seg.start and e > s for seg in segments) for s, e in enc["offset_mapping"]
    ]
    return list(enc["input_ids"]), flags


def image_token_count(processor: Any, ids: Sequence[int]) -> int:
    """How many of ``ids`` are image tokens (placeholders and their delimiters)."""
    from vlalign.models import chat

    image_ids = set(chat.image_token_ids(processor))
    return sum(1 for t in ids if t in image_ids)


def fit_response(prompt_len: int, response: list[int], max_length: int, row: int, rec_id: str,
                 image_note: str = "") -> list[int]:
    """Truncate ``response`` so that prompt + response <= max_length; the prompt is never cut.

    Why: cutting the prompt could remove image tokens and desynchronise them from the image features.
    """
    room = max_length - prompt_len
    if room < 1:
        raise CollateError(
            f"row {row} (id {rec_id!r}): the prompt with its image tokens{image_note} is {prompt_len} tokens, which "
            f"leaves no room for a response within max_length={max_length}; this row needs max_length >= "
            f"{prompt_len + 1} (raise `data.max_length`, or lower `data.max_pixels` to get fewer image tokens)"
        )
    return response[:room]


def encode_record(processor: Any, record: Any, row: int, cfg: CollateConfig, kind: str) -> Encoded:
    """One record → :class:`Encoded`. ``kind``: ``sft`` (reference answer), ``pair`` (chosen/rejected)
    or ``unpaired`` (KTO completion).

    Truncation order when prompt + longest response exceeds ``max_length``: whole earlier exchanges of a
    conversation are dropped first (oldest first, never one that shows an image), then responses are
    cut; image tokens are never cut.
    """
    texts = RESPONSE_FIELDS[kind](record, row)
    encoded = [encode_response(processor, text, segments) for text, segments in texts]
    images = open_images(processor, record, cfg)
    messages = record_messages(record)
    longest = max(len(ids) for ids, _ in encoded)
    prompt_text, prompt_ids, image_inputs, dropped = fit_messages(processor, messages, images, longest, cfg.max_length)
    note = ""
    if len(prompt_ids) >= cfg.max_length and images:
        note = f" ({len(images)} image(s), {image_token_count(processor, prompt_ids)} image tokens)"
    responses, flags = [], []
    for ids, fl in encoded:
        ids = fit_response(len(prompt_ids), ids, cfg.max_length, row, record.id, note)
        responses.append(ids)
        flags.append(fl[: len(ids)])
    prompt_loss = None
    if kind == "sft" and cfg.assistant_turns == "all" and getattr(record, "conversation", None):
        kept = messages
        for _ in range(dropped):
            kept = drop_first_exchange(kept) or kept
        prompt_loss = assistant_token_mask(processor, kept, images, prompt_ids, row, record.id)
    return Encoded(row, record.id, prompt_ids, responses, image_inputs, flags, prompt_loss=prompt_loss,
                   dropped_turns=dropped, prompt_text=prompt_text)


def _sft_texts(record: Any, row: int) -> list[tuple[str, Sequence[Any]]]:
    target = getattr(record, "reference", None)
    if target is None:
        target = getattr(record, "chosen", None)
    if not target:
        raise CollateError(
            f"row {row} (id {record.id!r}): SFT needs a target answer in field `reference` (prompt records) or "
            "`chosen` (preference records); this row has none — fill it or drop the row"
        )
    return [(target, ())]


def _pair_texts(record: Any, row: int) -> list[tuple[str, Sequence[Any]]]:
    for name in ("chosen", "rejected"):
        if not isinstance(getattr(record, name, None), str):
            raise CollateError(
                f"row {row} (id {record.id!r}): preference training needs string fields `chosen` and "
                f"`rejected`; `{name}` is missing — use a preference file (vlalign data validate tells the kind)"
            )
    return [(record.chosen, record.chosen_segments), (record.rejected, record.rejected_segments)]


def _unpaired_texts(record: Any, row: int) -> list[tuple[str, Sequence[Any]]]:
    if not isinstance(getattr(record, "completion", None), str):
        raise CollateError(f"row {row} (id {record.id!r}): unpaired (KTO) rows need a string `completion`")
    return [(record.completion, ())]


def _scored_texts(record: Any, row: int) -> list[tuple[str, Sequence[Any]]]:
    """A sampled answer to be scored (reward / cost models): unlike a training target it may be empty, since a
    generation can stop at once; it is then the end-of-turn suffix alone, the tokens the model produced."""
    if not isinstance(getattr(record, "reference", None), str):
        raise CollateError(f"row {row} (id {record.id!r}): a scored answer needs a string `reference` (the answer)")
    return [(record.reference, ())]


# record kind -> the response texts of a row: sft / pair / unpaired train; score reads answers to score
RESPONSE_FIELDS = {"sft": _sft_texts, "pair": _pair_texts, "unpaired": _unpaired_texts, "score": _scored_texts}


