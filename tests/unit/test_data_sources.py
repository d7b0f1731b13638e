"""Every source through one loading path: Hub-layout folders by path and by id, save_to_disk folders,
in-memory datasets, globs, streaming; bad rows named by their original file and row."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from data_support import fake_hub_cache, png_bytes, write_hub_layout

from vlalign.data.images import open_image
from vlalign.data.sources import SourceSpec, open_source
from vlalign.data.validate import load_records, scan

RLAIF_FEATURES = datasets.Features({
    "ds_name": datasets.Value("string"), "image": datasets.Image(), "question": datasets.Value("string"),
    "chosen": datasets.Value("string"), "rejected": datasets.Value("string"),
    "origin_dataset": datasets.Value("string"), "origin_split": datasets.Value("string"),
    "idx": datasets.Value("string"), "image_path": datasets.Value("string"),
})
COLOURS = [(255, 0, 0), (0, 0, 255), (0, 160, 0), (240, 220, 0)]


def rlaif_rows(n, split="train", bad=()):
    """RLAIF-V rows as the Hub serves them (image = Image feature with bytes); rows in ``bad`` repeat
    the chosen answer as the rejected one."""
    return [{"ds_name": "RLAIF-V", "image": {"bytes": png_bytes(COLOURS[i % 4]), "path": None},
             "question": f"{split} question {i}?", "chosen": f"Answer {i}.",
             "rejected": f"Answer {i}." if i in bad else f"Wrong {i}.", "origin_dataset": "x",
             "origin_split": "{}", "idx": f"{split}-{i}", "image_path": f"{i}.png"} for i in range(n)]


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    # train: 6 rows in 2 shards (rows 0-2 and 3-5); row 4 (shard 1, row 1) is bad. test: 2 rows.
    return write_hub_layout(tmp_path_factory.mktemp("hub") / "RLAIF-V-Dataset",
                            {"train": rlaif_rows(6, bad=(4,)), "test": rlaif_rows(2, "test")}, RLAIF_FEATURES)


def summary(result):
    return [(r.id, r.prompt, r.chosen, open_image(r.images[0]).getpixel((0, 0))) for r in result.records]


def test_hub_layout_folder_loads_by_path_exactly_as_by_id(hub_folder, tmp_path, monkeypatch):
    import huggingface_hub

    by_path = load_records(hub_folder, on_bad_rows="skip")
    assert [r.id for r in by_path.records] == [f"rlaif_v-train-{i}" for i in (0, 1, 2, 3, 5)]
    assert set(by_path.formats.values()) == {"rlaif_v"}
    # the bad row is named by its shard file and its row within that shard
    (err,) = by_path.errors
    assert (Path(err.file).name, err.row, err.field) == ("train-00001-of-00002.parquet", 1, "rejected")
    assert summary(by_path)[0][3] == (255, 0, 0)  # the Image feature's bytes decode lazily to the right pixels
    # the same rows as datasets' own loader returns for the folder (the Hub's on-disk layout)
    direct = datasets.load_dataset(str(hub_folder), split="train")
    assert [r.chosen for r in by_path.records] == [c for i, c in enumerate(direct["chosen"]) if i != 4]
    # by id: the snapshot comes from the Hub cache (offline), then the same code path runs
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    fake_hub_cache(tmp_path / "hub_cache", "openbmb/RLAIF-V-Dataset", hub_folder)
    by_id = load_records("openbmb/RLAIF-V-Dataset", on_bad_rows="skip")
    assert summary(by_id) == summary(by_path)
    assert [(Path(e.file).name, e.row, e.field) for e in by_id.errors] == [(Path(err.file).name, 1, "rejected")]
    test_split = load_records("openbmb/RLAIF-V-Dataset", split="test")
    assert [r.id for r in test_split.records] == ["rlaif_v-test-0", "rlaif_v-test-1"]


def test_unknown_hub_id_or_split_says_what_exists(hub_folder, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError, match="no such file or folder.*Hub"):
        load_records("nobody/no-such-dataset")
    with pytest.raises(ValueError, match="no split 'validation'.*train, test|no split 'validation'.*test, train"):
        load_records(hub_folder, split="validation")


def test_save_to_disk_folders_are_detected_not_misread(tmp_path):
    rows = rlaif_rows(3)
    ds = datasets.Dataset.from_list(rows, features=RLAIF_FEATURES)
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    single = load_records(tmp_path / "single")
    assert [r.id for r in single.records] == ["rlaif_v-train-0", "rlaif_v-train-1", "rlaif_v-train-2"]
    assert single.n_rows == 3 and single.errors == []
    assert load_records(tmp_path / "dict").records[1].id == "rlaif_v-train-1"  # default split: train
    assert [r.id for r in load_records(tmp_path / "dict", split="validation").records] == ["rlaif_v-train-0"]


def test_in_memory_datasets_and_rows_named_by_index():
    rows = rlaif_rows(3, bad=(1,))
    ds = datasets.Dataset.from_list(rows, features=RLAIF_FEATURES)
    res = load_records(ds, on_bad_rows="skip")
    assert [r.id for r in res.records] == ["rlaif_v-train-0", "rlaif_v-train-2"]
    assert [(e.file, e.row, e.field) for e in res.errors] == [("<in-memory Dataset>", 1, "rejected")]
    iterable = load_records(ds.to_iterable_dataset(), on_bad_rows="skip")  # read once into Arrow, then as above
    assert [r.id for r in iterable.records] == ["rlaif_v-train-0", "rlaif_v-train-2"]
    assert [(e.row, e.field) for e in iterable.errors] == [(1, "rejected")]
    streamed = scan(ds.to_iterable_dataset(), streaming=True)  # one constant-memory pass, no records kept
    assert (streamed.n_rows, len(streamed.records), [(e.row, e.field) for e in streamed.errors]) == (3, 2, [(1, "rejected")])
    dd = datasets.DatasetDict({"train": ds})
    assert len(load_records(dd, on_bad_rows="skip").records) == 2


def test_globs_and_streaming_scan(tmp_path):
    fix = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
    for name in ("rlaif_v.jsonl", "trl_kto.jsonl", "trl_prompt.jsonl"):
        (tmp_path / name).write_text((fix / name).read_text().replace("images/", str(fix / "images") + "/"))
    res = load_records(str(tmp_path / "trl_*.jsonl"))
    assert sorted(Path(f).name for f in res.formats) == ["trl_kto.jsonl", "trl_prompt.jsonl"] and len(res.records) == 3
    streamed = scan(tmp_path, streaming=True)
    assert (streamed.n_rows, len(streamed.records), streamed.errors) == (4, 4, [])


def test_format_choice_is_explained(hub_folder):
    res = load_records(hub_folder, on_bad_rows="skip")
    (why,) = set(res.format_reasons.values())
    assert why.startswith("rlaif_v: the only format") and "ds_name" in why and "question" in why


def test_parquet_shards_with_different_schemas_name_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"], "images": [["x.png"]]}),
                   tmp_path / "d" / "a.parquet")
    pq.write_table(pa.table({"prompt": ["a"], "chosen": [1], "rejected": ["c"], "images": [["x.png"]]}),
                   tmp_path / "d" / "b.parquet")
    (tmp_path / "d" / "c.parquet").write_bytes(b"PAR1 not really parquet")
    res = scan(tmp_path / "d")
    (err,) = res.errors
    assert err.row is None and Path(err.file).name == "b.parquet" and "differ" in err.reason
    assert "b.parquet: <file>" in err.line()


def test_parquet_rows_are_read_in_batches_of_bounded_bytes(tmp_path):
    """A streaming shuffle reads several files at once, each holding one read batch: the batch is sized by
    bytes (from the footer), so a file of large rows holds few rows at a time and every row still comes out
    once, in order, with its row number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vlalign.data.rows import READ_BATCH_MAX_ROWS, parquet_rows, read_batch_rows

    blobs = [bytes([i]) * 10_000 for i in range(100)]  # 10,000 bytes per row
    pq.write_table(pa.table({"id": list(range(100)), "image": blobs}), tmp_path / "big.parquet", use_dictionary=False)
    pq.write_table(pa.table({"id": list(range(100)), "text": ["x"] * 100}), tmp_path / "small.parquet")
    pq.write_table(pa.table({"id": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
    meta = {name: pq.ParquetFile(tmp_path / f"{name}.parquet").metadata for name in ("big", "small", "empty")}
    assert read_batch_rows(meta["big"], target_bytes=55_000) == 5  # 55 kB / (10 kB + a little per row)
    assert read_batch_rows(meta["big"], target_bytes=1) == 1  # never below one row
    assert read_batch_rows(meta["small"], target_bytes=55_000) == READ_BATCH_MAX_ROWS  # tiny rows: the row cap
    assert read_batch_rows(meta["empty"]) == READ_BATCH_MAX_ROWS
    for batch_size in (None, 3):
        rows = list(parquet_rows(str(tmp_path / "big.parquet"), batch_size))
        assert [(r.row, r.data["id"]) for r in rows] == [(i, i) for i in range(100)]
        assert [r.data["image"] for r in rows] == blobs


def test_second_load_reuses_the_cached_map(tmp_path):
    """The adapter map is fingerprinted: the same file loads from the cache (no new cache file), an
    edited file gets a new one."""
    fix = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
    src = tmp_path / "d.jsonl"
    src.write_text((fix / "rlaif_v.jsonl").read_text().replace("images/", str(fix / "images") + "/"))
    first_load = load_records(src)
    first = first_load.canonical.cache_files
    again = load_records(src)
    assert again.canonical.cache_files == first
    assert again.records.fingerprint() == first_load.records.fingerprint()  # a stable key for caches
    row = json.loads(src.read_text())
    row["chosen"] = "Another answer."
    src.write_text(json.dumps(row) + "\n")
    edited = load_records(src)
    assert edited.canonical.cache_files != first and edited.records[0].chosen == "Another answer."
    assert edited.records.fingerprint() != first_load.records.fingerprint()


def test_open_source_kinds(hub_folder, tmp_path):
    assert open_source(SourceSpec(hub_folder)).label.endswith("[train]")
    assert open_source(SourceSpec(hub_folder, streaming=True)).provenance


def test_validation_map_in_several_processes_gives_the_same_result(hub_folder, tmp_path):
    import shutil

    one = load_records(hub_folder, on_bad_rows="skip")
    shutil.copytree(hub_folder, tmp_path / "copy")  # a fresh copy: nothing cached, the 2-process map runs
    two = load_records(tmp_path / "copy", on_bad_rows="skip", num_proc=2)
    assert summary(two) == summary(one)
    assert [(Path(e.file).name, e.row, e.field) for e in two.errors] == [(Path(e.file).name, e.row, e.field)
                                                                           for e in one.errors]


def test_hub_layout_with_json_files_and_two_configs(tmp_path):
    """A card with two configs whose data files are JSONL: the subset picks the config, and JSON rows go
    through vlalign's reader (a broken line is that row's error, named by file and row)."""
    fix = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
    red = str(fix / "images" / "red.png")
    folder = tmp_path / "repo"
    for config in ("en", "zh"):
        (folder / config).mkdir(parents=True)
        rows = [json.dumps({"images": [red], "prompt": f"{config} {i}?", "chosen": "a", "rejected": "b"}) for i in range(3)]
        rows[1] = rows[1][:-1] if config == "zh" else rows[1]  # a truncated line in zh
        (folder / config / "train.jsonl").write_text("\n".join(rows) + "\n")
    card = ("---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    path: en/*.jsonl\n"
            "- config_name: zh\n  data_files:\n  - split: train\n    path: zh/*.jsonl\n---\n")
    (folder / "README.md").write_text(card)
    en = load_records(folder, subset="en")
    assert [r.prompt for r in en.records] == ["en 0?", "en 1?", "en 2?"]
    zh = load_records(folder, subset="zh", on_bad_rows="skip")
    assert [r.prompt for r in zh.records] == ["zh 0?", "zh 2?"]
    assert [(Path(e.file).as_posix().split("/")[-2:], e.row, e.field) for e in zh.errors] == [(["zh", "train.jsonl"], 1, "<row>")]
