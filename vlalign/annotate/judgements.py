"""What one annotator said about one item (:class:`Judgement`), and the vote-counting rules on them.

Judgements are kept as history: a changed mind adds a judgement, readers take the latest one per
(item, annotator) (:func:`latest_judgements`), so the record of who said what when stays auditable.
Sides are the item's *source* order ("first", "second"); the screen layout is kept in ``shown_left``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("first", "second", "tie", "skip")  # in source order of the item's responses


@dataclass
class Correction:
    """A span of one response (source side) marked wrong, with the text that should replace it."""

    side: str  # "first" | "second"
    start: int  # character offsets (Unicode code points), end exclusive
    end: int
    correction: str = ""  # "" = delete the span
    kind: str | None = None


@dataclass
class Judgement:
    item_id: str
    annotator: str
    outcome: str  # one of OUTCOMES: which source side is better, "tie", or "skip"
    shown_left: str  # source side that was shown on the left (the randomised layout)
    corrections: list[Correction] = field(default_factory=list)
    ratings: dict[str, dict[str, int]] = field(default_factory=dict)  # side -> {aspect: 1..5}
    unsafe: list[str] = field(default_factory=list)  # sides flagged unsafe
    comment: str = ""
    seconds: float | None = None  # time the annotator spent, as measured by the page
    time: str = ""  # ISO-8601 UTC, set by the store
    id: str = ""  # unique judgement id, set by the store

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Judgement:
        row = dict(row)
        row["corrections"] = [Correction(**c) for c in row.get("corrections") or []]
        return cls(**row)


def latest_judgements(judgements: list[Judgement]) -> list[Judgement]:
    """The last judgement per (item, annotator), in first-seen order: a revision replaces, never adds, a vote."""
    last: dict[tuple[str, str], Judgement] = {}
    for j in judgements:
        last.pop((j.item_id, j.annotator), None)  # re-insert to keep order by latest time
        last[(j.item_id, j.annotator)] = j
    return list(last.values())


def votes_by_item(judgements: list[Judgement]) -> dict[str, list[Judgement]]:
    """item_id -> latest non-skip judgements (one per annotator)."""
    out: dict[str, list[Judgement]] = {}
    for j in latest_judgements(judgements):
        if j.outcome != "skip":
            out.setdefault(j.item_id, []).append(j)
    return out
