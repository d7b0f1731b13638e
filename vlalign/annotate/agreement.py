"""Inter-annotator agreement on pairwise judgements: raw agreement, Cohen's κ, Fleiss' κ, Krippendorff's α.

Categories are the outcomes in source order: "first", "second", "tie" (skips are not judgements).
Raw agreement overstates reliability when one answer dominates (if 90% of pairs favour "first",
two coin-flippers biased the same way agree 82% of the time); the kappas subtract that chance level:
κ = (p_o − p_e) / (1 − p_e). When p_e = 1 (everyone always gives the same single answer) κ is
undefined and reported as NaN rather than a made-up 0 or 1.

Krippendorff's α = 1 − D_o / D_e handles what the kappas do not: any number of annotators per item,
missing labels, and a distance between categories (nominal for outcomes, interval for 1–5 ratings).
It is computed from the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's
Alpha-Reliability"): every ordered pair of labels within an item adds 1/(m_u − 1) to o[c][k].
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from typing import Any

from vlalign.annotate.judgements import Judgement, votes_by_item

CATEGORIES = ("first", "second", "tie")


def kappa(p_o: float, p_e: float) -> float:
    return float("nan") if math.isclose(p_e, 1.0) else (p_o - p_e) / (1.0 - p_e)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's κ of two annotators' labels on the same items (position k = item k)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"cohen_kappa needs two equally long, non-empty label lists, got {len(a)} and {len(b)}")
    n = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    return kappa(p_o, p_e)


def item_agreement(labels: Sequence[str]) -> float:
    """Fleiss' P_i: the fraction of ordered rater pairs on this item that agree, Σ n_j(n_j−1) / (n(n−1))."""
    n = len(labels)
    if n < 2:
        raise ValueError("agreement on an item needs >= 2 labels")
    return sum(c * (c - 1) for c in Counter(labels).values()) / (n * (n - 1))


def fleiss_kappa(items: Sequence[Sequence[str]]) -> float:
    """Fleiss' κ over items, each a list of labels from different raters (items with < 2 labels ignored).

    P̄ = mean of per-item P_i; P_e = Σ_j p_j² with p_j the share of all labels in category j. With a
    varying number of raters per item this is the usual generalisation (each item weighted equally in
    P̄, each label equally in p_j); with a constant number it is exactly Fleiss (1971).
    """
    rated = [list(x) for x in items if len(x) >= 2]
    if not rated:
        raise ValueError("Fleiss' kappa needs at least one item with >= 2 labels")
    p_bar = sum(item_agreement(x) for x in rated) / len(rated)
    totals = Counter(label for x in rated for label in x)
    n_labels = sum(totals.values())
    p_e = sum((c / n_labels) ** 2 for c in totals.values())
    return kappa(p_bar, p_e)


def _nominal(a: object, b: object) -> float:
    return 0.0 if a == b else 1.0


def _interval(a: object, b: object) -> float:
    return (float(a) - float(b)) ** 2  # type: ignore[arg-type]


ALPHA_METRICS = {"nominal": _nominal, "interval": _interval}


def krippendorff_alpha(units: Sequence[Sequence[object]], metric: str = "nominal") -> float:
    """Krippendorff's α over units (items), each the list of labels it got (missing labels simply absent).

    Units with fewer than 2 labels carry no pairable information and are ignored. With
    o[c][k] the coincidences, n_c = Σ_k o[c][k] and n = Σ_c n_c:
    α = 1 − (n − 1) · Σ o[c][k] δ²(c, k) / Σ n_c n_k δ²(c, k). NaN when there is no variation.
    """
    delta = ALPHA_METRICS[metric]
    o: Counter = Counter()
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        for i in range(m):
            for j in range(m):
                if i != j:
                    o[(labels[i], labels[j])] += 1.0 / (m - 1)
    if not o:
        raise ValueError("Krippendorff's alpha needs at least one item with >= 2 labels")
    n_c: Counter = Counter()
    for (c, _k), v in o.items():
        n_c[c] += v
    n = sum(n_c.values())
    observed = sum(v * delta(c, k) for (c, k), v in o.items())
    expected = sum(n_c[c] * n_c[k] * delta(c, k) for c in n_c for k in n_c)
    return float("nan") if math.isclose(expected, 0.0) else 1.0 - (n - 1) * observed / expected


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def agreement_report(judgements: list[Judgement]) -> dict[str, Any]:
    """Overall and per-item agreement, and Cohen's κ for every pair of annotators with shared items."""
    votes = votes_by_item(judgements)
    labels = {item: {j.annotator: j.outcome for j in js} for item, js in votes.items()}
    multi = {item: list(by.values()) for item, by in labels.items() if len(by) >= 2}
    per_item = {item: {"labels": by, "agreement": round(item_agreement(list(by.values())), 6)}
                for item, by in labels.items() if len(by) >= 2}
    annotators = sorted({a for by in labels.values() for a in by})
    pairs = []
    for a, b in combinations(annotators, 2):
        shared = [item for item, by in labels.items() if a in by and b in by]
        if shared:
            la, lb = [labels[i][a] for i in shared], [labels[i][b] for i in shared]
            pairs.append({"annotators": [a, b], "n_items": len(shared),
                          "raw_agreement": round(sum(x == y for x, y in zip(la, lb)) / len(shared), 6),
                          "cohen_kappa": _finite(cohen_kappa(la, lb))})
    overall: dict[str, Any] = {"n_items_labelled": len(labels), "n_items_multi": len(multi),
                               "n_annotators": len(annotators), "annotators": annotators}
    if multi:
        overall["raw_agreement"] = round(sum(item_agreement(x) for x in multi.values()) / len(multi), 6)
        overall["fleiss_kappa"] = _finite(fleiss_kappa(list(multi.values())))
        overall["krippendorff_alpha"] = _finite(krippendorff_alpha(list(multi.values())))
    else:
        overall["raw_agreement"] = overall["fleiss_kappa"] = overall["krippendorff_alpha"] = None
        overall["note"] = "no item has two or more labels: use --strategy overlap --labels-per-item 2"
    return {"overall": overall, "pairs": pairs, "per_item": per_item}
