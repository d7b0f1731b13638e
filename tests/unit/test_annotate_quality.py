"""Quality control on examples small enough to check by hand: gold accuracy, agreement with the
majority of the others, time per item, the export weights, disagreements."""

from __future__ import annotations

import pytest

from vlalign.annotate.items import PairItem
from vlalign.annotate.judgements import Judgement
from vlalign.annotate.quality import (
    annotator_report,
    annotator_weights,
    disagreements,
    gold_hits,
    majority_agreement,
    strict_majority,
)

ITEMS = [PairItem(f"p{k}", f"p{k}", [], "q", ("a", "b")) for k in range(3)] + \
        [PairItem(f"g{k}", f"g{k}", [], "q", ("a", "b"), gold="first") for k in range(4)]


def J(item: str, who: str, outcome: str, seconds: float | None = None) -> Judgement:
    return Judgement(item, who, outcome, "first", seconds=seconds)


JUDGEMENTS = [
    # gold: ann 4/4 right, bob 1/4 (g0 right; g1 second, g2 tie, g3 second), cat skips g0 (not an answer)
    *[J(f"g{k}", "ann", "first") for k in range(4)],
    J("g0", "bob", "first"), J("g1", "bob", "second"), J("g2", "bob", "tie"), J("g3", "bob", "second"),
    J("g0", "cat", "skip"),
    # regular: p0 ann/bob/cat = first/first/second; p1 first/second/first; p2 second/second/second
    J("p0", "ann", "first", 4.0), J("p0", "bob", "first", 1.0), J("p0", "cat", "second", 10.0),
    J("p1", "ann", "first", 6.0), J("p1", "bob", "second", 1.0), J("p1", "cat", "first", 20.0),
    J("p2", "ann", "second", 5.0), J("p2", "bob", "second", 3.0), J("p2", "cat", "second", 30.0),
]


def test_strict_majority():
    assert strict_majority(["first", "first", "second"]) == "first"
    assert strict_majority(["first", "second"]) is None and strict_majority([]) is None


def test_gold_and_majority_by_hand():
    hits = gold_hits(ITEMS, JUDGEMENTS)
    assert hits == {"ann": [1, 1, 1, 1], "bob": [1, 0, 0, 0]}  # cat's skip is not an answer
    maj = majority_agreement([j for j in JUDGEMENTS if j.item_id.startswith("p")])
    # ann: p0 others {first, second} split -> not counted; p1 others {second, first} split; p2 others
    #   {second, second} -> second = ann's second: 1 of 1. bob: p0 others {first, second} split; p1 others
    #   {first, first} -> first != bob's second; p2 agrees: 1 of 2. cat: p0 others {first, first} != second;
    #   p1 others split; p2 agrees: 1 of 2.
    assert {a: (r["agree"], r["n"]) for a, r in maj.items()} == {"ann": (1, 1), "bob": (1, 2), "cat": (1, 2)}


def test_report_weights_and_disagreements():
    report = annotator_report(ITEMS, JUDGEMENTS, disabled={"cat"})
    assert report["ann"]["gold"]["accuracy"] == 1.0 and report["bob"]["gold"]["accuracy"] == 0.25
    low, high = report["bob"]["gold"]["ci95"]
    assert 0.0 <= low <= 0.25 <= high <= 1.0  # bootstrap interval over bob's 4 gold answers
    assert report["ann"]["seconds"]["page_median"] == 5.0  # median of 4, 6, 5
    assert report["ann"]["labels"] == 3 and report["cat"]["labels_disabled"]
    assert annotator_weights(report) == {"ann": 1.0, "bob": 1.0, "cat": 0.0}
    # threshold 0.5: bob (0.25) out; cat has no gold answer (unmeasured) and is disabled anyway
    assert annotator_weights(report, min_gold_accuracy=0.5) == {"ann": 1.0, "bob": 0.0, "cat": 0.0}
    assert annotator_weights(report, weight_by_gold=True) == {"ann": 1.0, "bob": 0.25, "cat": 0.0}
    d = {x["item_id"]: x for x in disagreements(ITEMS, JUDGEMENTS)}
    assert sorted(d) == ["g1", "g2", "g3", "p0", "p1"]  # p2 unanimous; g0: everyone right (cat skipped)
    assert d["p0"]["counts"] == {"first": 2, "second": 1, "tie": 0} and d["g2"]["gold"] == "first"


def test_weighted_export_drops_the_unreliable_annotator():
    from vlalign.annotate.export import export_preferences

    report = annotator_report(ITEMS, JUDGEMENTS)
    weights = annotator_weights(report, min_gold_accuracy=0.5)  # bob out (0.25); cat unmeasured -> out
    records, rep = export_preferences(ITEMS, JUDGEMENTS, weights=weights)
    # only ann votes: p0 first, p1 first, p2 second; gold items are never exported
    assert {r.id: r.chosen for r in records} == {"p0": "a", "p1": "a", "p2": "b"}
    assert rep["excluded_annotators"] == ["bob", "cat"]
    plain, _ = export_preferences(ITEMS, JUDGEMENTS)
    assert {r.id for r in plain} == {"p0", "p1", "p2"} and next(r for r in plain if r.id == "p1").chosen == "a"
    assert pytest.approx(next(r for r in plain if r.id == "p1").meta["annotation"]["votes"]["first"]) == 2
