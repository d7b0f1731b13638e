"""The trainers honour the whole ``data:`` section: loading options reach ``load_records`` (a bad-rows
report appears), ``data.num_workers`` encodes in worker processes without changing a single weight,
``data.streaming`` trains from a stream and resumes it exactly, and options a trainer cannot honour are
config errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vlalign.trainers.configs import DPOConfig, SFTConfig
from vlalign.trainers.logging import read_metrics

LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}


def cfg(kind, model_dir, train, out, data=None, **kw):
    base = {"output_dir": str(out), "model": {"name_or_path": str(model_dir)},
            "data": {"train": str(train), "max_length": 128, **(data or {})}, "per_device_batch_size": 2,
            "learning_rate": 5e-3, "lr_scheduler": "constant", "progress": False, "seed": 1}
    return (DPOConfig if kind == "dpo" else SFTConfig).model_validate({**base, **kw})


def weights(out):
    return load_file(out / "final" / "model.safetensors")


def assert_same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["dpo", "rm"])
def test_workers_give_bit_identical_weights(kind, tiny_model_dir, trainer_data, tmp_path):
    """Worker encoding (the up-front check and the steps ahead) follows the same plan (row indices per
    step): the same batches, so the same weights, bit for bit, as encoding in the training process."""
    from vlalign.trainers.dpo import train_dpo
    from vlalign.trainers.reward_model import RewardModelConfig, train_reward_model

    llava = tiny_model_dir("llava")
    runs = {}
    for n in (0, 1):
        out = tmp_path / f"w{n}"
        if kind == "dpo":
            train_dpo(cfg("dpo", llava, trainer_data[0], out, {"num_workers": n, "limit": 6}, max_steps=3))
            runs[n] = weights(out)
        else:
            rm = RewardModelConfig.model_validate(
                {"output_dir": str(out), "model": {"name_or_path": str(llava)}, "per_device_batch_size": 2,
                 "data": {"train": str(trainer_data[0]), "max_length": 128, "limit": 6, "num_workers": n},
                 "max_steps": 3, "learning_rate": 5e-3, "lr_scheduler": "constant", "progress": False, "seed": 1})
            train_reward_model(rm)
            final = out / "final"
            head = torch.load(final / "score_head.pt", weights_only=True)
            runs[n] = {**load_file(final / "model.safetensors"), **{f"head.{k}": v for k, v in head.items()}}
    assert_same(runs[0], runs[1])


def test_streamed_dpo_killed_and_resumed_equals_uninterrupted(tiny_model_dir, trainer_data, tmp_path):
    """A streamed DPO run (LoRA, reference = adapter-disabled policy, scored on the fly) stopped after 3 of
    6 steps — mid-epoch: 6 of the 8 rows read — and resumed from checkpoint-3 ends bit-identical to an
    uninterrupted streamed run; the stream position is in the checkpoint."""
    from vlalign.trainers.dpo import train_dpo

    llava = tiny_model_dir("llava")
    data = {"streaming": True, "shuffle_buffer": 4}
    extra = {"max_steps": 6, "save_steps": 3, "model": {"name_or_path": str(llava), "lora": LORA},
             "reference": {"mode": "adapter"}}
    full, killed = tmp_path / "full", tmp_path / "killed"
    train_dpo(cfg("dpo", llava, trainer_data[0], full, data, **extra))
    with pytest.raises(RuntimeError, match="stopped after 3 steps"):
        train_dpo(cfg("dpo", llava, trainer_data[0], killed, data, **extra), stop_after=3)
    state = json.loads((killed / "checkpoint-3" / "trainer_state.json").read_text())["source"]
    assert (state["kind"], state["next_step"], state["records"]) == ("stream", 3, 6)
    train_dpo(cfg("dpo", llava, trainer_data[0], killed, data, resume=True, **extra))
    assert [m["step"] for m in read_metrics(killed)] == list(range(1, 7))
    assert_same(weights(full), weights(killed))
    # step 1: policy == reference (LoRA B starts at 0) -> the DPO loss is log 2 = 0.6931
    assert round(read_metrics(full)[0]["loss"], 4) == 0.6931


def test_streamed_sft_step_equals_map_style_step(tiny_model_dir, trainer_data, tmp_path):
    """One SFT step over all 8 rows: from the stream (no shuffle) and from the loaded rows (a permutation
    of them) it is the same token-mean NLL over the same tokens, so the same SGD update up to the order of
    float sums (row order differs). The step moves weights by up to ``moved``; the two runs may differ by
    float rounding only, far below 1e-4 of that step (float32 sums of 8 rows: ~1e-7 relative; measured 1.5e-8 against a
    0.077 step)."""
    from vlalign.trainers.sft import train_sft

    llava = tiny_model_dir("llava")
    outs = {}
    for mode, data in (("map", {}), ("stream", {"streaming": True, "shuffle_buffer": 1})):
        outs[mode] = tmp_path / mode
        train_sft(cfg("sft", llava, trainer_data[1], outs[mode], data, per_device_batch_size=8, max_steps=1,
                      optimizer="sgd", learning_rate=0.5))
    a, b = weights(outs["map"]), weights(outs["stream"])
    assert a.keys() == b.keys()
    moved = weights_moved(llava, a)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-3, moved  # the step changed the weights (so the comparison is not trivially true)
    assert diff < 1e-4 * moved, (diff, moved)
    assert read_metrics(outs["map"])[0]["loss"] == pytest.approx(read_metrics(outs["stream"])[0]["loss"], abs=1e-5)


def weights_moved(model_dir, trained):
    from safetensors.torch import load_file as load

    start = load(next(model_dir.glob("*.safetensors")))
    return max(float((trained[k] - start[k]).abs().max()) for k in trained if k in start)


def test_loading_options_reach_the_trainer(tiny_model_dir, trainer_data, tmp_path):
    """data.on_bad_rows=skip + data.bad_rows_report: the trainer skips the bad row and writes the report
    naming it (the options of data: reach load_records)."""
    from vlalign.trainers.dpo import train_dpo

    src = trainer_data[0]
    rows = [json.loads(line) for line in src.read_text().splitlines()][:4]
    for r in rows:
        r["images"] = [str(src.parent / r["images"][0])]
    rows.insert(1, {**rows[0], "id": "broken", "chosen": None})
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "bad.json"
    out = tmp_path / "run"
    train_dpo(cfg("dpo", tiny_model_dir("llava"), data_file, out,
                  {"on_bad_rows": "skip", "bad_rows_report": str(report)}, max_steps=1))
    listed = json.loads(report.read_text())
    assert (listed["n_rows"], listed["n_records"], listed["n_bad_rows"]) == (5, 4, 1)
    assert [e["row"] for e in listed["errors"]] == [1]
    assert len(read_metrics(out)) == 1


@pytest.mark.parametrize(("kind", "data", "extra", "message"), [
    ("dpo", {"streaming": True}, {"max_steps": 2}, "reference.mode=adapter"),
    ("dpo", {"streaming": True}, {"max_steps": 2, "loss": "kto"}, "needs map-style data"),
    ("sft", {"streaming": True}, {}, "needs max_steps"),
    ("sft", {"streaming": True, "eval_fraction": 0.25}, {"max_steps": 2}, "give the held-out rows as data.eval"),
    ("grpo", {"streaming": True}, {"max_steps": 2}, "not supported by GRPOConfig"),
    ("grpo", {"num_workers": 2}, {}, "data.num_workers=2 is not supported by GRPOConfig"),
])
def test_unsupported_data_options_are_config_errors(kind, data, extra, message, tmp_path):
    from pydantic import ValidationError

    from vlalign.trainers.grpo import GRPOConfig

    cls = {"dpo": DPOConfig, "sft": SFTConfig, "grpo": GRPOConfig}[kind]
    raw = {"output_dir": str(tmp_path), "model": {"name_or_path": "x"}, "data": {"train": "x.jsonl", **data},
           **extra}
    if kind == "grpo":
        raw["reward"] = {"name": "shapes_rules"}
    with pytest.raises(ValidationError, match=message):
        cls.model_validate(raw)
