"""Judgements → canonical :class:`PreferenceRecord` / :class:`RankedRecord` rows for `dpo` / `rm`.

Majority vote, per item, over the latest non-skip judgement of each annotator.

Tie rule (documented, deliberate): an item gets a winner only when one side has *strictly more*
votes than each of the other two outcomes ("first", "second", "tie"). 2×first + 1×second → first;
1×first + 1×second → tie; 1×first + 1×tie → tie; 2×tie + 1×first → tie. A tied item is not
exported as a preference pair (a coin-flipped label would teach noise); it is listed in the report,
and in a ranking it counts half a win for each side.

Other rules:
- corrections: the spans marked on the *losing* response become ``rejected_segments``; they are
  taken from one annotator — the earliest who voted with the majority and marked spans — because
  spans from different people overlap and cannot be merged safely. With ``corrected_pairs`` each
  such item also yields an RLHF-V pair: chosen = the loser with the corrections applied (the corrected
  spans in ``chosen_segments``), rejected = the loser.
- safety: a response is unsafe when at least half of the item's annotators flagged it (safety errs on
  the side of caution); ``safer`` is "rejected" only when the chosen one is unsafe and the other is not.
- ratings: the mean per aspect over the annotators who rated that response.
- quality control: ``weights`` (annotator -> weight, :func:`vlalign.annotate.quality.annotator_weights`)
  turn the vote into a weighted vote; annotators of weight 0 (disabled, or below a gold-accuracy
  threshold) are left out of everything, their spans and flags included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vlalign.annotate.items import SIDES, PairItem, other
from vlalign.annotate.judgements import Judgement, votes_by_item
from vlalign.data.io import write_jsonl
from vlalign.data.records import PreferenceRecord, RankedRecord, Record, SafetyLabels, Segment, to_dict


@dataclass
class Decision:
    winner: str | None  # "first" | "second" | None (tie)
    counts: dict[str, float]  # votes (weighted votes when weights are given)
    votes: list[Judgement] = field(default_factory=list)


def majority(votes: list[Judgement], weights: dict[str, float] | None = None) -> Decision:
    counts: Counter[str] = Counter()
    for j in votes:
        counts[j.outcome] += 1 if weights is None else weights.get(j.annotator, 1.0)
    full = {k: counts.get(k, 0) for k in ("first", "second", "tie")}
    for side in SIDES:
        if all(full[side] > full[o] for o in full if o != side):
            return Decision(side, full, votes)
    return Decision(None, full, votes)


def loser_segments(d: Decision) -> list[Segment]:
    loser = other(d.winner)
    for j in d.votes:  # votes are in store order, so this is the earliest majority voter with spans
        spans = [c for c in j.corrections if c.side == loser]
        if j.outcome == d.winner and spans:
            return [Segment(c.start, c.end, c.correction, c.kind) for c in sorted(spans, key=lambda c: c.start)]
    return []


def apply_corrections(text: str, segments: list[Segment]) -> tuple[str, list[Segment]]:
    """Replace each span by its correction; return the new text and the corrected spans within it.

    Deletions (empty correction) leave no span in the new text, so they add no chosen segment.
    """
    out, spans, pos = [], [], 0
    for seg in sorted(segments, key=lambda s: s.start):
        out.append(text[pos:seg.start])
        start = sum(len(p) for p in out)
        fix = seg.correction or ""
        out.append(fix)
        if fix:
            spans.append(Segment(start, start + len(fix), None, seg.kind))
        pos = seg.end
    out.append(text[pos:])
    return "".join(out), spans


def safety_labels(d: Decision) -> SafetyLabels:
    n = len(d.votes)
    unsafe = {side: 2 * sum(side in j.unsafe for j in d.votes) >= n for side in SIDES}
    chosen_safe, rejected_safe = not unsafe[d.winner], not unsafe[other(d.winner)]
    return SafetyLabels(chosen_safe, rejected_safe, "rejected" if (rejected_safe and not chosen_safe) else "chosen")


def mean_ratings(votes: list[Judgement], side: str) -> dict[str, float]:
    scores: dict[str, list[int]] = {}
    for j in votes:
        for aspect, value in j.ratings.get(side, {}).items():
            scores.setdefault(aspect, []).append(value)
    return {a: round(sum(v) / len(v), 4) for a, v in scores.items()}


def _annotation_meta(item: PairItem, d: Decision) -> dict[str, Any]:
    meta: dict[str, Any] = {"item_id": item.item_id, "votes": d.counts,
                            "annotators": [j.annotator for j in d.votes]}
    if item.source_order == ("chosen", "rejected") and d.winner:
        meta["agrees_with_source"] = d.winner == "first"
    other_spans = [dict(annotator=j.annotator, **vars(c)) for j in d.votes for c in j.corrections
                   if c.side == d.winner]
    if other_spans:
        meta["spans_marked_on_chosen"] = other_spans
    return meta


def preference_record(item: PairItem, d: Decision) -> PreferenceRecord:
    win, lose = d.winner, other(d.winner)
    ratings = {name: r for name, r in (("chosen", mean_ratings(d.votes, win)),
                                       ("rejected", mean_ratings(d.votes, lose))) if r}
    return PreferenceRecord(
        id=item.item_id, images=list(item.images), prompt=item.prompt,
        chosen=item.text(win), rejected=item.text(lose), rejected_segments=loser_segments(d),
        ratings=ratings, safety=safety_labels(d), meta={**item.meta, "annotation": _annotation_meta(item, d)},
    )


def corrected_record(rec: PreferenceRecord) -> PreferenceRecord | None:
    """RLHF-V style pair: the rejected answer with its corrections applied is the chosen one."""
    if not rec.rejected_segments:
        return None
    fixed, spans = apply_corrections(rec.rejected, rec.rejected_segments)
    if fixed.strip() == rec.rejected.strip() or not fixed.strip():
        return None
    return replace(rec, id=f"{rec.id}:corrected", chosen=fixed, chosen_segments=spans, ratings={}, safety=None,
                   meta={**rec.meta, "corrected_from": rec.id})


def _decisions(items: list[PairItem], judgements: list[Judgement], min_votes: int,
               report: dict[str, Any], weights: dict[str, float] | None = None) -> dict[str, Decision]:
    if weights is not None:
        report["excluded_annotators"] = sorted(a for a, w in weights.items() if w <= 0)
        judgements = [j for j in judgements if weights.get(j.annotator, 1.0) > 0]
    votes = votes_by_item(judgements)
    out: dict[str, Decision] = {}
    for it in items:
        v = votes.get(it.item_id, [])
        if not v:
            report["unlabelled"] += 1
        elif len(v) < min_votes:
            report["below_min_votes"].append(it.item_id)
        else:
            out[it.item_id] = majority(v, weights)
    return out


def _new_report(items: list[PairItem]) -> dict[str, Any]:
    return {"items": len(items), "unlabelled": 0, "below_min_votes": [], "ties": [], "exported": 0}


def export_preferences(items: list[PairItem], judgements: list[Judgement], min_votes: int = 1,
                       corrected_pairs: bool = False, weights: dict[str, float] | None = None,
                       ) -> tuple[list[PreferenceRecord], dict[str, Any]]:
    items = [it for it in items if it.gold is None]
    report = _new_report(items)
    records: list[PreferenceRecord] = []
    decisions = _decisions(items, judgements, min_votes, report, weights)
    for it in items:
        d = decisions.get(it.item_id)
        if d is None:
            continue
        if d.winner is None:
            report["ties"].append(it.item_id)
            continue
        rec = preference_record(it, d)
        records.append(rec)
        fixed = corrected_record(rec) if corrected_pairs else None
        if fixed is not None:
            records.append(fixed)
    report["exported"] = len(records)
    judged = [r.meta["annotation"]["agrees_with_source"] for r in records
              if "corrected_from" not in r.meta and "agrees_with_source" in r.meta["annotation"]]
    if judged:
        report["agreement_with_source"] = round(sum(judged) / len(judged), 6)
    return records, report


def _source_index(item: PairItem, k: int) -> int:
    label = item.source_order[k]
    return int(label) if label.isdigit() else k


def export_ranked(items: list[PairItem], judgements: list[Judgement], min_votes: int = 1,
                  weights: dict[str, float] | None = None) -> tuple[list[RankedRecord], dict[str, Any]]:
    """One ranking per source record whose every pair was decided: 1 point per majority win, ½ per tie;
    responses sorted by points, equal points keep source order (stable sort). Incomplete records are skipped."""
    items = [it for it in items if it.gold is None]
    report = _new_report(items)
    report["incomplete_records"] = []
    decisions = _decisions(items, judgements, min_votes, report, weights)
    groups: dict[str, list[PairItem]] = {}
    for it in items:
        groups.setdefault(it.record_id, []).append(it)
    records: list[RankedRecord] = []
    for record_id, group in groups.items():
        if any(it.item_id not in decisions for it in group):
            report["incomplete_records"].append(record_id)
            continue
        texts: dict[int, str] = {}
        points: Counter[int] = Counter()
        for it in group:
            idx = {side: _source_index(it, k) for k, side in enumerate(SIDES)}
            texts.update({idx[s]: it.text(s) for s in SIDES})
            d = decisions[it.item_id]
            if d.winner is None:
                report["ties"].append(it.item_id)
                points.update({idx["first"]: 0.5, idx["second"]: 0.5})
            else:
                points[idx[d.winner]] += 1.0
        order = sorted(texts, key=lambda i: -points[i])
        first = group[0]
        records.append(RankedRecord(record_id, list(first.images), first.prompt, [texts[i] for i in order],
                                    [points[i] for i in order],
                                    {**first.meta, "annotation": {"pairs": len(group), "source_indexes": order}}))
    report["exported"] = len(records)
    return records, report


def write_export(records: list[Record], out_file: str | Path, image_files: Callable[[list[str], Path], dict]) -> Path:
    """Write records as canonical JSONL next to their images.

    Items refer to images by SHA-256; ``image_files(hashes, folder)`` (e.g. ``Store.image_files``
    with its arguments swapped, see :func:`store_images`) writes them as ``OUT_DIR/images/<sha256>.<ext>``:
    content-addressed names never collide, and re-exporting rewrites nothing."""
    out_file = Path(out_file)
    out_dir = out_file.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = image_files(sorted({h for rec in records for h in rec.images}), out_dir / "images")
    rows = (to_dict(replace(rec, images=[f"images/{paths[h].name}" for h in rec.images])) for rec in records)
    write_jsonl(rows, out_file)
    return out_file


def store_images(store: Any) -> Callable[[list[str], Path], dict]:
    """The ``image_files`` argument of :func:`write_export` for a project database."""
    return lambda hashes, folder: store.image_files(folder, hashes)
