"""The canonical record schema every format adapter produces and every trainer consumes.

One JSON object per line (JSONL) on disk, so any split loads with
``datasets.load_dataset("json", data_files=...)``. Images are referenced, never inlined in the
record: a path (relative paths resolve against the file's folder), raw bytes, or the HF ``datasets``
Image struct ``{"bytes": ..., "path": ...}``; :func:`vlalign.data.images.open_image` opens all three.

Conversations: every record may carry ``conversation``, the turns that come BEFORE the answer being
trained or judged, as normalised messages ``{"role": "system"|"user"|"assistant", "content": [parts]}``
with parts ``{"type": "text", "text": ...}`` or ``{"type": "image"}`` (the k-th image part is
``images[k]``; see :mod:`vlalign.data.messages`). ``prompt`` is then the text of the last user turn, kept
for judges and reports. ``conversation`` is None for the common single-turn row (images first, then the
prompt), so such rows read exactly as before.

Record kinds (the ``kind`` of a file is implied by which of these it holds):
- :class:`PromptRecord`     — image(s) + prompt, optional reference answer and ground truth (SFT, RL, eval).
- :class:`PreferenceRecord` — image(s) + prompt + chosen/rejected; optional RLHF-V segment corrections,
  per-aspect ratings, safety labels and critiques of both answers.
- :class:`RankedRecord`     — image(s) + prompt + K responses ordered best first (Plackett–Luce).
- :class:`UnpairedRecord`   — image(s) + prompt + one completion labelled desirable or not (KTO).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# A reference to an image: a path, raw bytes, or {"bytes": b"...", "path": "..."} (HF datasets Image).
ImageRef = str | bytes | dict


@dataclass
class Segment:
    """An erroneous span of a response (RLHF-V fine-grained correction).

    ``start``/``end`` are character offsets into the response text (``end`` exclusive);
    ``correction`` is the text a human (or verifier) would put there instead ("" = delete).
    ``kind`` says what went wrong (e.g. ``object``, ``color``, ``count``, ``position``).
    """

    start: int
    end: int
    correction: str | None = None
    kind: str | None = None


@dataclass
class SafetyLabels:
    """Safe RLHF / BeaverTails-V style labels for a preference pair.

    ``safer`` names the safer response ("chosen" or "rejected"); ``*_safe`` say whether each is
    safe on its own (a cost model learns cost > 0 ⇔ unsafe); ``category`` and ``severity`` (0–3)
    describe the harm.
    """

    chosen_safe: bool
    rejected_safe: bool
    safer: str = "chosen"
    category: str | None = None
    severity: int | None = None


@dataclass
class CritiqueLabels:
    """Written critiques of both answers of a pair (MM-RLHF's critique reward model trains on them).

    ``chosen`` / ``rejected`` are the critique texts; ``chosen_score`` / ``rejected_score``, when both
    are given, are absolute scores the critique model's head regresses instead of the pairwise term.
    """

    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None


@dataclass
class PromptRecord:
    id: str
    images: list[ImageRef]
    prompt: str
    reference: str | None = None  # reference answer (SFT target), if any
    meta: dict[str, Any] = field(default_factory=dict)  # ground truth, task, split, harm labels ...
    conversation: list[dict[str, Any]] | None = None  # earlier turns + the last user turn (see above)


@dataclass
class PreferenceRecord:
    id: str
    images: list[ImageRef]
    prompt: str
    chosen: str
    rejected: str
    # Spans of `rejected` that are wrong, with their corrections (segment-level / dense DPO).
    rejected_segments: list[Segment] = field(default_factory=list)
    # Spans of `chosen` that were corrected (the corrected parts of a segment-corrected answer).
    chosen_segments: list[Segment] = field(default_factory=list)
    ratings: dict[str, dict[str, float]] = field(default_factory=dict)  # {"chosen": {aspect: score}, ...}
    safety: SafetyLabels | None = None
    margin: float | None = None  # optional preference strength (reward-model margin)
    critique: CritiqueLabels | None = None  # critiques of both answers (critique reward models)
    meta: dict[str, Any] = field(default_factory=dict)
    conversation: list[dict[str, Any]] | None = None


@dataclass
class RankedRecord:
    id: str
    images: list[ImageRef]
    prompt: str
    responses: list[str]  # best first
    scores: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    conversation: list[dict[str, Any]] | None = None


@dataclass
class UnpairedRecord:
    id: str
    images: list[ImageRef]
    prompt: str
    completion: str
    label: bool  # True = desirable
    meta: dict[str, Any] = field(default_factory=dict)
    conversation: list[dict[str, Any]] | None = None


Record = PromptRecord | PreferenceRecord | RankedRecord | UnpairedRecord

RECORD_TYPES: dict[str, type] = {
    "prompt": PromptRecord,
    "preference": PreferenceRecord,
    "ranked": RankedRecord,
    "unpaired": UnpairedRecord,
}


def record_kind(row: dict[str, Any]) -> str:
    """Which record type a canonical JSON row is (by its distinguishing fields)."""
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "responses" in row:
        return "ranked"
    if "completion" in row and "label" in row:
        return "unpaired"
    return "prompt"


def to_dict(rec: Record) -> dict[str, Any]:
    """Record → JSON-ready dict (bytes images must be written to files by the caller first)."""
    return asdict(rec)


def from_dict(row: dict[str, Any]) -> Record:
    """Canonical JSON row → record. Assumes the row passed :mod:`vlalign.data.validate`."""
    cls = RECORD_TYPES[record_kind(row)]
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in row.items() if k in names}
    if cls is PreferenceRecord:
        for key in ("rejected_segments", "chosen_segments"):
            kwargs[key] = [s if isinstance(s, Segment) else Segment(**s) for s in kwargs.get(key) or []]
        if isinstance(kwargs.get("safety"), dict):
            kwargs["safety"] = SafetyLabels(**kwargs["safety"])
        if isinstance(kwargs.get("critique"), dict):
            kwargs["critique"] = CritiqueLabels(**kwargs["critique"])
    return cls(**kwargs)
