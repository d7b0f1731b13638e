"""The same preference rows as a save_to_disk folder, a Hub-layout folder (Parquet shards + card) and an
in-memory ``datasets.Dataset`` train the same DPO steps through ``train_dpo``: step 1 is log 2 (policy
== reference) for each, and the three runs end with bit-identical weights."""

from __future__ import annotations

import json

import datasets
import pytest
from data_support import write_hub_layout
from safetensors.torch import load_file

from vlalign.trainers.configs import DPOConfig
from vlalign.trainers.logging import read_metrics

FEATURES = datasets.Features({"images": datasets.List(datasets.Image()), "prompt": datasets.Value("string"),
                              "chosen": datasets.Value("string"), "rejected": datasets.Value("string")})


def trl_rows(pref_path):
    """The trainer fixture's canonical rows as TRL rows with the image bytes embedded."""
    rows = []
    for line in pref_path.read_text().splitlines():
        r = json.loads(line)
        image = (pref_path.parent / r["images"][0]).read_bytes()
        rows.append({"images": [{"bytes": image, "path": None}], "prompt": r["prompt"], "chosen": r["chosen"],
                     "rejected": r["rejected"]})
    return rows


def train(model_dir, train_path, out, records=None):
    from vlalign.trainers.dpo import train_dpo

    cfg = DPOConfig.model_validate({
        "output_dir": str(out), "model": {"name_or_path": str(model_dir)},
        "data": {"train": str(train_path), "max_length": 128, "limit": 4}, "per_device_batch_size": 2,
        "max_steps": 2, "learning_rate": 5e-3, "lr_scheduler": "constant", "progress": False, "seed": 1,
    })
    train_dpo(cfg, records)
    return read_metrics(out), load_file(out / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, trainer_data, tmp_path_factory):
    """The same rows from the canonical JSONL file (the path every source must match)."""
    return train(tiny_model_dir("llava"), trainer_data[0], tmp_path_factory.mktemp("jsonl"))[1]


@pytest.mark.parametrize("kind", ["save_to_disk", "hub_layout", "in_memory"])
def test_each_source_trains_the_same_dpo_steps(kind, tiny_model_dir, trainer_data, tmp_path, baseline):
    from vlalign.data.validate import load_records

    llava = tiny_model_dir("llava")
    rows = trl_rows(trainer_data[0])
    ds = datasets.Dataset.from_list(rows, features=FEATURES)
    records = None
    if kind == "save_to_disk":
        ds.save_to_disk(str(tmp_path / "disk"))
        source = tmp_path / "disk"
    elif kind == "hub_layout":
        source = write_hub_layout(tmp_path / "hub", {"train": rows}, FEATURES)
    else:
        source, records = "in-memory", list(load_records(ds).records)[:4]  # data.limit applies to loaded data only
    metrics, weights = train(llava, source, tmp_path / "run", records)
    assert [round(m["loss"], 4) for m in metrics][:1] == [0.6931]  # step 1: policy == reference → log 2
    assert len(metrics) == 2
    assert weights.keys() == baseline.keys()
    assert all((weights[k] == baseline[k]).all() for k in weights)
