"""Issue 13's bad-input cases: each one is a row error (or a named file error) and nothing crashes.

Images by content hash, decompression bombs, truncated JPEGs, oversize images, lone surrogates and
control characters, NaN/inf in every numeric field, non-UTF-8 bytes, malformed VLFeedback/BeaverTails
fields, identical answers, exceptions inside the checks, and a fuzz of random field values.
"""

from __future__ import annotations

import functools
import io
import json
import math
import random
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_support import png_bytes
from PIL import Image
from typer.testing import CliRunner

from vlalign.data import checks
from vlalign.data.images import content_name, open_image
from vlalign.data.records import PreferenceRecord
from vlalign.data.validate import load_records, scan

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
RED = str(FIX / "images" / "red.png")


@functools.lru_cache(maxsize=2)
def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, built without ever holding the pixels (zeros compress to a
    few hundred KB), so the test costs nothing while the header claims a huge image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def canonical(tmp_path, rows, name="d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def pref(i, **kw):
    return {"id": f"p{i}", "images": [RED], "prompt": "Colour?", "chosen": "Red.", "rejected": "Blue.", "meta": {}, **kw}


def errors_of(res):
    return {(e.row, e.field) for e in res.errors}


def test_image_bytes_are_stored_by_content_not_by_id(tmp_path):
    """Regression: ids differing only in '/' vs '_' or after 80 characters used to share a file name, so
    rows about a red object pointed at a blue image. 4 rows, 4 different images → 4 files, right pixels;
    2 rows sharing an image → 1 file."""
    from vlalign.cli import app

    long = "x" * 85
    colours = [(255, 0, 0), (0, 0, 255), (0, 200, 0), (250, 220, 0), (255, 0, 0)]
    ids = ["a/b", "a_b", long + "1", long + "2", "same-as-first"]
    rows = [{"ds_name": "RLAIF-V", "image": {"bytes": png_bytes(c), "path": "x.png"}, "question": "Colour?",
             "chosen": f"colour {c}", "rejected": "none", "origin_dataset": "x", "origin_split": "{}", "idx": i,
             "image_path": "x.png"} for i, c in zip(ids, colours)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["data", "convert", str(tmp_path / "train.parquet"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(list((out / "images").iterdir())) == 4  # 4 distinct images; the repeated one stored once
    for row, colour in zip(written, colours):
        assert open_image(out / row["images"][0]).getpixel((0, 0)) == colour, row["id"]
        assert row["images"][0] == f"images/{content_name(png_bytes(colour))}"


@pytest.mark.parametrize("skip", [False, True])
def test_decompression_bomb_is_a_bad_row(tmp_path, skip):
    (tmp_path / "bomb.png").write_bytes(huge_png(20_000, 20_000))
    path = canonical(tmp_path, [pref(0), pref(1, images=["bomb.png"])])
    res = scan(path) if not skip else load_records(path, on_bad_rows="skip")
    assert errors_of(res) == {(1, "images[0]")}
    assert "decompression" in res.errors[0].reason and "20000x20000" in res.errors[0].reason
    assert [r.id for r in res.records] == ["p0"]


def test_oversize_image_is_reported_not_decoded(tmp_path):
    # 12000 x 12000 = 144M pixels: over the default limit (Pillow's 89.5M-pixel bomb threshold)
    (tmp_path / "big.png").write_bytes(huge_png(12_000, 12_000))
    res = scan(canonical(tmp_path, [pref(0, images=["big.png"])]))
    assert errors_of(res) == {(0, "images[0]")} and "144,000,000 pixels" in res.errors[0].reason
    assert scan(canonical(tmp_path, [pref(0, images=["big.png"])], "e.jsonl"), max_image_pixels=200_000_000).errors == []


def test_truncated_jpeg_is_caught_at_validation(tmp_path):
    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buf, format="JPEG", quality=90)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with Image.open(tmp_path / "cut.jpg") as img:
        img.verify()  # what validation used to do: passes on a truncated JPEG
    res = scan(canonical(tmp_path, [pref(0, images=["cut.jpg"]), pref(1)]))
    assert errors_of(res) == {(0, "images[0]")} and "truncated" in res.errors[0].reason


def test_lone_surrogates_are_errors_and_control_characters_warnings(tmp_path):
    rows = [pref(0, prompt="Colour\udcff?"), pref(1, chosen="Red\x07."), pref(2)]
    res = scan(canonical(tmp_path, rows))  # json.dumps writes the surrogate as an escape, as real files do
    assert errors_of(res) == {(0, "prompt")} and "lone surrogate '\\udcff' at character 6" in res.errors[0].reason
    assert [(w.row, w.field) for w in res.warnings] == [(1, "chosen")] and "'\\x07'" in res.warnings[0].reason
    assert [r.id for r in res.records] == ["p1", "p2"]


def test_nan_and_inf_in_every_numeric_field(tmp_path):
    rows = [
        {"id": "r0", "images": [RED], "prompt": "Q", "responses": ["a", "b"], "scores": [float("nan"), 1.0], "meta": {}},
        pref(1, ratings={"chosen": {"helpful": float("nan")}, "rejected": {"helpful": 1.0}}),
        pref(2, margin=float("inf")),
        pref(3),
    ]
    res = scan(canonical(tmp_path, rows))  # Python's json writes NaN/Infinity literals; datasets' rows do too
    assert errors_of(res) == {(0, "scores[0]"), (1, "ratings.chosen.helpful"), (2, "margin")}


def test_non_utf8_bytes_are_a_row_error_not_a_file_abort(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps(pref(0)).encode()
    path.write_bytes(good + b"\n" + json.dumps(pref(1)).encode().replace(b"Colour", b"Col\xffour") + b"\n"
                     + json.dumps(pref(2)).encode() + b"\n")
    res = scan(path)
    assert errors_of(res) == {(1, "<row>")} and "not UTF-8" in res.errors[0].reason
    assert [r.id for r in res.records] == ["p0", "p2"]
    broken_json = tmp_path / "list.json"
    broken_json.write_bytes(b'[{"a": 1},\n {"b": "\xff"}]')
    (err,) = scan(broken_json, format="canonical").errors
    assert (err.file, err.row, err.field) == (str(broken_json), None, "<file>") and "line 2" in err.reason


def test_vlfeedback_and_beavertails_malformed_fields(tmp_path):
    vlf = [{"id": "v0", "prompt": "Q", "models": ["a", "b"], "img_path": RED, "completions": ["a", "b"]},
           {"id": "v1", "prompt": "Q", "models": ["a", "b"], "img_path": RED,
            "completions": [{"model": "a", "response": "x", "annotations": {"Helpfulness": {"Rating": "NaN"}}},
                            {"model": "b", "response": "y", "annotations": {"Helpfulness": {"Rating": "1"}}}]}]
    res = scan(canonical(tmp_path, vlf, "vlf.jsonl"))
    assert errors_of(res) == {(0, "completions[0]"), (1, "completions[0].annotations.Helpfulness")}
    bt = json.loads((FIX / "beavertails_v.jsonl").read_text().splitlines()[0])
    bt["image"] = {"bytes": None, "path": RED}
    rows = [dict(bt, response_1_harmless_rate={}), dict(bt, response_2_helpful_rate="abc"), bt]
    res = scan(canonical(tmp_path, rows, "bt.jsonl"))
    assert errors_of(res) == {(0, "response_1_harmless_rate"), (1, "response_2_helpful_rate")}
    assert len(res.records) == 1


def test_identical_answers_exact_is_an_error_case_and_space_a_warning(tmp_path):
    res = scan(canonical(tmp_path, [pref(0, rejected="Red."), pref(1, rejected="  red. "), pref(2)]))
    assert errors_of(res) == {(0, "rejected")}
    assert [(w.row, w.field) for w in res.warnings] == [(1, "rejected")]
    assert [r.id for r in res.records] == ["p1", "p2"]  # a warning keeps the row


def test_an_exception_inside_the_checks_is_that_rows_error(tmp_path, monkeypatch):
    def broken(rec, images):
        if rec.id == "p1":
            raise ZeroDivisionError("boom")
        return []

    monkeypatch.setitem(checks.CHECKS, PreferenceRecord, broken)
    res = scan(canonical(tmp_path, [pref(0), pref(1), pref(2)]), check_images=False)
    assert errors_of(res) == {(1, "<row>")} and "ZeroDivisionError: boom" in res.errors[0].reason


VALUES = [None, 0, -1, 1.5, float("nan"), float("inf"), True, "", "abc", "\udcff", [], [1, "a"], {}, {"a": None},
          [{"x": 1}], {"bytes": None, "path": None}]


def test_fuzzed_rows_never_crash_and_every_row_is_accounted_for(tmp_path):
    """Each fixture row with one field replaced by a random value (fixed seed): the scan never raises,
    and every input row ends up as a record, a reported error or a listed skip."""
    rng = random.Random(0)
    names = ["canonical.jsonl", "rlaif_v.jsonl", "rlhf_v.jsonl", "vlfeedback.jsonl", "beavertails_v.jsonl",
             "trl_preference.jsonl", "sharegpt.jsonl", "mm_rlhf.jsonl"]
    for name in names:
        fmt = {"canonical.jsonl": "canonical", "rlaif_v.jsonl": "rlaif_v", "rlhf_v.jsonl": "rlhf_v",
               "vlfeedback.jsonl": "vlfeedback", "beavertails_v.jsonl": "beavertails_v",
               "trl_preference.jsonl": "trl", "sharegpt.jsonl": "sharegpt", "mm_rlhf.jsonl": "mm_rlhf"}[name]
        base = [json.loads(line) for line in (FIX / name).read_text().splitlines()]
        rows = []
        for _ in range(30):
            row = dict(rng.choice(base))
            row[rng.choice(sorted(row))] = rng.choice(VALUES)
            rows.append(row)
        text = "".join(json.dumps(r).replace("images/", str(FIX / "images") + "/") + "\n" for r in rows)
        path = tmp_path / f"fuzz-{name}"
        path.write_text(text)
        res = scan(path, format=fmt)
        canon = res.canonical.select_columns(["__row__", "__status__"]).to_dict()
        ok_rows = {r for r, s in zip(canon["__row__"], canon["__status__"]) if s == "ok"}
        seen = ok_rows | {e.row for e in res.errors} | {s.row for s in res.skipped}
        assert seen == set(range(len(rows))), (name, sorted(set(range(len(rows))) - seen))
        assert all(not isinstance(v, float) or math.isfinite(v) for r in res.records for v in (getattr(r, "margin", 0) or 0,))
