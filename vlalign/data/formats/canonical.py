"""Our own JSONL (see :mod:`vlalign.data.records`): type-checks every field before building a record.

``from_dict`` trusts its input; this adapter does not. It reports the first wrong field of a row with
its expected type, and unknown keys with a did-you-mean (``rejectd`` would otherwise silently turn a
preference row into a prompt row).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import MISSING, fields
from typing import Any

from vlalign.data.formats.base import Format, RowContext, RowProblem, image_refs, register_format
from vlalign.data.io import JSON_TEXT_FIELDS
from vlalign.data.messages import check_conversation, normalize_messages
from vlalign.data.records import (
    RECORD_TYPES,
    CritiqueLabels,
    Record,
    SafetyLabels,
    Segment,
    from_dict,
    record_kind,
)

_NUM = (int, float)
# field -> (accepted python types, human name). Fields not listed are free-form (meta) or nested.
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "id": ((str, int), "string"),
    "prompt": ((str,), "string"),
    "chosen": ((str,), "string"),
    "rejected": ((str,), "string"),
    "completion": ((str,), "string"),
    "reference": ((str,), "string or null"),
    "label": ((bool,), "true/false"),
    "responses": ((list,), "list of strings"),
    "scores": ((list,), "list of numbers"),
    "margin": (_NUM, "number"),
    "meta": ((dict,), "object"),
    "ratings": ((dict,), "object {side: {aspect: number}}"),
    "rejected_segments": ((list,), "list of {start, end, correction, kind}"),
    "chosen_segments": ((list,), "list of {start, end, correction, kind}"),
    "safety": ((dict,), "object {chosen_safe, rejected_safe, safer, category, severity}"),
    "conversation": ((list,), "list of messages {role, content}"),
    "critique": ((dict,), "object {chosen, rejected, chosen_score, rejected_score}"),
}


def _check_nested(kwargs: dict[str, Any]) -> None:
    for key in ("rejected_segments", "chosen_segments"):
        for j, seg in enumerate(kwargs.get(key) or []):
            if not isinstance(seg, dict) or not isinstance(seg.get("start"), int) or not isinstance(seg.get("end"), int):
                raise RowProblem(f"{key}[{j}]", "segment needs integer 'start' and 'end'", "character offsets, end exclusive")
            _unknown_keys(seg, {f.name for f in fields(Segment)}, f"{key}[{j}]")
    safety = kwargs.get("safety")
    if isinstance(safety, dict):
        _unknown_keys(safety, {f.name for f in fields(SafetyLabels)}, "safety")
        for key in ("chosen_safe", "rejected_safe"):
            if not isinstance(safety.get(key), bool):
                raise RowProblem(f"safety.{key}", f"expected true/false, got {safety.get(key)!r}")
    critique = kwargs.get("critique")
    if isinstance(critique, dict):
        _unknown_keys(critique, {f.name for f in fields(CritiqueLabels)}, "critique")
        for key in ("chosen", "rejected"):
            if not isinstance(critique.get(key), str):
                raise RowProblem(f"critique.{key}", f"expected a string, got {type(critique.get(key)).__name__}",
                                 "give the critique text of both answers")
        for key in ("chosen_score", "rejected_score"):
            value = critique.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, _NUM)):
                raise RowProblem(f"critique.{key}", f"expected a number or null, got {value!r}")
    for key, conv in (("responses", str), ("scores", _NUM)):
        for j, item in enumerate(kwargs.get(key) or []):
            if not isinstance(item, conv) or isinstance(item, bool):
                raise RowProblem(f"{key}[{j}]", f"wrong type {type(item).__name__}")
    for side, aspects in (kwargs.get("ratings") or {}).items():
        if not isinstance(aspects, dict) or not all(isinstance(v, _NUM) for v in aspects.values()):
            raise RowProblem(f"ratings.{side}", "expected {aspect: number}")


def _unknown_keys(obj: dict[str, Any], known: set[str], where: str) -> None:
    for key in obj:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(sorted(known))}"
            raise RowProblem(f"{where}.{key}" if where else key, "unknown field", hint)


def _decode_json_text(row: dict[str, Any]) -> dict[str, Any]:
    """Drop null fields (Arrow tables holding several record kinds fill the others' fields with null)
    and parse the free-form fields that Parquet / ``save_to_disk`` outputs store as JSON text."""
    out = {k: v for k, v in row.items() if v is not None}
    for key in JSON_TEXT_FIELDS:
        if isinstance(out.get(key), str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError as exc:
                raise RowProblem(key, f"not valid JSON text ({exc.msg})", f"store {key!r} as an object/list") from None
            if out[key] is None:
                del out[key]
    return out


def convert_canonical(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    row = _decode_json_text(row)
    cls = RECORD_TYPES[record_kind(row)]
    spec = {f.name: f for f in fields(cls)}
    _unknown_keys(row, set(spec), "")
    for name, f in spec.items():
        if name not in row or row[name] is None:
            if f.default is MISSING and f.default_factory is MISSING:
                raise RowProblem(name, "missing field", f"{cls.__name__} rows need {name!r}")
            continue
        types, human = _TYPES.get(name, ((object,), ""))
        if name == "images":
            continue
        if not isinstance(row[name], types) or (bool not in types and isinstance(row[name], bool)):
            raise RowProblem(name, f"expected {human}, got {type(row[name]).__name__}", f"store {name!r} as {human}")
    _check_nested(row)
    if not isinstance(row.get("images"), list):
        raise RowProblem("images", f"expected a list of image refs, got {type(row.get('images')).__name__}")
    rec = from_dict({**row, "id": str(row["id"])})
    rec.images = image_refs(row["images"], ctx, "images") if row["images"] else []
    if rec.conversation is not None:
        rec.conversation = normalize_messages(rec.conversation, "conversation")
        check_conversation(rec.conversation)
    return [rec]


def detect_canonical(keys: set[str]) -> bool:
    return {"id", "images", "prompt", "meta"} <= keys


CANONICAL = register_format(
    Format("canonical", "vlalign JSONL: id, images, prompt, meta (+ chosen/rejected | responses | completion/label)",
           detect_canonical, convert_canonical, signature="id + images + prompt + meta")
)
