"""What an annotator judges: a :class:`PairItem` — one image+prompt and two responses.

Candidate files hold canonical :class:`PreferenceRecord` rows (one pair each) or :class:`RankedRecord`
rows / a prompt with K responses (every one of the K·(K−1)/2 pairs becomes an item). The two responses
are kept in *source order* ("first", "second"); which one the source called "chosen" is stored in
``source_order`` for later comparison but is never sent to the browser, and the left/right placement
is re-randomised per (item, annotator) so that position cannot leak the source label either.

A project stores its items and their image bytes in its database (images by SHA-256, see
:func:`image_blobs`), so that `export` and `agreement` need nothing but the database, even if the data
file moves. ``items.jsonl`` snapshots (:func:`load_items`) are the layout of sessions from before the
database, read by the migration.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from vlalign.data.images import image_extension
from vlalign.data.io import write_jsonl
from vlalign.data.records import PreferenceRecord, RankedRecord, Record

SIDES = ("first", "second")  # source order of an item's two responses
ITEMS_FILE = "items.jsonl"


@dataclass
class PairItem:
    item_id: str
    record_id: str  # the source record (several items share it when the source had K > 2 responses)
    images: list[str]  # SHA-256 of the image bytes (database); paths relative to the folder (JSONL sessions)
    prompt: str
    responses: tuple[str, str]  # (first, second), source order
    # What the source said about each side: ("chosen", "rejected") for a preference row, or the
    # indexes into the source's response list for ranked rows, e.g. ("0", "2").
    source_order: tuple[str, str] = ("", "")
    n_source_responses: int = 2
    meta: dict[str, Any] = field(default_factory=dict)
    gold: str | None = None  # known answer of a gold item ("first" | "second" | "tie"); None = not gold

    def text(self, side: str) -> str:
        return self.responses[SIDES.index(side)]


def items_from_record(rec: Record) -> list[PairItem]:
    """One item per response pair of a candidate record; other record kinds are an error for the caller."""
    if isinstance(rec, PreferenceRecord):
        return [PairItem(rec.id, rec.id, list(rec.images), rec.prompt, (rec.chosen, rec.rejected),
                         ("chosen", "rejected"), 2, dict(rec.meta))]
    if isinstance(rec, RankedRecord):
        k = len(rec.responses)
        return [
            PairItem(f"{rec.id}:{i}-{j}", rec.id, list(rec.images), rec.prompt,
                     (rec.responses[i], rec.responses[j]), (str(i), str(j)), k, dict(rec.meta))
            for i, j in combinations(range(k), 2)
        ]
    raise TypeError(type(rec).__name__)


def build_items(records: list[Record], source: str) -> tuple[list[PairItem], dict[str, bytes]]:
    """Items for every candidate record, their images as SHA-256 references, and the bytes by hash."""
    items: list[PairItem] = []
    blobs: dict[str, bytes] = {}
    for row, rec in enumerate(records):
        if not isinstance(rec, (PreferenceRecord, RankedRecord)):
            raise ValueError(  # noqa: TRY004 (bad data, reported like every other data error)
                f"{source}: record {rec.id!r} (row {row}) is a {type(rec).__name__}; annotation needs "
                "candidate pairs (fix: give preference rows with chosen/rejected, or rows with "
                "'responses': [two or more answers])"
            )
        hashes = []
        for ref in rec.images:
            data = image_bytes(ref)
            sha = hashlib.sha256(data).hexdigest()
            blobs.setdefault(sha, data)
            hashes.append(sha)
        for it in items_from_record(rec):
            it.images = list(hashes)
            items.append(it)
    return items, blobs


def image_bytes(ref: Any) -> bytes:
    """The encoded bytes of an image reference of a loaded record (path, bytes, or {"bytes", "path"})."""
    if isinstance(ref, dict):
        ref = ref.get("bytes") or ref.get("path")
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    return Path(str(ref)).read_bytes()


def image_mime(data: bytes) -> str:
    ext = image_extension(data)
    return "image/jpeg" if ext in ("jpg", "jpeg") else f"image/{ext}"


def save_items(items: list[PairItem], session_dir: Path) -> Path:
    path = Path(session_dir) / ITEMS_FILE
    write_jsonl((asdict(it) for it in items), path)
    return path


def load_items(session_dir: Path) -> list[PairItem]:
    path = Path(session_dir) / ITEMS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no items snapshot; is {session_dir} a folder written by `vlalign annotate serve`?"
        )
    items = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                row["responses"] = tuple(row["responses"])
                row["source_order"] = tuple(row["source_order"])
                items.append(PairItem(**row))
    return items


def items_fingerprint(items: list[PairItem]) -> str:
    """A short hash of ids + texts: a session folder must not silently switch to different data."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.item_id, it.prompt, list(it.responses)], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def left_side(item_id: str, annotator: str, seed: int) -> str:
    """Which source side is shown on the LEFT for this annotator: a fair coin, fixed per (item, annotator).

    Deterministic (a hash, not a live RNG) so a reload shows the same layout, and a resumed session
    records the same mapping; different annotators see independent layouts.
    """
    digest = hashlib.sha256(f"{seed}\x00{item_id}\x00{annotator}".encode()).digest()
    return SIDES[digest[0] & 1]


def public_id(secret: str, item_id: str) -> str:
    """The opaque id the browser and outside tools see for an item: HMAC-SHA256 with the project's secret,
    so no id pattern tells gold items apart and ids cannot be guessed or enumerated."""
    return hmac.new(secret.encode(), item_id.encode(), hashlib.sha256).hexdigest()[:24]


def other(side: str) -> str:
    return SIDES[1 - SIDES.index(side)]
