"""RLHF-V (openbmb/RLHF-V-Dataset): human segment-level corrections of model answers.

Real layout (dataset card): ``ds_name``, ``image`` ({bytes, path}), ``text`` — a JSON *string* holding
``{"question", "chosen", "rejected"}`` — ``origin_dataset``, ``origin_split`` (JSON string: source model,
question type), ``idx`` (int), ``image_path``.

The released ``chosen`` is the annotator's correction of ``rejected``, so the corrected segments are
recovered by a word-level diff: every span of ``rejected`` that the annotator replaced or deleted
becomes a ``rejected_segments`` entry (with the replacement as ``correction``), and every span the
annotator wrote becomes a ``chosen_segments`` entry. Dense / segment-level DPO weights those tokens.
Turn this off with the format option ``segments=false``.
"""

from __future__ import annotations

import json
import re
from difflib import SequenceMatcher
from typing import Any

from vlalign.data.formats.base import (
    Format,
    RowContext,
    RowProblem,
    first_image,
    meta_from,
    register_format,
)
from vlalign.data.records import PreferenceRecord, Record, Segment

_WORD = re.compile(r"\S+")


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def _span(words: list[tuple[str, int, int]], i: int, j: int, text_len: int) -> tuple[int, int]:
    """Character span covering words[i:j]; an empty word range → an empty span at the insertion point."""
    if i < j:
        return words[i][1], words[j - 1][2]
    pos = words[i][1] if i < len(words) else text_len
    return pos, pos


def diff_segments(rejected: str, chosen: str) -> tuple[list[Segment], list[Segment]]:
    """Word-level diff of a corrected answer → (rejected_segments, chosen_segments).

    Example: rejected "a red cat sits", chosen "a blue cat sits" → rejected span (2, 5) "red" with
    correction "blue", chosen span (2, 6) "blue". Pure insertions give a rejected span of length 0
    (nothing was wrong there, something was missing) which we skip on the rejected side.
    """
    rw, cw = _words(rejected), _words(chosen)
    matcher = SequenceMatcher(a=[w for w, _, _ in rw], b=[w for w, _, _ in cw], autojunk=False)
    rej, cho = [], []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        rs, re_ = _span(rw, i1, i2, len(rejected))
        cs, ce = _span(cw, j1, j2, len(chosen))
        if re_ > rs:
            rej.append(Segment(rs, re_, correction=chosen[cs:ce], kind=tag))
        if ce > cs:
            cho.append(Segment(cs, ce, correction=None, kind=tag))
    return rej, cho


def convert_rlhf_v(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    raw = row.get("text")
    if raw is None:
        raise RowProblem("text", "missing field", 'RLHF-V rows hold {"question","chosen","rejected"} in text')
    try:
        text = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise RowProblem("text", f"not valid JSON ({exc.msg})", "text must be a JSON object string") from None
    if not isinstance(text, dict):
        raise RowProblem("text", f"expected a JSON object, got {type(text).__name__}")
    parts = {}
    for key in ("question", "chosen", "rejected"):
        value = text.get(key)
        if not isinstance(value, str):
            raise RowProblem(f"text.{key}", "missing or not a string", f"add {key!r} to the text JSON")
        parts[key] = value
    images = first_image(row, ctx, ("image", "image_path"))
    rid = f"rlhf_v-{row['idx']}" if row.get("idx") is not None else ctx.default_id("rlhf_v")
    rec = PreferenceRecord(
        rid, images, parts["question"], parts["chosen"], parts["rejected"],
        meta=meta_from(row, ("ds_name", "origin_dataset", "origin_split", "idx")),
    )
    if ctx.option("segments", True):
        rec.rejected_segments, rec.chosen_segments = diff_segments(rec.rejected, rec.chosen)
    return [rec]


def detect_rlhf_v(keys: set[str]) -> bool:
    return "text" in keys and bool(keys & {"image", "image_path"}) and bool(keys & {"idx", "ds_name", "origin_dataset"})


RLHF_V = register_format(
    Format(
        name="rlhf_v",
        description="openbmb/RLHF-V-Dataset: image + text JSON {question, chosen, rejected}; segments by diff",
        detect=detect_rlhf_v,
        convert=convert_rlhf_v,
        options={"segments": "recover corrected segments by word diff (default true)"},
        signature="text (JSON) + image/image_path + one of idx/ds_name/origin_dataset",
    )
)
