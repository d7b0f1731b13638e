"""TRL-style vision rows (``trl-lib/rlaif-v`` and friends): preference, prompt-only, prompt-completion, KTO.

Layouts (https://huggingface.co/docs/trl/dataset_formats):
- preference: ``images``, ``prompt``, ``chosen``, ``rejected``;
- prompt-only: ``images``, ``prompt``;
- prompt-completion (SFT): ``images``, ``prompt``, ``completion``;
- unpaired (KTO): ``images``, ``prompt``, ``completion``, ``label`` (bool).
Each text field is either a plain string or *conversational*: a list of messages
``{"role": ..., "content": str | [{"type": "image"}, {"type": "text", "text": ...}]}``. A conversational
prompt is kept turn by turn (a multi-turn prompt stays a conversation, rendered by the model's chat
template; images stay where their placeholders are); an answer is one assistant message. The image
placeholders must match the number of images — a mismatch is the "image features and image tokens do
not match" error users otherwise meet deep inside a model. A plain-string prompt may mark image
positions with ``<image>`` tags; without tags its images come first.
"""

from __future__ import annotations

from typing import Any

from vlalign.data.formats.base import Format, RowContext, RowProblem, image_refs, parse_bool, register_format
from vlalign.data.messages import (
    IMAGE_PART,
    answer_of,
    count_images,
    normalize_messages,
    prompt_and_conversation,
    split_image_tags,
)
from vlalign.data.records import PreferenceRecord, PromptRecord, Record, UnpairedRecord

_IMAGE_KEYS = ("images", "image")


def prompt_messages(value: Any, n_images: int, key: str = "prompt") -> tuple[list[dict[str, Any]], bool]:
    """A TRL prompt (string or messages) → (normalised messages, was_conversational).

    A string becomes one user turn; its ``<image>`` tags mark image positions, and without tags the
    row's images go first (the LLaVA convention, and what TRL's own processors do).
    """
    if isinstance(value, str):
        parts = split_image_tags(value)
        if not any(p["type"] == "image" for p in parts):
            parts = [dict(IMAGE_PART) for _ in range(n_images)] + parts
        return [{"role": "user", "content": parts}], False
    return normalize_messages(value, key), True


def answer_text(value: Any, key: str) -> str:
    """A TRL answer field: a string, or a list holding one assistant message."""
    if isinstance(value, str):
        return value
    if value is None:
        raise RowProblem(key, "missing field", f"add {key!r} (a string or one assistant message)")
    return answer_of(normalize_messages(value, key), key)


def _images(row: dict[str, Any], ctx: RowContext) -> list[str | bytes]:
    for key in _IMAGE_KEYS:
        if row.get(key) is not None:
            return image_refs(row[key], ctx, key)
    return []


def convert_trl(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    if "prompt" not in row:
        raise RowProblem("prompt", "missing field", "TRL rows need an explicit 'prompt' (implicit prompts are not supported)")
    images = _images(row, ctx)
    messages, conversational = prompt_messages(row["prompt"], len(images))
    n_placeholders = count_images(messages)
    if n_placeholders != len(images):
        raise RowProblem(
            "images",
            f"prompt has {n_placeholders} image placeholder(s) but the row has {len(images)} image(s)",
            'add one {"type": "image"} part (or <image> tag) per image to the prompt, or fix the images list',
        )
    prompt, conversation = prompt_and_conversation(messages, "prompt")
    rid = str(row.get("id", ctx.default_id("trl")))
    meta = {"conversational": conversational}
    if "chosen" in row or "rejected" in row:
        chosen, rejected = answer_text(row.get("chosen"), "chosen"), answer_text(row.get("rejected"), "rejected")
        return [PreferenceRecord(rid, images, prompt, chosen, rejected, meta=meta, conversation=conversation)]
    if "completion" in row:
        completion = answer_text(row["completion"], "completion")
        if "label" not in row:  # prompt-completion: an SFT row
            return [PromptRecord(rid, images, prompt, reference=completion, meta=meta, conversation=conversation)]
        label = parse_bool(row["label"], "label")
        return [UnpairedRecord(rid, images, prompt, completion, label, meta=meta, conversation=conversation)]
    return [PromptRecord(rid, images, prompt, meta=meta, conversation=conversation)]


def detect_trl(keys: set[str]) -> bool:
    if "prompt" not in keys or "meta" in keys:  # "meta" marks our canonical rows
        return False
    known = {"prompt", "images", "image", "chosen", "rejected", "completion", "label", "id"}
    paired = {"chosen", "rejected"} <= keys
    completion = "completion" in keys
    prompt_only = keys <= {"prompt", "images", "image", "id"} and bool(keys & set(_IMAGE_KEYS))
    return (paired or completion or prompt_only) and keys <= known


TRL = register_format(
    Format(
        name="trl",
        description="TRL vision rows: images + prompt (+ chosen/rejected | completion (+label)); strings or messages",
        detect=detect_trl,
        convert=convert_trl,
        signature="prompt + images/image (+ chosen/rejected | completion/label), no other fields",
    )
)
