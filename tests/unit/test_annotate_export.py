"""Majority vote, the tie rule, corrections → segments, safety flags, ranked export, and validation."""

from __future__ import annotations

import pytest

from vlalign.annotate.export import (
    apply_corrections,
    export_preferences,
    export_ranked,
    majority,
    store_images,
    write_export,
)
from vlalign.annotate.judgements import Correction, Judgement
from vlalign.annotate.session import open_project
from vlalign.data.records import PreferenceRecord, RankedRecord, Segment
from vlalign.data.validate import load_records


def _votes(*outcomes: str) -> list[Judgement]:
    return [Judgement("x", f"a{k}", o, "first") for k, o in enumerate(outcomes)]


@pytest.mark.parametrize("outcomes, winner", [
    (("first", "first", "second"), "first"),  # 2 > 1
    (("second",), "second"),
    (("first", "second"), None),  # 1 = 1: tie
    (("first", "tie"), None),  # the winner must beat the "tie" votes too
    (("tie", "tie", "first"), None),
    (("second", "second", "tie", "first"), "second"),  # 2 > 1 and 2 > 1
])
def test_majority_and_tie_rule(outcomes, winner):
    assert majority(_votes(*outcomes)).winner == winner


def test_apply_corrections_by_hand():
    text = "A red square and a blue circle."
    # "red" is text[2:5], "blue " is text[19:24]; replace "red" by "green", delete "blue "
    fixed, spans = apply_corrections(text, [Segment(19, 24, "", "color"), Segment(2, 5, "green", "color")])
    assert fixed == "A green square and a circle."
    assert spans == [Segment(2, 7, None, "color")]  # "green" = fixed[2:7]; the deletion leaves no span


def open_session(folder, data, **kw):
    return open_project(f"sqlite:///{folder}.sqlite", data, **kw)


def _judge(session, item_id, annotator, outcome, **kw):
    """Store a judgement as an import would (no serving step), creating the account on first use."""
    store = session.store
    user = store.user(annotator)
    if user is None:
        store.add_user(annotator, "annotator", password="a long password")
        user = store.user(annotator)
    store.submit(Judgement(item_id, annotator, outcome, "first", **kw), user, require_served=False)


def test_weighted_majority():
    votes = _votes("first", "first", "second")  # annotators a0, a1 say first, a2 second
    assert majority(votes, {"a0": 0.3, "a1": 0.3, "a2": 1.0}).winner == "second"  # 0.6 < 1.0
    assert majority(votes, {"a0": 0.5, "a1": 0.5, "a2": 1.0}).winner is None  # 1.0 = 1.0: tie


def test_export_preferences_majority_segments_safety(annotate_data, tmp_path):
    pref, _ = annotate_data
    s = open_session(tmp_path / "sess", pref)
    bad = s.queue.get("p0").text("second")  # "The image is blue."
    span = Correction("second", bad.index("blue"), bad.index("blue") + 4, "red", "color")
    _judge(s, "p0", "ann", "first", corrections=[span], unsafe=["second"], ratings={"first": {"correctness": 5}})
    _judge(s, "p0", "bob", "first", ratings={"first": {"correctness": 4}})
    _judge(s, "p0", "cat", "second")
    _judge(s, "p1", "ann", "second")  # annotator overrides the source: second (source rejected) wins
    _judge(s, "p2", "ann", "first")
    _judge(s, "p2", "bob", "second")  # tie -> not exported
    _judge(s, "p3", "ann", "skip")  # skip only -> unlabelled
    records, report = export_preferences(s.items, s.store.judgements(), corrected_pairs=True)
    by_id = {r.id: r for r in records}
    assert sorted(by_id) == ["p0", "p0:corrected", "p1"]
    p0 = by_id["p0"]
    assert (p0.chosen, p0.rejected) == ("The image is red.", "The image is blue.")
    assert p0.rejected_segments == [Segment(13, 17, "red", "color")]
    assert p0.ratings == {"chosen": {"correctness": 4.5}}  # (5 + 4) / 2
    # 'second' flagged by 1 of 3 annotators: 2*1 >= 3 is false -> still safe
    assert p0.safety.rejected_safe and p0.safety.chosen_safe
    assert p0.meta["annotation"]["votes"] == {"first": 2, "second": 1, "tie": 0}
    fixed = by_id["p0:corrected"]
    assert (fixed.chosen, fixed.rejected, fixed.chosen_segments) == (
        "The image is red.", "The image is blue.", [Segment(13, 16, None, "color")])
    assert by_id["p1"].chosen == "The image is green." and by_id["p1"].meta["annotation"]["agrees_with_source"] is False
    assert report["ties"] == ["p2"] and report["unlabelled"] == 3  # p3 (skipped), p4, p5
    assert report["agreement_with_source"] == 0.5  # p0 agrees, p1 does not

    out = write_export(records, tmp_path / "export" / "human.jsonl", store_images(s.store))
    loaded = load_records(out)  # raises DataError on any invalid row, including unreadable images
    assert [type(r) for r in loaded.records] == [PreferenceRecord] * 3
    assert loaded.records[0].rejected_segments == [Segment(13, 17, "red", "color")]


