"""The `critique` field of preference records: canonical JSONL, checks, tables, the MM-RLHF adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlalign.data.records import CritiqueLabels, PreferenceRecord, from_dict, to_dict
from vlalign.data.validate import load_records

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "formats"


def _row(rid="a", **critique):
    return {"id": rid, "images": [str(FIX / "images" / "red.png")], "prompt": "Describe.", "chosen": "A red circle.", "rejected": "A blue circle.",
            "meta": {}, "critique": critique}


def test_canonical_rows_carry_critiques_and_round_trip(tmp_path):
    rows = [_row(chosen="Correct.", rejected="Mentions a blue circle that is not in the image."),
            _row("b", chosen="Fine.", rejected="Wrong colour.", chosen_score=8, rejected_score=2.5)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_records(tmp_path / "d.jsonl").records
    assert a.critique == CritiqueLabels("Correct.", "Mentions a blue circle that is not in the image.")
    assert (b.critique.chosen_score, b.critique.rejected_score) == (8, 2.5)
    assert from_dict(to_dict(b)) == b
    # a table (Parquet) keeps the field as JSON text and reads it back
    from vlalign.data.io import write_records_table

    target = write_records_table([a, b], tmp_path / "t.parquet", "parquet")
    assert [r.critique for r in load_records(target).records] == [a.critique, b.critique]


@pytest.mark.parametrize(("critique", "field"), [
    ({"chosen": "ok"}, "critique.rejected"),
    ({"chosen": "ok", "rejected": "bad", "chosen_scor": 1}, "critique.chosen_scor"),
    ({"chosen": "ok", "rejected": "bad", "chosen_score": "high", "rejected_score": 1}, "critique.chosen_score"),
    ({"chosen": "ok", "rejected": "  "}, "critique.rejected"),
    ({"chosen": "ok", "rejected": "bad", "chosen_score": 3}, "critique"),
])
def test_bad_critiques_are_reported_by_row_and_field(tmp_path, critique, field):
    good = _row(chosen="ok", rejected="bad")
    (tmp_path / "d.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(_row("b", **critique)) + "\n")
    res = load_records(tmp_path / "d.jsonl", on_bad_rows="skip")
    assert [(e.row, e.field) for e in res.errors] == [(1, field)], [e.line() for e in res.errors]
    assert len(res.records) == 1


def test_mm_rlhf_reasons_become_the_critique():
    (rec,) = load_records(FIX / "mm_rlhf.jsonl").records
    assert rec.critique == CritiqueLabels("correct colour", "wrong colour")
    assert rec.meta["chosen_reason"] == "correct colour"  # still in meta for reports
    row = {"prompt": "<image>Q", "chosen": "a", "rejected": "b", "image": "images/red.png", "chosen_reason": "ok",
           "rejected_reason": ""}
    from vlalign.data.formats.base import RowContext
    from vlalign.data.formats.mm_rlhf import convert_mm_rlhf

    (no_critique,) = convert_mm_rlhf(row, RowContext(str(FIX / "mm_rlhf.jsonl"), 0))
    assert isinstance(no_critique, PreferenceRecord) and no_critique.critique is None  # one reason is not a pair's critique
