"""The demo pipeline: pieces on hand-made inputs (fast), a minimal end-to-end run (slow), and the
full demo asserting its target (slow; ~7 min on a 2-core CPU)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from vlalign.evaluation.items import ItemValues
from vlalign.experiments.demo import DemoConfig, verdict, verdict_text
from vlalign.experiments.evaluator import Evaluation
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


def evaluation(hallucinating: int, pope_yes_right: int = 100, n: int = 200) -> Evaluation:
    """A hand-made evaluation: ``n`` captions naming 2 object types each, the first ``hallucinating`` of
    them with one of the two hallucinated (CHAIR_i = hallucinating / (2n)); 100 yes-probes of which the
    first ``pope_yes_right`` are answered yes, and 100 no-probes all answered no."""
    ids = [f"c{i}" for i in range(n)]
    chair = ItemValues("ratio", [[float(i < hallucinating) for i in range(n)], [2.0] * n], ids)
    yes = [float(i < pope_yes_right) for i in range(100)]
    tp, fp, fn = yes + [0.0] * 100, [0.0] * 200, [1 - y for y in yes] + [0.0] * 100
    pope = ItemValues("f1", [tp, fp, fn], [f"p{i}" for i in range(200)])
    items = {"chair_i": chair, "pope_f1": pope}
    return Evaluation.of({k: v.value() for k, v in items.items()}, items, seed=0)


def test_verdict_by_hand_and_honest_about_control():
    cfg = DemoConfig.from_recipe()  # target: cut ≥ 40%, POPE F1 tolerance 0.01
    # SFT 40/400 = 0.10, DPO 20/400 = 0.05 (cut 50%), control 18/400 = 0.045; POPE F1 1.0 everywhere
    evs = {"sft": evaluation(40), "dpo": evaluation(20), "control": evaluation(18)}
    v = verdict(evs, cfg)
    assert v["chair_i_cut_dpo"] == pytest.approx(0.5) and v["target_met"]
    # DPO is lower than SFT on 20 captions and never higher: every resample's difference is < 0
    assert v["comparisons"]["dpo_vs_sft"]["chair_i"]["claim"] == "b_better" and v["dpo_beats_sft_chair_i"]
    # the control's 2 fewer hallucinations out of 200 captions: the paired interval includes zero
    assert v["dpo_vs_control_chair_i"] == "no_difference"
    text = verdict_text(v, cfg)
    assert "TARGET MET" in text and "cannot be told apart" in text and "no difference detectable at this sample size" in text
    assert "DPO − SFT over items: seed 0: -0.050 [" in text  # CHAIR_i difference (20 − 40) hallucinated / 400 mentioned
    # a control with no hallucination beats DPO on every resample
    v = verdict({**evs, "control": evaluation(0)}, cfg)
    assert v["dpo_vs_control_chair_i"] == "a_better" and "The control beats DPO" in verdict_text(v, cfg)
    # POPE F1 dropped from 1.0 to 2·80/(2·80 + 20) = 0.889 > tolerance → not met, whatever CHAIR did
    assert not verdict({**evs, "dpo": evaluation(20, pope_yes_right=80)}, cfg)["target_met"]
    # a 50% point cut that the bootstrap cannot separate from zero is no target met: 2/20 → 1/20 captions
    small = {"sft": evaluation(2, n=10), "dpo": evaluation(1, n=10)}
    assert not verdict(small, cfg)["target_met"]


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
    # issue 12: each rate with its 95% CI over items; the differences and verdicts from paired bootstraps
    for group in ("sft", "dpo", "control"):
        for key in ("chair_i", "pope_f1", "object_recall"):
            iv = m["intervals"][group][key]
            assert iv["value"] == pytest.approx(m[group][key]) and iv["low"] <= iv["value"] <= iv["high"]
    assert set(m["differences"]) == {"dpo_vs_sft", "control_vs_sft"}
    diff = m["differences"]["dpo_vs_sft"]["chair_i"]
    assert diff["value"] == pytest.approx(m["dpo"]["chair_i"] - m["sft"]["chair_i"])
    assert m["verdict"]["comparisons"]["dpo_vs_control"]["chair_i"]["claim"] in ("a_better", "b_better", "no_difference")
    assert m["machine"]["cpu"] and m["machine_line"] in res.output
    from vlalign.experiments.base import load_base

    base = load_base(out)  # the experiments can start from the demo's SFT model
    assert base.sft_model == (out / "sft" / "final").resolve() and len(base.pairs) == m["pairs"]["hallucinated"]
    assert base.prompt_file.is_file() and base.vocab_size > 0
    page = (out / "report.html").read_text()
    assert len(re.findall(r"data:image/png;base64,", page)) == 4  # bars, SFT, DPO and control curves
    assert "control" in page and (out / "config.yaml").is_file()


@pytest.mark.slow
def test_full_demo_meets_target(tmp_path):
    """The README promise: DPO cuts CHAIR_i by ≥ 40% vs SFT with POPE F1 not dropping."""
    from vlalign.experiments.demo import run_demo

    result = run_demo(DemoConfig.from_recipe(), tmp_path / "demo")
    assert result["sft"]["chair_i"] > 0.05, "SFT must hallucinate measurably for the demo to mean anything"
    assert result["verdict"]["target_met"], json.dumps(result["verdict"])
    assert result["timing_s"]["total"] < 600
