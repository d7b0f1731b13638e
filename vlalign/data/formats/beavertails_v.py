"""BeaverTails-V / PKU-SafeRLHF-V: two responses with helpfulness AND safety preferences (Safe RLHF).

Real layouts (dataset cards):
- BeaverTails-V preference configs: ``question``, ``image``, ``category``, ``image_severity``,
  ``response_1``/``response_2``, ``response_{1,2}_from``, ``more_helpful_response_id``,
  ``safer_response_id``, ``is_response_{1,2}_safe`` (strings), ``response_{1,2}_{harmless,helpful}_rate``;
- PKU-SafeRLHF style (0-based): ``prompt``/``question``, ``response_0``/``response_1``,
  ``better_response_id``, ``safer_response_id``, ``is_response_{0,1}_safe``, ``severity_level``.

Mapping (Safe RLHF convention): chosen/rejected follow HELPFULNESS (what the reward model learns);
``safety`` keeps which one is safer and whether each is safe on its own (what the cost model learns).
Option ``prefer=safer`` makes chosen/rejected follow safety instead (for plain safety DPO).
"""

from __future__ import annotations

from typing import Any

from vlalign.data.formats.base import (
    Format,
    RowContext,
    RowProblem,
    first_image,
    parse_bool,
    parse_number,
    register_format,
    require,
    require_str,
)
from vlalign.data.records import PreferenceRecord, Record, SafetyLabels

_HELPFUL_KEYS = ("more_helpful_response_id", "better_response_id")
_SEVERITY_KEYS = ("image_severity", "severity_level")
_RATE_ASPECTS = {"helpful_rate": "helpful", "harmless_rate": "harmless"}


def response_ids(row: dict[str, Any]) -> tuple[int, int]:
    """(first, second) response index: 0/1 (PKU-SafeRLHF) or 1/2 (BeaverTails-V)."""
    return (0, 1) if "response_0" in row else (1, 2)


def parse_id(row: dict[str, Any], key: str, ids: tuple[int, int]) -> int:
    value = require(row, key)
    try:
        rid = int(value)
    except (TypeError, ValueError):
        rid = None
    if rid not in ids or isinstance(value, bool):
        raise RowProblem(key, f"unknown response id {value!r}", f"use {ids[0]} or {ids[1]}")
    return rid


def _severity(row: dict[str, Any]) -> int | None:
    for key in _SEVERITY_KEYS:
        if row.get(key) is not None:
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
                raise RowProblem(key, f"severity must be an integer, got {value!r}")
            if int(value) < 0:
                raise RowProblem(key, f"severity must be >= 0, got {value}")
            return int(value)
    return None


def convert_beavertails_v(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    ids = response_ids(row)
    texts = {i: require_str(row, f"response_{i}") for i in ids}
    helpful_key = next((k for k in _HELPFUL_KEYS if k in row), _HELPFUL_KEYS[0])
    helpful, safer = parse_id(row, helpful_key, ids), parse_id(row, "safer_response_id", ids)
    safe = {i: parse_bool(require(row, f"is_response_{i}_safe"), f"is_response_{i}_safe") for i in ids}
    prefer = ctx.option("prefer", "helpful")
    if prefer not in ("helpful", "safer"):
        raise ValueError(f"beavertails_v option prefer={prefer!r}: use 'helpful' or 'safer'")
    chosen = helpful if prefer == "helpful" else safer
    rejected = ids[1] if chosen == ids[0] else ids[0]
    question = require_str(row, "question" if "question" in row else "prompt")
    rec = PreferenceRecord(
        str(row.get("id", ctx.default_id("beavertails_v"))),
        first_image(row, ctx, ("image", "image_path")),
        question,
        texts[chosen],
        texts[rejected],
        safety=SafetyLabels(
            chosen_safe=safe[chosen],
            rejected_safe=safe[rejected],
            safer="chosen" if safer == chosen else "rejected",
            category=row.get("category"),
            severity=_severity(row),
        ),
        meta={"prefer": prefer, **{f"{side}_from": row.get(f"response_{i}_from") for side, i in
                                    (("chosen", chosen), ("rejected", rejected)) if row.get(f"response_{i}_from")}},
    )
    for side, i in (("chosen", chosen), ("rejected", rejected)):
        rates = {name: parse_number(row[f"response_{i}_{key}"], f"response_{i}_{key}")
                 for key, name in _RATE_ASPECTS.items() if row.get(f"response_{i}_{key}") is not None}
        if rates:
            rec.ratings[side] = rates
    return [rec]


def detect_beavertails_v(keys: set[str]) -> bool:
    pair = {"response_0", "response_1"} <= keys or {"response_1", "response_2"} <= keys
    return pair and "safer_response_id" in keys


BEAVERTAILS_V = register_format(
    Format(
        name="beavertails_v",
        description="BeaverTails-V / SafeRLHF-V: responses + helpful/safer ids + per-response safety",
        detect=detect_beavertails_v,
        convert=convert_beavertails_v,
        options={"prefer": "helpful (default: chosen = more helpful) or safer"},
        signature="response_0/1 or response_1/2 + safer_response_id",
    )
)
