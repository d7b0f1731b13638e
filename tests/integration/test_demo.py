"""The demo pipeline: pieces on hand-made inputs (fast), a minimal end-to-end run (slow), and the
full demo asserting its target (slow; ~7 min on a 2-core CPU)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from vlalign.experiments.demo import DemoConfig, verdict, verdict_text
from vlalign.experiments.onpolicy import label_answers

SCENE = {
    "id": "s", "image": "images/s.png", "split": "train", "image_size": 64,
    "objects": [
        {"shape": "circle", "color": "red", "size": "large", "x": 10, "y": 10, "bbox": [0, 0, 20, 20]},
        {"shape": "triangle", "color": "green", "size": "small", "x": 50, "y": 40, "bbox": [40, 30, 60, 50]},
    ],
}  # fmt: skip


def test_label_answers_pairs_only_wrong_answers():
    from vlalign.data.records import PromptRecord

    rec = PromptRecord("r", ["images/s.png"], "Describe the image.", None, {"task": "caption", "scene": SCENE})
    right = "The image shows a red circle and a green triangle."
    wrong = "The image shows a red circle, a blue square and a green triangle."
    pairs, stats = label_answers([rec, rec], [right, wrong])
    assert stats.to_dict() == {"sampled": 2, "hallucinated": 1, "correct": 1}
    (p,) = pairs
    assert p.rejected == wrong and "blue square" not in p.chosen
    assert "red circle" in p.chosen and "green triangle" in p.chosen
    assert p.rejected_segments and "blue square" in wrong[p.rejected_segments[0].start : p.rejected_segments[0].end]


def test_label_answers_claims_only_leaves_omissions_alone():
    from vlalign.data.records import PromptRecord

    rec = PromptRecord("r", ["images/s.png"], "Describe the image.", None, {"task": "caption", "scene": SCENE})
    omits = "The image shows a red circle."  # green triangle missing, nothing false claimed
    claims = "The image shows a red circle and a blue square."  # blue square false, green triangle missing
    pairs, stats = label_answers([rec, rec], [omits, claims], add_missing=False)
    assert stats.to_dict() == {"sampled": 2, "hallucinated": 1, "correct": 1}
    assert pairs[0].chosen == "The image shows a red circle."  # false claim removed, omission not added
    full, _ = label_answers([rec], [claims])  # default: omissions are added too
    assert "green triangle" in full[0].chosen


def test_label_answers_yes_no_pairs_only_wrong_answers():
    from vlalign.data.records import PromptRecord

    rec = PromptRecord("q", ["images/s.png"], "Is there a blue square in the image?", "No.", {"task": "yes_no", "scene": SCENE})
    pairs, stats = label_answers([rec, rec, rec], ["No.", "no", "Yes."])  # "no" parses as the reference's "no"
    assert stats.to_dict() == {"sampled": 3, "hallucinated": 1, "correct": 2}
    assert (pairs[0].chosen, pairs[0].rejected, pairs[0].meta["task"]) == ("No.", "Yes.", "yes_no")


def test_verdict_by_hand_and_honest_about_control():
    cfg = DemoConfig()
    m = {
        "sft": {"chair_i": 0.20, "pope_f1": 0.80},
        "dpo": {"chair_i": 0.10, "pope_f1": 0.805},
        "control": {"chair_i": 0.09, "pope_f1": 0.80},
    }
    v = verdict(m, cfg)
    # (0.10 − 0.20)/0.20 = −0.5 → cut 0.5 ≥ 0.4 and 0.805 ≥ 0.80 − 0.01 → met
    assert v["chair_i_cut_dpo"] == pytest.approx(0.5) and v["target_met"]
    assert v["chair_i_cut_control"] == pytest.approx(0.55) and v["control_does_as_well"]
    assert "not by preference learning" in verdict_text(v, cfg)
    assert "TARGET MET" in verdict_text(v, cfg)
    m["dpo"]["pope_f1"] = 0.70  # F1 dropped by 0.10 > tolerance → not met, whatever CHAIR did
    assert not verdict(m, cfg)["target_met"]


SMOKE = [
    "data.n_train=40", "data.n_eval=8", "sft.steps=2", "sft.batch_size=4", "sampling.n_prompts=8",
    "dpo.steps=2", "dpo.batch_size=4", "model.text_hidden=32", "model.vision_hidden=32",
    "model.text_intermediate=64", "model.vision_intermediate=64", "generation.max_new_tokens=8",
    "sampling.max_new_tokens=8", "sampling.samples_per_prompt=1", "eval_limit=8",
    "vision_warmup.steps=2", "vision_warmup.batch_size=4",
    "sampling.add_missing=true", "sampling.temperature=1.0",  # a 2-step model names no objects: omissions make the pairs
]  # fmt: skip


def test_demo_smoke_end_to_end(tmp_path):
    """Minimal budget: checks the plumbing and the outputs, not the effect."""
    from vlalign.cli import app

    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--seed", "3", *SMOKE])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    for group in ("sft", "dpo", "control"):
        assert {"chair_i", "chair_s", "pope_f1", "object_recall", "image_nll_gap"} <= set(m[group])
    assert "vision_warmup" in m["timing_s"] and (out / "warm_model" / "config.json").is_file()
    assert m["seed"] == 3 and m["pairs"]["sampled"] == 8
    from vlalign.experiments.method_runs import load_base

    base = load_base(out)  # the experiments can start from the demo's SFT model
    assert base.sft_model == (out / "sft" / "final").resolve() and len(base.pairs) == m["pairs"]["hallucinated"]
    assert base.prompt_file.is_file() and base.vocab_size > 0
    page = (out / "report.html").read_text()
    assert len(re.findall(r"data:image/png;base64,", page)) == 4  # bars, SFT, DPO and control curves
    assert "control" in page and (out / "config.yaml").is_file()


@pytest.mark.slow
def test_full_demo_meets_target(tmp_path):
    """The README promise: DPO cuts CHAIR_i by ≥ 40% vs SFT with POPE F1 not dropping."""
    from vlalign.config import load_config
    from vlalign.experiments.demo import DEFAULT_CONFIG, run_demo

    result = run_demo(load_config(DemoConfig, DEFAULT_CONFIG), tmp_path / "demo")
    assert result["sft"]["chair_i"] > 0.05, "SFT must hallucinate measurably for the demo to mean anything"
    assert result["verdict"]["target_met"], json.dumps(result["verdict"])
    assert result["timing_s"]["total"] < 600
