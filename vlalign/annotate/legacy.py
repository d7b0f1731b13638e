"""Sessions written before the database: ``items.jsonl`` + append-only ``annotations.jsonl`` + ``session.json``.

Read-only: :func:`read_legacy_session` is what ``vlalign annotate migrate --from-jsonl DIR`` imports
into the database. A torn last line (the old server killed mid-write) is reported, not imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vlalign.annotate.items import PairItem, load_items
from vlalign.annotate.judgements import Judgement

ANNOTATIONS_FILE = "annotations.jsonl"
SESSION_FILE = "session.json"


@dataclass
class LegacySession:
    dir: Path
    items: list[PairItem]
    judgements: list[Judgement]
    settings: dict = field(default_factory=dict)
    bad_lines: list[int] = field(default_factory=list)  # 1-based lines of annotations.jsonl that did not parse


def read_judgements(path: Path) -> tuple[list[Judgement], list[int]]:
    out: list[Judgement] = []
    bad: list[int] = []
    if not path.exists():
        return out, bad
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                out.append(Judgement.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, ValueError):
                bad.append(n)
    return out, bad


def read_legacy_session(folder: str | Path) -> LegacySession:
    """Items (image paths relative to ``folder``), judgements in file order, settings of a JSONL session."""
    d = Path(folder)
    if not (d / ANNOTATIONS_FILE).is_file() and not (d / "items.jsonl").is_file():
        raise FileNotFoundError(f"{d}: no items.jsonl / {ANNOTATIONS_FILE}; is it a session folder of "
                                "`vlalign annotate serve` from before the database?")
    items = load_items(d)
    judgements, bad = read_judgements(d / ANNOTATIONS_FILE)
    info = d / SESSION_FILE
    settings = json.loads(info.read_text()) if info.is_file() else {}
    return LegacySession(d, items, judgements, settings, bad)
