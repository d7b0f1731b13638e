"""MM-RLHF (``yifanzhang114/MM-RLHF``): ``dpo_pairs.jsonl``, pairs of differently-ranked answers.

Real layout (the project's README and ``llava/train/train_dpo.py``): ``prompt`` (LLaVA text; ``<image>``
tags mark image positions, absent tags mean "image first"), ``chosen``, ``rejected``, ``image`` (a path
or a list of paths relative to the dataset folder, which is where ``dpo_pairs.jsonl`` sits) or ``video``
(a folder of frames), and optional ``id``, ``chosen_reason`` / ``rejected_reason`` (the annotators'
critiques: kept in ``meta`` and, when both are non-empty, as the record's ``critique`` so a critique
reward model trains on them), ``is_tie``, ``ls_factor``.

Rules: video rows are skipped (listed, not dropped silently: vlalign trains on images); tied pairs
(``is_tie`` true) are skipped, since a tie carries no preference.
"""

from __future__ import annotations

from typing import Any

from vlalign.data.formats.base import (
    Format,
    RowContext,
    RowSkipped,
    image_refs,
    parse_bool,
    register_format,
    require_str,
)
from vlalign.data.messages import place_images, prompt_and_conversation, split_image_tags
from vlalign.data.records import CritiqueLabels, PreferenceRecord, Record

_META = ("chosen_reason", "rejected_reason", "ls_factor")
_MARKERS = {"video", "chosen_reason", "rejected_reason", "is_tie", "ls_factor", "mixed_up_image"}


def convert_mm_rlhf(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    if row.get("video") and not row.get("image"):
        raise RowSkipped("video row (vlalign trains on images; video frames are not supported)")
    if row.get("is_tie") is not None and parse_bool(row["is_tie"], "is_tie"):
        raise RowSkipped("tied pair (is_tie): no preference to learn")
    images = image_refs(row["image"], ctx, "image") if row.get("image") else []
    messages = place_images([{"role": "user", "content": split_image_tags(require_str(row, "prompt"))}],
                            len(images), "image")
    prompt, conversation = prompt_and_conversation(messages, "prompt")
    rid = str(row.get("id", ctx.default_id("mm_rlhf")))
    meta = {k: row[k] for k in _META if row.get(k) is not None}
    return [PreferenceRecord(rid, images, prompt, require_str(row, "chosen"), require_str(row, "rejected"),
                             critique=_critique(row), meta=meta, conversation=conversation)]


def _critique(row: dict[str, Any]) -> CritiqueLabels | None:
    """Both annotators' reasons as the pair's critiques; None unless both are non-empty text."""
    reasons = [row.get("chosen_reason"), row.get("rejected_reason")]
    if all(isinstance(r, str) and r.strip() for r in reasons):
        return CritiqueLabels(reasons[0].strip(), reasons[1].strip())
    return None


def detect_mm_rlhf(keys: set[str]) -> bool:
    return {"prompt", "chosen", "rejected"} <= keys and bool(keys & _MARKERS) and "meta" not in keys


MM_RLHF = register_format(
    Format(
        name="mm_rlhf",
        description="MM-RLHF dpo_pairs: prompt (<image> tags) + chosen + rejected + image|video (+ reasons, is_tie)",
        detect=detect_mm_rlhf,
        convert=convert_mm_rlhf,
        signature="prompt + chosen + rejected + one of video/chosen_reason/rejected_reason/is_tie/ls_factor",
    )
)
