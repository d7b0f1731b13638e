"""A submit body → a :class:`Judgement` in source sides, or a :class:`BadSubmission` naming field and fix.

Body: ``{"item", "choice": "left"|"right"|"tie"|"skip", "corrections": [{"side": "left"|"right",
"start", "end", "correction", "kind"}], "ratings": {"left": {aspect: 1..5}, "right": {...}},
"unsafe": ["left"|"right"], "comment", "seconds", "client_key"}``. Offsets are Unicode code points
(the page converts from JavaScript's UTF-16 indexes), end exclusive. The browser speaks left/right;
the store speaks source sides (first/second) + the layout shown. Every string and list is bounded,
every number finite and in range.
"""

from __future__ import annotations

import math
import re
from itertools import pairwise
from typing import Any

from vlalign.annotate.items import PairItem, left_side, other
from vlalign.annotate.judgements import Correction, Judgement

CHOICES = ("left", "right", "tie", "skip")
MAX_COMMENT = 2000
MAX_CORRECTION = 2000
MAX_KIND = 64
MAX_CORRECTIONS = 100
MAX_SECONDS = 7 * 24 * 3600.0
CLIENT_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class BadSubmission(ValueError):
    """A submission the store must not take; the message names the field and the fix."""


def screen_sides(item_id: str, annotator: str, seed: int) -> dict[str, str]:
    """left/right (what the annotator saw) -> first/second (source order)."""
    left = left_side(item_id, annotator, seed)
    return {"left": left, "right": other(left)}


def _side(value: Any, field: str, sides: dict[str, str]) -> str:
    if not isinstance(value, str) or value not in sides:
        raise BadSubmission(f"{field}: {str(value)[:40]!r} (fix: use 'left' or 'right')")
    return sides[value]


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadSubmission(f"{field}: expected an integer character offset, got {str(value)[:40]!r}")
    return value


def _text(value: Any, field: str, limit: int, default: str = "") -> str:
    value = default if value is None else value
    if not isinstance(value, str) or len(value) > limit:
        raise BadSubmission(f"{field}: text of at most {limit} characters")
    return value


def _corrections(raw: Any, item: PairItem, sides: dict[str, str]) -> list[Correction]:
    if not isinstance(raw, list) or len(raw) > MAX_CORRECTIONS:
        raise BadSubmission(f"corrections: expected a list of at most {MAX_CORRECTIONS} {{side, start, end, correction}}")
    out: list[Correction] = []
    for k, c in enumerate(raw):
        where = f"corrections[{k}]"
        if not isinstance(c, dict):
            raise BadSubmission(f"{where}: expected an object {{side, start, end, correction, kind}}")
        side = _side(c.get("side"), f"{where}.side", sides)
        start, end = _int(c.get("start"), f"{where}.start"), _int(c.get("end"), f"{where}.end")
        n = len(item.text(side))
        if not 0 <= start < end <= n:
            raise BadSubmission(f"{where}: span ({start}, {end}) is outside the {c.get('side')} response "
                                f"(length {n}) or empty (fix: 0 <= start < end <= {n}, end exclusive)")
        fix = _text(c.get("correction"), f"{where}.correction", MAX_CORRECTION)
        kind = _text(c.get("kind"), f"{where}.kind", MAX_KIND)
        out.append(Correction(side, start, end, fix, kind or None))
    for side in {c.side for c in out}:
        spans = sorted((c.start, c.end) for c in out if c.side == side)
        for (s0, e0), (s1, e1) in pairwise(spans):
            if s1 < e0:
                raise BadSubmission(f"corrections: spans ({s0}, {e0}) and ({s1}, {e1}) overlap (fix: merge them)")
    return out


def _ratings(raw: Any, aspects: tuple[str, ...], sides: dict[str, str]) -> dict[str, dict[str, int]]:
    if not isinstance(raw, dict) or len(raw) > 2:
        raise BadSubmission("ratings: expected {\"left\": {aspect: 1..5}, \"right\": {...}}")
    out: dict[str, dict[str, int]] = {}
    for screen, scores in raw.items():
        side = _side(screen, "ratings.<side>", sides)
        if not isinstance(scores, dict):
            raise BadSubmission(f"ratings.{screen}: expected {{aspect: 1..5}}")
        for aspect, value in scores.items():
            if aspect not in aspects:
                raise BadSubmission(f"ratings.{screen}.{aspect[:40]}: unknown aspect (known: {', '.join(aspects)})")
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise BadSubmission(f"ratings.{screen}.{aspect}: {str(value)[:20]} (fix: an integer 1..5)")
        if scores:
            out[side] = dict(scores)
    return out


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_SECONDS:
        raise BadSubmission(f"seconds: {str(value)[:30]} (fix: a finite number of seconds, 0..{MAX_SECONDS:.0f}, or null)")
    return float(value)


def client_key(body: dict[str, Any]) -> str | None:
    """The page's idempotency key: a retried POST with the same key is stored once."""
    key = body.get("client_key")
    if key is not None and (not isinstance(key, str) or not CLIENT_KEY_RE.match(key)):
        raise BadSubmission("client_key: 8-64 letters, digits, '_' or '-' (or leave it out)")
    return key


def parse_submission(body: dict[str, Any], item: PairItem, annotator: str, seed: int,
                     aspects: tuple[str, ...]) -> Judgement:
    """Validate a submit body against the item and turn it into a :class:`Judgement` (source sides)."""
    sides = screen_sides(item.item_id, annotator, seed)
    choice = body.get("choice")
    if not isinstance(choice, str) or choice not in CHOICES:
        raise BadSubmission(f"choice: {str(choice)[:40]!r} (fix: one of {', '.join(CHOICES)})")
    unsafe = body.get("unsafe", [])
    if not isinstance(unsafe, list) or len(unsafe) > 2:
        raise BadSubmission("unsafe: expected a list such as [\"left\"]")
    return Judgement(
        item_id=item.item_id, annotator=annotator, outcome=sides.get(choice, choice), shown_left=sides["left"],
        corrections=_corrections(body.get("corrections", []), item, sides),
        ratings=_ratings(body.get("ratings", {}), aspects, sides),
        unsafe=sorted({_side(u, "unsafe[]", sides) for u in unsafe}),
        comment=_text(body.get("comment"), "comment", MAX_COMMENT), seconds=_seconds(body.get("seconds")),
    )
