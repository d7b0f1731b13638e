"""Validation reports every bad row by (file, row, field); load_records error/skip modes; speed bound."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlalign.data.checks import check_segments
from vlalign.data.records import Segment
from vlalign.data.validate import DataError, load_records, scan

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
BAD = FIX / "canonical_bad.jsonl"

# One bad row per kind of problem (see the fixture, row by row).
EXPECTED_BAD = {
    (1, "prompt"),  # missing field
    (2, "chosen"),  # empty text
    (3, "rejected"),  # chosen == rejected
    (4, "images[0]"),  # image file missing
    (5, "images[0]"),  # file is not an image
    (6, "label"),  # wrong type ("yes" instead of true)
    (7, "rejected_segments[0]"),  # span past the end of the text
    (8, "rejected_segments[1]"),  # overlapping spans
    (9, "safety.safer"),  # unknown enum value
    (10, "<row>"),  # invalid JSON line
    (11, "refrence"),  # unknown field (typo)
    (12, "id"),  # duplicate id
    (13, "scores"),  # ranked scores not best-first
    (14, "images"),  # no image at all
}


def test_every_bad_row_is_reported_by_index_and_field():
    res = scan(BAD)
    assert {(e.row, e.field) for e in res.errors} == EXPECTED_BAD
    assert res.n_rows == 16 and res.n_bad_rows == 14
    assert [r.id for r in res.records] == ["ok0", "ok1"]
    assert all(e.file == str(BAD) and e.reason for e in res.errors)
    assert "did you mean 'reference'" in next(e.fix for e in res.errors if e.field == "refrence")


def test_default_raises_naming_file_row_field_and_fix(tmp_path):
    with pytest.raises(DataError) as exc:
        load_records(BAD, report_path=tmp_path / "r.json")
    msg = str(exc.value)
    assert "14 of 16 rows" in msg and f"{BAD}:row 1: prompt: missing field" in msg and "on_bad_rows='skip'" in msg
    assert len(exc.value.errors) == 14
    assert json.loads((tmp_path / "r.json").read_text())["n_errors"] == 14  # report written even when raising


def test_skip_keeps_good_rows_and_writes_the_report(tmp_path):
    res = load_records(BAD, on_bad_rows="skip", report_path=tmp_path / "r.json")
    assert [r.id for r in res.records] == ["ok0", "ok1"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert {(e["row"], e["field"]) for e in report["errors"]} == EXPECTED_BAD
    assert report["n_rows"] == 16 and report["n_records"] == 2 and report["errors_by_field"]["images"] == 3
    assert all(set(e) == {"file", "row", "field", "reason", "fix"} for e in report["errors"])


def test_check_segments_by_hand():
    text = "A red circle."  # len 13
    assert check_segments([Segment(6, 12), Segment(0, 1)], text, "s") == []  # sorted internally; touching is fine
    (out,) = check_segments([Segment(6, 14)], text, "s")  # 14 > 13
    assert out[0] == "s[0]" and "outside" in out[1]
    (empty,) = check_segments([Segment(3, 3)], text, "s")  # zero-length span, nothing to insert
    assert empty[0] == "s[0]" and "changes nothing" in empty[1]
    assert check_segments([Segment(3, 3, "big ")], text, "s") == []  # insertion point with its text
    assert check_segments([Segment(3, 3)], text, "s", insertion_needs_text=False) == []  # chosen side
    (overlap,) = check_segments([Segment(2, 9), Segment(6, 12)], text, "s")
    assert overlap[0] == "s[1]" and "overlaps" in overlap[1]


def test_cli_validate_exit_codes_and_report(tmp_path):
    from vlalign.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["data", "validate", str(BAD), "--report", str(tmp_path / "r.json"), "--show", "3"])
    assert bad.exit_code == 1
    assert "14 bad rows" in bad.output and "row 1: prompt" in bad.output and "... and 11 more" in bad.output
    assert len(json.loads((tmp_path / "r.json").read_text())["errors"]) == 14
    good = runner.invoke(app, ["data", "validate", str(FIX / "rlaif_v.jsonl")])
    assert good.exit_code == 0 and "0 bad rows" in good.output
    ambiguous = tmp_path / "amb.jsonl"
    ambiguous.write_text('{"image": "x.png", "question": "q", "chosen": "a", "rejected": "b"}\n')
    amb = runner.invoke(app, ["data", "validate", str(ambiguous)])
    assert amb.exit_code == 2 and "--format" in amb.output
    explicit = runner.invoke(app, ["data", "validate", str(ambiguous), "--format", "spa_vl", "--no-images"])
    assert explicit.exit_code == 0, explicit.output


def test_ten_thousand_rows_validate_quickly(tmp_path):
    """Sanity bound, not a benchmark: 10k rows sharing 2 images must not re-open images per row."""
    shutil.copy(FIX / "images" / "red.png", tmp_path / "red.png")
    shutil.copy(FIX / "images" / "blue.png", tmp_path / "blue.png")
    with (tmp_path / "big.jsonl").open("w") as fh:
        for i in range(10_000):
            img = "red.png" if i % 2 else "blue.png"
            row = {"id": f"r{i}", "images": [img], "prompt": f"Describe {i}.", "chosen": f"A square {i}.",
                   "rejected": f"A circle {i}.", "rejected_segments": [{"start": 2, "end": 8}], "meta": {}}
            fh.write(json.dumps(row) + "\n")
    t0 = time.perf_counter()
    res = load_records(tmp_path / "big.jsonl")
    elapsed = time.perf_counter() - t0
    assert len(res.records) == 10_000 and res.errors == []
    assert elapsed < 30, f"10k rows took {elapsed:.1f}s"
