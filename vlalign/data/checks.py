"""Record checks: the same for every format, one small function per concern, picked by record type.

The adapter already refused rows whose fields are missing or mistyped; these checks find what is
wrong in well-formed rows: empty texts, chosen == rejected, unreadable or oversized images, spans outside
the text or overlapping, bad safety/ranking values, NaN/inf in any number, lone surrogates in any text,
conversations whose image marks do not match the images. Each problem is a ``(field, reason, fix)``
tuple; :func:`record_warnings` lists what is suspicious but allowed (control characters, answers equal
up to case and spacing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

from vlalign.data.images import ImageChecker
from vlalign.data.messages import count_images
from vlalign.data.records import PreferenceRecord, PromptRecord, RankedRecord, Record, Segment, UnpairedRecord

Problem = tuple[str, str, str]  # (field, reason, fix)

# C0 controls except tab/newline/carriage return, and DEL: invisible, and they break tokenizers and JSON tools.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SPACE = re.compile(r"\s+")


def _nonempty(value: Any, name: str) -> list[Problem]:
    if not isinstance(value, str) or not value.strip():
        return [(name, "empty text", f"fill in {name!r} or drop the row")]
    return []


def text_fields(rec: Record) -> Iterator[tuple[str, Any]]:
    """(field name, text) of every string the record will feed a tokenizer or a file."""
    yield "id", rec.id
    yield "prompt", rec.prompt
    for name in ("chosen", "rejected", "completion", "reference"):
        if getattr(rec, name, None) is not None:
            yield name, getattr(rec, name)
    for j, resp in enumerate(getattr(rec, "responses", None) or []):
        yield f"responses[{j}]", resp
    critique = getattr(rec, "critique", None)
    if critique is not None:
        yield "critique.chosen", critique.chosen
        yield "critique.rejected", critique.rejected
    for side in ("rejected_segments", "chosen_segments"):
        for j, seg in enumerate(getattr(rec, side, None) or []):
            if seg.correction is not None:
                yield f"{side}[{j}].correction", seg.correction
    for i, msg in enumerate(rec.conversation or []):
        for j, part in enumerate(msg["content"]):
            if part.get("type") == "text":
                yield f"conversation[{i}].content[{j}]", part["text"]


def check_strings(rec: Record) -> list[Problem]:
    """Lone surrogates, by position: text that cannot be written as UTF-8 (writers, tokenizers and the
    annotation app fail on it later, far from the row)."""
    out = []
    for name, text in text_fields(rec):
        bad = _SURROGATE.search(text) if isinstance(text, str) else None
        if bad:
            out.append((name, f"lone surrogate {bad.group()!r} at character {bad.start()} (not valid Unicode text; "
                              "often a mis-decoded byte)", "re-decode the source text as UTF-8 or remove it"))
    return out


def control_characters(rec: Record) -> list[Problem]:
    """Invisible control characters (a warning: they survive JSON and tokenizers, but are rarely meant;
    sampled answers of a barely trained model contain them)."""
    out = []
    for name, text in text_fields(rec):
        ctrl = _CONTROL.search(text) if isinstance(text, str) else None
        if ctrl:
            out.append((name, f"control character {ctrl.group()!r} at character {ctrl.start()}",
                        "remove it unless it is meant (tab, newline and carriage return are not reported)"))
    return out


def _finite(value: Any, name: str) -> list[Problem]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return [(name, f"{value!r} is not a finite number", "use a finite number (NaN/inf carry no information)")]
    return []


def check_conversation_images(rec: Record) -> list[Problem]:
    if rec.conversation is None:
        return []
    marked = count_images(rec.conversation)
    if marked != len(rec.images):
        return [("conversation", f"the conversation marks {marked} image(s) but the row has {len(rec.images)}",
                 "mark each image once, where it belongs, or fix the images list")]
    return []


def check_common(rec: Record, images: ImageChecker) -> list[Problem]:
    out = _nonempty(rec.id, "id") + _nonempty(rec.prompt, "prompt") + check_strings(rec) + check_conversation_images(rec)
    if not rec.images:
        out.append(("images", "row has no image", "add an image path/bytes (this is vision-language data)"))
    for k, ref in enumerate(rec.images):
        reason = images.problem(ref)
        if reason:
            out.append((f"images[{k}]", reason, "fix the path (relative to the data file) or replace the image"))
    return out


def check_segments(segments: list[Segment], text: str, name: str, *, insertion_needs_text: bool = True) -> list[Problem]:
    """Spans must lie inside the text and not overlap (end is exclusive).

    A zero-length span (start == end) is an insertion point: an omission in a rejected answer is
    fixed by inserting its ``correction`` there, and the chosen answer marks where a deleted
    segment used to be. With ``insertion_needs_text`` (rejected side) such a span must carry a
    non-empty correction, or it changes nothing.
    """
    out, prev_end = [], None
    for j, seg in sorted(enumerate(segments), key=lambda js: (js[1].start, js[1].end)):
        where = f"{name}[{j}]"
        if not (0 <= seg.start <= seg.end <= len(text)):
            out.append((where, f"span ({seg.start}, {seg.end}) is outside the text (length {len(text)})",
                        "use 0 <= start <= end <= len(text), character offsets"))
            continue
        if seg.start == seg.end and insertion_needs_text and not seg.correction:
            out.append((where, f"empty span ({seg.start}, {seg.end}) with no correction changes nothing",
                        "give the text to insert as `correction`, or drop the segment"))
            continue
        if prev_end is not None and seg.start < prev_end:
            out.append((where, f"span ({seg.start}, {seg.end}) overlaps the previous span ending at {prev_end}",
                        "merge or split the overlapping spans"))
        prev_end = max(prev_end or 0, seg.end)
    return out


def check_ratings(ratings: dict[str, dict[str, float]]) -> list[Problem]:
    return [p for side, aspects in ratings.items() for aspect, v in aspects.items()
            for p in _finite(v, f"ratings.{side}.{aspect}")]


def normalized(text: str) -> str:
    """Case- and whitespace-insensitive form, for near-duplicate answers."""
    return _SPACE.sub(" ", text).strip().casefold()


def check_preference(rec: PreferenceRecord, images: ImageChecker) -> list[Problem]:
    out = check_common(rec, images) + _nonempty(rec.chosen, "chosen") + _nonempty(rec.rejected, "rejected")
    if isinstance(rec.chosen, str) and rec.chosen.strip() and rec.chosen.strip() == str(rec.rejected).strip():
        out.append(("rejected", "chosen and rejected are identical", "drop the row: it carries no preference"))
    out += check_segments(rec.rejected_segments, rec.rejected or "", "rejected_segments")
    out += check_segments(rec.chosen_segments, rec.chosen or "", "chosen_segments", insertion_needs_text=False)
    if rec.safety is not None:
        if rec.safety.safer not in ("chosen", "rejected"):
            out.append(("safety.safer", f"unknown value {rec.safety.safer!r}", "use 'chosen' or 'rejected'"))
        sev = rec.safety.severity
        if sev is not None and (isinstance(sev, bool) or not isinstance(sev, int) or sev < 0):
            out.append(("safety.severity", f"severity must be an integer >= 0, got {sev!r}", "use 0 (none) .. 3"))
    if rec.margin is not None:
        out += _finite(rec.margin, "margin")
    if rec.critique is not None:
        out += _nonempty(rec.critique.chosen, "critique.chosen") + _nonempty(rec.critique.rejected, "critique.rejected")
        scores = [(k, getattr(rec.critique, k)) for k in ("chosen_score", "rejected_score")]
        out += [p for k, v in scores if v is not None for p in _finite(v, f"critique.{k}")]
        if sum(v is None for _, v in scores) == 1:
            out.append(("critique", "only one of chosen_score / rejected_score is given",
                        "give both scores (regression) or neither (pairwise loss)"))
    return out + check_ratings(rec.ratings)


def check_ranked(rec: RankedRecord, images: ImageChecker) -> list[Problem]:
    out = check_common(rec, images)
    if len(rec.responses) < 2:
        out.append(("responses", f"{len(rec.responses)} response(s); a ranking needs >= 2", "add responses"))
    for j, resp in enumerate(rec.responses):
        out += _nonempty(resp, f"responses[{j}]")
    if len({r.strip() for r in rec.responses if isinstance(r, str)}) < len(rec.responses):
        out.append(("responses", "duplicate responses", "remove the duplicates"))
    if rec.scores is not None:
        bad = [p for j, s in enumerate(rec.scores) for p in _finite(s, f"scores[{j}]")]
        if bad:
            out += bad
        elif len(rec.scores) != len(rec.responses):
            out.append(("scores", f"{len(rec.scores)} scores for {len(rec.responses)} responses", "one score each"))
        elif any(a < b for a, b in zip(rec.scores, rec.scores[1:])):
            out.append(("scores", "scores are not in descending order (responses must be best first)",
                        "sort responses by score, best first"))
    for j, ratings in enumerate(rec.meta.get("ratings") or [] if isinstance(rec.meta, dict) else []):
        if isinstance(ratings, dict):
            out += [p for aspect, v in ratings.items() for p in _finite(v, f"meta.ratings[{j}].{aspect}")]
    return out


def check_unpaired(rec: UnpairedRecord, images: ImageChecker) -> list[Problem]:
    out = check_common(rec, images) + _nonempty(rec.completion, "completion")
    if not isinstance(rec.label, bool):
        out.append(("label", f"label must be true/false, got {rec.label!r}", "use true (desirable) or false"))
    return out


CHECKS: dict[type, Callable[[Any, ImageChecker], list[Problem]]] = {
    PromptRecord: check_common,
    PreferenceRecord: check_preference,
    RankedRecord: check_ranked,
    UnpairedRecord: check_unpaired,
}


def check_record(rec: Record, images: ImageChecker) -> list[Problem]:
    """Every problem of one record; an exception inside a check is this row's problem, never a crash."""
    try:
        return CHECKS[type(rec)](rec, images)
    except Exception as exc:  # noqa: BLE001 (a failing check is this row's error, never a crash)
        return [("<row>", f"the checks failed on this row ({type(exc).__name__}: {exc})",
                 "fix the row's field types (and report the row to vlalign if they look right)")]


def record_warnings(rec: Record) -> list[Problem]:
    """Allowed but suspicious: answers that differ only in case or spacing carry almost no preference;
    control characters in any text."""
    out = control_characters(rec)
    chosen, rejected = getattr(rec, "chosen", None), getattr(rec, "rejected", None)
    if isinstance(chosen, str) and isinstance(rejected, str) and chosen.strip() != rejected.strip() \
            and normalized(chosen) == normalized(rejected):
        out.append(("rejected", "chosen and rejected differ only in case or spacing",
                    "check the pair: the model will learn formatting, not content"))
    return out