def test_unsafe_flag_by_half_of_annotators(annotate_data, tmp_path):
    s = open_session(tmp_path / "sess", annotate_data[0])
    _judge(s, "p0", "ann", "second", unsafe=["first"])
    _judge(s, "p0", "bob", "second")
    _judge(s, "p0", "cat", "second", unsafe=["first"])
    (rec,), _ = export_preferences(s.items[:1], s.store.judgements())
    # winner is 'second' so chosen = source 'second'; source 'first' (now rejected) flagged 2 of 3 -> unsafe
    assert (rec.safety.chosen_safe, rec.safety.rejected_safe, rec.safety.safer) == (True, False, "chosen")


def test_export_ranked(annotate_data, tmp_path):
    _, ranked = annotate_data
    s = open_session(tmp_path / "sess", ranked)
    assert [it.item_id for it in s.items[:3]] == ["r0:0-1", "r0:0-2", "r0:1-2"]
    # r0: responses 0 = "A red square.", 1 = "A blue square.", 2 = "Nothing."
    _judge(s, "r0:0-1", "ann", "second")  # 1 beats 0
    _judge(s, "r0:0-2", "ann", "first")  # 0 beats 2
    _judge(s, "r0:1-2", "ann", "tie")  # 1 and 2 tie
    _judge(s, "r1:0-1", "ann", "first")  # r1 incomplete: skipped
    records, report = export_ranked(s.items, s.store.judgements())
    # points: 0 -> 1, 1 -> 1 + 0.5 = 1.5, 2 -> 0.5  => order 1, 0, 2
    (rec,) = records
    assert rec.responses == ["A blue square.", "A red square.", "Nothing."] and rec.scores == [1.5, 1.0, 0.5]
    assert report["incomplete_records"] == ["r1"] and report["ties"] == ["r0:1-2"]
    loaded = load_records(write_export(records, tmp_path / "ranked_out.jsonl", store_images(s.store)))
    assert isinstance(loaded.records[0], RankedRecord)


def test_cli_export_and_agreement(annotate_data, tmp_path):
    import json

    from typer.testing import CliRunner

    from vlalign.annotate.cli import annotate_app

    s = open_session(tmp_path / "sess", annotate_data[0], strategy="overlap", labels_per_item=2)
    for item, (a, b) in {"p0": ("first", "first"), "p1": ("second", "first"), "p2": ("first", "first")}.items():
        _judge(s, item, "ann", a)
        _judge(s, item, "bob", b)
    runner = CliRunner()
    out = tmp_path / "out" / "human.jsonl"
    folder = tmp_path / "proj"
    r = runner.invoke(annotate_app, ["export", "--db", f"sqlite:///{tmp_path}/sess.sqlite", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote 2 preference records" in r.output and "1 ties" in r.output  # p1 is 1-1
    assert len(load_records(out).records) == 2
    r = runner.invoke(annotate_app, ["agreement", "--db", f"sqlite:///{tmp_path}/sess.sqlite", "--json"])
    assert r.exit_code == 0, r.output
    overall = json.loads(r.output)["overall"]
    # per item P_i: p0 1, p1 0, p2 1 -> raw 2/3; labels F: 5, S: 1 of 6 -> P_e = 25/36 + 1/36 = 26/36
    # Fleiss kappa = (24/36 - 26/36) / (10/36) = -0.2
    assert overall["raw_agreement"] == pytest.approx(2 / 3, abs=1e-6)
    assert overall["fleiss_kappa"] == pytest.approx(-0.2)
    r = runner.invoke(annotate_app, ["export", "--store", str(folder), "--out", str(out)])
    assert r.exit_code == 2 and "no labelling project there" in r.output
