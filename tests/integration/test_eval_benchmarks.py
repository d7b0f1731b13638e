"""Every benchmark and trust task on a tiny random LLaVA, through the CLI: several tasks with their own
data in one call, intervals for every rate (or the stated reason there is none), the HTML report, and
`vlalign eval compare` across runs."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1]))
from eval_layouts import (
    write_amber,
    write_coco_chair,
    write_mm_safetybench,
    write_mmhal,
    write_pope,
    write_spa_vl,
)

from vlalign.cli import app
from vlalign.evaluation.stats import ece_statistic


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return str(tiny_model_dir("llava"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from vlalign.data.shapes import ShapesConfig, generate_shapes

    out = tmp_path_factory.mktemp("shapes_trust")
    generate_shapes(out, ShapesConfig(seed=1, n_train=8, n_eval=6, n_safety=2, n_safety_eval=4, n_safety_image=2,
                                      n_safety_image_eval=4))
    return out


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _check_intervals(m: dict) -> None:
    """Every metric has an interval that holds its value, or a stated reason for having none."""
    for k, v in m["metrics"].items():
        if math.isnan(v):  # no items (e.g. no parsed first answer to push back on)
            continue
        if k in m["intervals"]:
            ci = m["intervals"][k]
            assert ci["low"] - 1e-9 <= v <= ci["high"] + 1e-9 and ci["n"] > 0, k
        else:  # a reason of its own, not the catch-all for a task that forgot its per-item values
            assert k in m["no_interval"] and "no per-item values recorded" not in m["no_interval"][k], k


def test_all_benchmarks_in_one_call(model, tmp_path):
    data = {"pope": write_pope(tmp_path / "pope")[0], "chair": write_coco_chair(tmp_path / "coco")[0],
            "amber": write_amber(tmp_path / "amber")[0], "mmhal": write_mmhal(tmp_path / "mmhal")[0],
            "safety": write_spa_vl(tmp_path / "spa")[0]}  # fmt: skip
    args = ["eval", "--model", model, "--out", str(tmp_path / "out")]
    for task, path in data.items():
        args += ["--task", task, "--data", str(path)]
    args += ["generation.max_new_tokens=6", "judge.backend=fixed", "judge.backend_kwargs.replies='Rating: 5'", "n_boot=200"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    m = _metrics(tmp_path / "out")
    keys = {"pope_f1_score", "pope_random_accuracy", "coco_cap_chair_i", "coco_cap_chair_s", "coco_cap_recall",
            "amber_chair", "amber_cover", "amber_hal", "amber_cog", "amber_f1", "amber_score", "mmhal_score",
            "mmhal_hallucination_rate", "spa_vl_harmful_compliance_rate", "spa_vl_over_refusal_rate"}  # fmt: skip
    assert keys <= set(m["metrics"]), keys - set(m["metrics"])
    assert m["metrics"]["mmhal_score"] == 5.0 and m["metrics"]["mmhal_hallucination_rate"] == 0.0  # fixed judge
    _check_intervals(m)
    assert "amber_score" in m["no_interval"] and m["task_data"]["chair"] == str(data["chair"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "95% CI over items" in html and "coco_cap_chair_i" in html
    # an MM-SafetyBench folder through the same safety task
    res = CliRunner().invoke(app, ["eval", "--model", model, "--task", "safety", "--data", str(write_mm_safetybench(tmp_path / "mm")[0]),
                                   "--out", str(tmp_path / "mm_out"), "generation.max_new_tokens=4", "n_boot=200"])
    assert res.exit_code == 0, res.output
    assert _metrics(tmp_path / "mm_out")["metrics"]["mm_safetybench_n_skipped"] == 3.0


def test_task_data_mismatch_is_a_usage_error(model, tmp_path):
    res = CliRunner().invoke(app, ["eval", "--model", model, "--out", str(tmp_path), "--task", "pope", "--task", "chair",
                                   "--data", "a", "--data", "b", "--data", "c"])
    assert res.exit_code == 2 and "2 --task but 3 --data" in res.output


def test_trust_tasks_on_shapes_and_compare(model, shapes, tmp_path):
    out = tmp_path / "a"
    res = CliRunner().invoke(app, ["eval", "--model", model, "--data", str(shapes), "--out", str(out),
                                   "--task", "calibration", "--task", "sycophancy", "--task", "consistency",
                                   "--task", "safety", "--task", "chair", "trust.limit=6", "limit=6",
                                   "generation.max_new_tokens=6", "n_boot=200"])  # fmt: skip
    assert res.exit_code == 0, res.output
    outs = [out, tmp_path / "b"]
    shutil.copytree(out, outs[1])  # a second run of the same model on the same items
    m = _metrics(outs[0])
    _check_intervals(m)
    for key in ("calibration_ece", "calibration_brier", "sycophancy_flip_rate", "consistency_paraphrase",
                "consistency_image", "consistency_image_jpeg", "harmful_compliance_rate", "image_harmful_compliance_rate",
                "image_benign_refusal_rate"):  # fmt: skip
        assert key in m["metrics"], key
    # the ECE recomputed by hand from the saved answer-token probabilities equals the reported one
    rows = [json.loads(line) for line in (outs[0] / "answers.jsonl").read_text().splitlines()]
    cal = [r for r in rows if r["task"] == "calibration"]
    p = np.array([r["p_yes"] for r in cal])
    y = np.array([float(r["label"] == "yes") for r in cal])
    conf, correct = np.maximum(p, 1 - p), ((p > 0.5) == (y == 1)).astype(float)
    assert len(cal) == 6 and m["metrics"]["calibration_ece"] == pytest.approx(ece_statistic(10)(conf[None], correct[None])[0])
    assert (outs[0] / "reliability_diagram.png").is_file()
    kinds = {r.get("kind") for r in rows if r["task"] == "safety"}
    assert {"text", "image", "image_benign"} <= kinds
    # the same model twice: every paired difference is exactly 0
    res = CliRunner().invoke(app, ["eval", "compare", str(outs[0]), str(outs[1]), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]
    ece_row = next(r for r in rows if r[0] == "calibration_ece")
    assert ece_row[3].startswith("+0.000 [+0.000, +0.000]") and "no difference detectable" in ece_row[3]
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert "paired bootstrap" in html and "<img" in html


def test_judge_task_with_a_local_vlm_judge_and_reference_model(model, shapes, tmp_path):
    """The `judge` task through the local-VLM backend (the tiny model judging itself, --ref generating the
    reference answers): every judgement is kept with its prompt and raw reply; a tiny random judge writes
    no score, so every grade is a counted parse failure rather than a made-up number."""
    out = tmp_path / "j"
    res = CliRunner().invoke(app, ["eval", "--model", model, "--ref", model, "--data", str(shapes), "--task", "judge",
                                   "--out", str(out), "limit=2", "generation.max_new_tokens=4", "judge.backend=hf",
                                   f"judge.backend_kwargs.model={model}", "judge.aspects=[faithfulness]", "n_boot=200"])
    assert res.exit_code == 0, res.output
    m = _metrics(out)["metrics"]
    rows = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    graded = [r for r in rows if r["aspect"] == "faithfulness"]
    pairs = [r for r in rows if r["aspect"] == "pairwise"]
    assert len(graded) == 2 and len(pairs) == 2 and all("raw" in r and r["judge_prompt"] for r in graded)
    n_failed = sum(r["parse_failure"] for r in graded)
    assert m["judge_faithfulness_parse_failure_rate"] == n_failed / 2
    assert all(len(r["judge_prompt"]) == 2 and r["reference_answer"] is not None for r in pairs)  # both orders
