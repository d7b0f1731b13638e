"""Auto-detection, Parquet + HF Image struct bytes, images helpers, and `vlalign data convert`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlalign.data.formats import FormatDetectionError, detect_format
from vlalign.data.images import ImageChecker, cap_pixels, capped_size, content_name, open_image
from vlalign.data.io import iter_rows
from vlalign.data.validate import load_records

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
EXPECTED = {
    "trl_preference.jsonl": "trl",
    "trl_prompt.jsonl": "trl",
    "trl_kto.jsonl": "trl",
    "rlhf_v.jsonl": "rlhf_v",
    "rlaif_v.jsonl": "rlaif_v",
    "spa_vl.json": "spa_vl",
    "beavertails_v.jsonl": "beavertails_v",
    "vlfeedback.jsonl": "vlfeedback",
    "canonical.jsonl": "canonical",
}


@pytest.mark.parametrize("name,fmt", sorted(EXPECTED.items()))
def test_detects_each_fixture(name, fmt):
    for raw in iter_rows(FIX / name):
        assert detect_format(raw.data.keys()) == fmt


def test_ambiguous_fields_are_refused_with_the_candidates():
    with pytest.raises(FormatDetectionError) as exc:
        detect_format({"image", "question", "chosen", "rejected"}, "x.jsonl")
    msg = str(exc.value)
    assert "rlaif_v" in msg and "spa_vl" in msg and "--format" in msg and "x.jsonl" in msg


def test_unknown_fields_are_refused_listing_formats():
    with pytest.raises(FormatDetectionError, match=r"cannot tell the data format.*--format.*beavertails_v"):
        detect_format({"foo", "bar"})


def test_unknown_format_name_suggests_the_closest():
    with pytest.raises(KeyError, match="did you mean 'rlaif_v'|Did you mean 'rlaif_v'"):
        load_records(FIX / "rlaif_v.jsonl", format="rlaifv")


def _png(color, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _rlaif_parquet(path: Path) -> None:
    """RLAIF-V's on-disk parquet layout: `image` is a struct<bytes: binary, path: string>."""
    rows = [
        {"ds_name": "RLAIF-V", "image": {"bytes": _png((0, 255, 0)), "path": "0.png"}, "question": "Colour?",
         "chosen": "Green.", "rejected": "Red.", "origin_dataset": "x", "origin_split": "{}", "idx": "0", "image_path": "0.png"},
        {"ds_name": "RLAIF-V", "image": {"bytes": b"not an image", "path": "1.png"}, "question": "Colour?",
         "chosen": "Green.", "rejected": "Blue.", "origin_dataset": "x", "origin_split": "{}", "idx": "1", "image_path": "1.png"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_parquet_with_hf_image_struct_bytes(tmp_path):
    _rlaif_parquet(tmp_path / "train.parquet")
    res = load_records(tmp_path / "train.parquet", on_bad_rows="skip")
    assert res.formats == {str(tmp_path / "train.parquet"): "rlaif_v"}
    assert [(e.row, e.field) for e in res.errors] == [(1, "images[0]")]  # the corrupt bytes
    (rec,) = res.records
    assert isinstance(rec.images[0], bytes)
    assert open_image(rec.images[0]).getpixel((0, 0)) == (0, 255, 0)


def test_datasets_library_parquet_round_trip(tmp_path):
    """The exact layout `datasets` writes for an Image column is read back (bytes inside the struct)."""
    import datasets

    ds = datasets.Dataset.from_dict(
        {"images": [[_png((1, 2, 3))]], "prompt": ["Q?"], "chosen": ["yes"], "rejected": ["no"]}
    ).cast_column("images", datasets.Sequence(datasets.Image()))
    ds.to_parquet(str(tmp_path / "d.parquet"))
    (rec,) = load_records(tmp_path / "d.parquet").records
    assert open_image(rec.images[0]).getpixel((0, 0)) == (1, 2, 3)


def test_capped_size_by_hand():
    # 100x50 = 5000 px, cap 1250 → scale sqrt(1250/5000) = 0.5 → 50x25 (aspect 2:1 kept).
    assert capped_size(100, 50, 1250) == (50, 25)
    assert capped_size(10, 10, 100) == (10, 10)  # already small: untouched
    img = cap_pixels(Image.new("RGB", (100, 50)), 1250)
    assert img.size == (50, 25)


def test_open_image_all_reference_kinds(tmp_path):
    Image.new("L", (40, 20), 128).save(tmp_path / "g.png")
    by_path = open_image("g.png", base_dir=tmp_path, max_pixels=200)  # 40*20=800 → scale 0.5 → 20x10
    by_struct = open_image({"bytes": None, "path": str(tmp_path / "g.png")})
    by_bytes = open_image((tmp_path / "g.png").read_bytes())
    assert by_path.mode == "RGB" and by_path.size == (20, 10)
    assert by_struct.size == by_bytes.size == (40, 20)


def test_image_checker_caches_by_path():
    checker = ImageChecker()
    for _ in range(5):
        assert checker.problem(FIX / "images" / "red.png") is None
    assert "not a readable image" in checker.problem(FIX / "images" / "broken.png")
    assert "not found" in checker.problem(FIX / "images" / "nope.png")
    assert checker.n_opened == 2  # red once (cached afterwards), broken once; a missing file is never opened


def test_cli_convert_writes_images_and_reloads(tmp_path):
    from vlalign.cli import app

    _rlaif_parquet(tmp_path / "train.parquet")
    out = tmp_path / "out"
    runner = CliRunner()
    refused = runner.invoke(app, ["data", "convert", str(tmp_path / "train.parquet"), "--out", str(out)])
    assert refused.exit_code == 1 and "row 1" in refused.output
    done = runner.invoke(app, ["data", "convert", str(tmp_path / "train.parquet"), "--out", str(out), "--skip-bad"])
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    name = content_name(_png((0, 255, 0)))  # images are stored under their content hash
    assert len(rows) == 1 and rows[0]["images"] == [f"images/{name}"] and name.endswith(".png")
    assert (out / "images" / name).is_file()
    assert json.loads((out / "report.json").read_text())["n_bad_rows"] == 1
    again = load_records(out / "records.jsonl")  # canonical, auto-detected, image path resolves
    assert again.formats[str(out / "records.jsonl")] == "canonical"
    assert (again.records[0].chosen, open_image(again.records[0].images[0]).getpixel((0, 0))) == ("Green.", (0, 255, 0))


def test_cli_convert_keeps_path_images_relative(tmp_path):
    from vlalign.cli import app

    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["data", "convert", str(FIX / "beavertails_v.jsonl"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    recs = load_records(out / "records.jsonl").records
    assert [r.safety.safer for r in recs] == ["rejected", "chosen"]
    assert Path(recs[0].images[0]).resolve() == (FIX / "images" / "red.png").resolve()
