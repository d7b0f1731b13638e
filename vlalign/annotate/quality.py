"""Quality control of annotators: accuracy on gold items, agreement with the majority, time per item,
and the weights (or exclusions) the export applies.

WHY these three: gold accuracy measures an annotator against known answers (it catches the careless
and the adversarial, whatever the others do); agreement with the leave-one-out majority measures them
against their peers on ordinary items (it needs no gold, but a team that is wrong together looks
fine); time per item flags clicking through (seconds far below the team's median).
Accuracies carry a 95% bootstrap interval over the annotator's gold items
(:func:`vlalign.evaluation.stats.bootstrap_ci`): with 10 gold items, 0.8 means anything from ~0.5 to 1.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import datetime
from typing import Any

from vlalign.annotate.items import PairItem
from vlalign.annotate.judgements import Judgement, latest_judgements, votes_by_item
from vlalign.evaluation.stats import bootstrap_ci

LABELS = ("first", "second", "tie")


def strict_majority(labels: list[str]) -> str | None:
    """The label with strictly more votes than every other label, else None."""
    counts = Counter(labels)
    if not counts:
        return None
    (top, n), *rest = counts.most_common()
    return top if not rest or rest[0][1] < n else None


def gold_hits(items: list[PairItem], judgements: list[Judgement]) -> dict[str, list[int]]:
    """annotator -> 1/0 per gold item they judged (latest judgement; skips are not answers)."""
    gold = {it.item_id: it.gold for it in items if it.gold is not None}
    out: dict[str, list[int]] = {}
    for j in latest_judgements(judgements):
        if j.item_id in gold and j.outcome != "skip":
            out.setdefault(j.annotator, []).append(int(j.outcome == gold[j.item_id]))
    return out


def majority_agreement(judgements: list[Judgement], exclude: set[str] | None = None) -> dict[str, dict[str, float]]:
    """annotator -> {n, agree, rate}: how often their label equals the strict majority of the OTHER
    annotators of the item (items where the others are fewer than 2 or split evenly do not count)."""
    out: dict[str, dict[str, float]] = {}
    for item, votes in votes_by_item(judgements).items():
        if exclude and item in exclude:
            continue
        for j in votes:
            others = [v.outcome for v in votes if v.annotator != j.annotator]
            maj = strict_majority(others) if len(others) >= 2 else None
            if maj is None:
                continue
            row = out.setdefault(j.annotator, {"n": 0, "agree": 0})
            row["n"] += 1
            row["agree"] += int(j.outcome == maj)
    for row in out.values():
        row["rate"] = row["agree"] / row["n"]
    return out


def seconds_per_item(judgements: list[Judgement],
                     served: dict[tuple[str, str], tuple[datetime, datetime | None]] | None = None) -> dict[str, dict]:
    """annotator -> median seconds on the page (as the page measured) and between serving and answer (server)."""
    page: dict[str, list[float]] = {}
    for j in latest_judgements(judgements):
        if j.seconds is not None:
            page.setdefault(j.annotator, []).append(j.seconds)
    server: dict[str, list[float]] = {}
    for (_item, who), (at, answered) in (served or {}).items():
        if answered is not None:
            server.setdefault(who, []).append((answered - at).total_seconds())
    names = set(page) | set(server)
    return {a: {"page_median": statistics.median(page[a]) if a in page else None,
                "server_median": statistics.median(server[a]) if a in server else None} for a in names}


def annotator_report(items: list[PairItem], judgements: list[Judgement], disabled: set[str] | None = None,
                     served: dict | None = None) -> dict[str, dict[str, Any]]:
    """One row per annotator: labels, gold accuracy with its interval, majority agreement, time per item."""
    gold_ids = {it.item_id for it in items if it.gold is not None}
    hits = gold_hits(items, judgements)
    maj = majority_agreement(judgements, exclude=gold_ids)
    times = seconds_per_item(judgements, served)
    latest = latest_judgements(judgements)
    names = sorted({j.annotator for j in judgements} | set(disabled or ()))
    report: dict[str, dict[str, Any]] = {}
    for a in names:
        mine = [j for j in latest if j.annotator == a and j.item_id not in gold_ids]
        h = hits.get(a, [])
        ci = bootstrap_ci("mean", h, seed=0) if h else None
        report[a] = {
            "labels": sum(j.outcome != "skip" for j in mine), "skips": sum(j.outcome == "skip" for j in mine),
            "gold": {"n": len(h), "accuracy": ci.value if ci else None,
                     "ci95": [ci.low, ci.high] if ci else None},
            "majority": maj.get(a, {"n": 0, "agree": 0, "rate": None}),
            "seconds": times.get(a, {"page_median": None, "server_median": None}),
            "labels_disabled": a in (disabled or set()),
        }
    return report


def annotator_weights(report: dict[str, dict[str, Any]], min_gold_accuracy: float | None = None,
                      weight_by_gold: bool = False, min_gold_items: int = 1) -> dict[str, float]:
    """annotator -> vote weight for the export.

    Disabled annotators weigh 0. With ``min_gold_accuracy``, annotators below it (or with fewer than
    ``min_gold_items`` gold answers, i.e. unmeasured) weigh 0. With ``weight_by_gold`` the weight is
    the gold accuracy itself (unmeasured annotators keep 1: no evidence against them)."""
    out: dict[str, float] = {}
    for a, row in report.items():
        acc, n = row["gold"]["accuracy"], row["gold"]["n"]
        w = 0.0 if row["labels_disabled"] else 1.0
        if min_gold_accuracy is not None and (n < min_gold_items or acc is None or acc < min_gold_accuracy):
            w = 0.0
        if weight_by_gold and acc is not None and n >= min_gold_items:
            w *= acc
        out[a] = w
    return out


def disagreements(items: list[PairItem], judgements: list[Judgement]) -> list[dict[str, Any]]:
    """Items whose annotators did not all say the same (gold items: any answer off the known one)."""
    by_id = {it.item_id: it for it in items}
    out = []
    for item_id, votes in votes_by_item(judgements).items():
        it = by_id.get(item_id)
        labels = {v.annotator: v.outcome for v in votes}
        wrong_gold = it is not None and it.gold is not None and any(x != it.gold for x in labels.values())
        if len(set(labels.values())) > 1 or wrong_gold:
            out.append({"item_id": item_id, "labels": labels, "gold": it.gold if it else None,
                        "counts": {k: sum(x == k for x in labels.values()) for k in LABELS}})
    return out
