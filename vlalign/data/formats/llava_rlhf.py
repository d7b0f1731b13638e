"""LLaVA-RLHF human preferences (``zhiqings/LLaVA-Human-Preference-10K``, ``llava_7b_v1_preference.json``).

Real layout (as LLaVA-RLHF's ``RLHF/data_utils/data_utils_rm.py`` reads it): ``id``, ``image`` (a COCO
file name, relative to the image folder: set ``data.image_root``), ``conversations`` — LLaVA turns
``{"from": "human"|"gpt", "value": ...}`` with an ``<image>`` tag, often several turns, the last one a
``gpt`` turn whose value the two candidates replace — ``output_1`` / ``output_2`` (``{"from": "gpt",
"value": ...}``) and ``preference`` (1 or 2: which output the annotator preferred).

The earlier turns are kept as the conversation (not flattened), chosen = the preferred output.
"""

from __future__ import annotations

from typing import Any

from vlalign.data.formats.base import Format, RowContext, RowProblem, image_refs, register_format, require
from vlalign.data.messages import normalize_messages, place_images, prompt_and_conversation
from vlalign.data.records import PreferenceRecord, Record


def output_text(value: Any, key: str) -> str:
    """``output_k``: ``{"from": ..., "value": text}`` (only the value is used, as LLaVA-RLHF does) or text."""
    text = value.get("value") if isinstance(value, dict) else value
    if not isinstance(text, str) or not text.strip():
        raise RowProblem(key, f"expected {{'value': text}}, got {value!r:.60}", f"give {key} as {{'value': ...}}")
    return text


def convert_llava_rlhf(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    messages = normalize_messages(require(row, "conversations"), "conversations")
    if messages[-1]["role"] == "assistant":  # the slot the two outputs fill
        messages = messages[:-1]
    images = image_refs(row["image"], ctx, "image") if row.get("image") else []
    messages = place_images(messages, len(images), "image")
    prompt, conversation = prompt_and_conversation(messages, "conversations")
    pref = require(row, "preference")
    if isinstance(pref, bool) or str(pref).strip() not in ("1", "2"):
        raise RowProblem("preference", f"unknown preference {pref!r}", "use 1 (output_1 preferred) or 2")
    first, second = output_text(row.get("output_1"), "output_1"), output_text(row.get("output_2"), "output_2")
    chosen, rejected = (first, second) if str(pref).strip() == "1" else (second, first)
    rid = str(row.get("id", ctx.default_id("llava_rlhf")))
    meta = {k: row[k] for k in ("hallucination",) if k in row}
    return [PreferenceRecord(rid, images, prompt, chosen, rejected, meta=meta, conversation=conversation)]


def detect_llava_rlhf(keys: set[str]) -> bool:
    return {"conversations", "output_1", "output_2", "preference"} <= keys


LLAVA_RLHF = register_format(
    Format(
        name="llava_rlhf",
        description="LLaVA-RLHF human preferences: conversations + output_1/output_2 + preference (1|2) + image",
        detect=detect_llava_rlhf,
        convert=convert_llava_rlhf,
        signature="conversations + output_1 + output_2 + preference",
    )
)
