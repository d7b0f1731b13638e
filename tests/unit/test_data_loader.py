"""Map-style batches in worker processes equal the in-process ones; check_all in workers fills the
cache; a DataConfig drives load_records (report written); image URLs only with network allowed."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
import torch

from vlalign.data.collate import CollateConfig, EncodedDataset
from vlalign.data.config import DataConfig
from vlalign.data.loader import MapSource
from vlalign.data.records import PreferenceRecord
from vlalign.data.validate import load_records

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
RED, BLUE = str(FIX / "images" / "red.png"), str(FIX / "images" / "blue.png")


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir("llava"))


def records(n=12):
    return [PreferenceRecord(f"r{i}", [RED if i % 2 else BLUE], "Colour?", f"Answer {i}.", f"Wrong {i}.")
            for i in range(n)]


def plan(step):  # a fixed, step-dependent plan: 2 micro-batches of 2 rows
    return [[(4 * step + k) % 12 for k in (0, 1)], [(4 * step + k) % 12 for k in (2, 3)]]


def same(a, b):
    return a.ids == b.ids and all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs) \
        and torch.equal(a.response_mask, b.response_mask)


def test_map_source_workers_give_the_same_batches_and_resume(processor):
    ds = EncodedDataset(records(), processor, CollateConfig(max_length=128), "pair")
    inline = MapSource(ds, plan)
    expected = [inline.micro_batches(s) for s in range(5)]
    pooled = MapSource(EncodedDataset(records(), processor, CollateConfig(max_length=128), "pair"), plan,
                       num_workers=2)
    got = [pooled.micro_batches(s) for s in range(3)]
    state = pooled.state_dict()
    pooled.close()
    resumed = MapSource(EncodedDataset(records(), processor, CollateConfig(max_length=128), "pair"), plan,
                        num_workers=2)
    resumed.load_state_dict(state)
    got += [resumed.micro_batches(s) for s in range(state["next_step"], 5)]
    resumed.close()
    assert state == {"kind": "map", "next_step": 3}
    assert all(same(x, y) for a, b in zip(expected, got) for x, y in zip(a, b))


def test_check_all_in_workers_fills_the_cache(processor):
    bad = PreferenceRecord("bad", [str(FIX / "images" / "nope.png")], "Colour?", "a", "b")
    ds = EncodedDataset([*records(4), bad], processor, CollateConfig(max_length=128), "pair")
    with pytest.raises(Exception, match=r"1 of 5 rows cannot be trained on"):
        ds.check_all(num_workers=2, progress=False)
    assert sorted(ds._cache) == [0, 1, 2, 3]  # encoded in workers, kept here: training will not re-encode
    serial = EncodedDataset(records(4), processor, CollateConfig(max_length=128), "pair")
    assert all(same(ds.batch([i]), serial.batch([i])) for i in range(4))


def test_data_config_drives_load_records_and_writes_the_bad_rows(tmp_path):
    rows = [{"id": f"p{i}", "images": [RED], "prompt": "Q", "chosen": "a", "rejected": "a" if i == 1 else "b",
             "meta": {}} for i in range(3)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(train=str(tmp_path / "d.jsonl"), on_bad_rows="skip", bad_rows_report=str(tmp_path / "bad.json"))
    res = load_records(cfg)
    assert [r.id for r in res.records] == ["p0", "p2"]
    report = json.loads((tmp_path / "bad.json").read_text())
    assert [(e["row"], e["field"]) for e in report["errors"]] == [(1, "rejected")]


@pytest.fixture
def image_server():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(FIX))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_image_urls_only_with_network_allowed(tmp_path, image_server, monkeypatch):
    monkeypatch.setenv("VLALIGN_IMAGE_CACHE", str(tmp_path / "url_cache"))
    rows = [{"id": "u", "images": [f"{image_server}/images/red.png"], "prompt": "Q", "chosen": "a", "rejected": "b",
             "meta": {}}]
    (tmp_path / "d.jsonl").write_text(json.dumps(rows[0]) + "\n")
    off = load_records(tmp_path / "d.jsonl", on_bad_rows="skip")
    assert [(e.row, e.field) for e in off.errors] == [(0, "images[0]")] and "allow_network" in off.errors[0].reason
    on = load_records(tmp_path / "d.jsonl", allow_network=True)
    (rec,) = on.records
    assert Path(rec.images[0]).parent == tmp_path / "url_cache"  # the record points at the downloaded copy
    assert Path(rec.images[0]).read_bytes() == Path(RED).read_bytes()
