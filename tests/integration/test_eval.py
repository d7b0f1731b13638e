"""`vlalign eval` end to end on a tiny random LLaVA and a few Shapes scenes: every metric key is
produced, files are written, and the metric maths is checked against hand-worked values."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vlalign.evaluation.evaluate import EvalConfig, evaluate, implicit_reward_margins, read_records
from vlalign.evaluation.generate import GenerationConfig, generate_answers

CHAIR_KEYS = {"chair_i", "chair_s", "object_recall", "answer_length", "distinct_1", "distinct_2", "bias_rate"}
POPE_KEYS = {f"{p}_{k}" for p in ("pope", "pope_random", "pope_popular", "pope_adversarial")
             for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")}  # fmt: skip
SAFETY_KEYS = {"harmful_compliance_rate", "benign_refusal_rate"}


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from vlalign.data.shapes import ShapesConfig, generate_shapes

    out = tmp_path_factory.mktemp("shapes")
    generate_shapes(out, ShapesConfig(seed=1, n_train=12, n_eval=6, n_safety=4, n_safety_eval=6))
    return out


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from vlalign.models.load import ModelConfig, load_model

    path = tiny_model_dir("llava")
    return path, load_model(ModelConfig(name_or_path=str(path)))


def test_implicit_reward_margin_by_hand():
    pc, pr = torch.tensor([-2.0, -5.0]), torch.tensor([-4.0, -1.0])
    rc, rr = torch.tensor([-3.0, -5.0]), torch.tensor([-3.0, -2.0])
    # row 0: 0.1·((−2+3) − (−4+3)) = 0.1·(1+1) = 0.2 ; row 1: 0.1·((−5+5) − (−1+2)) = 0.1·(0−1) = −0.1
    assert torch.allclose(implicit_reward_margins(pc, pr, rc, rr, 0.1), torch.tensor([0.2, -0.1]))
    # no reference: plain log-prob margin −2−(−4)=2, −5−(−1)=−4
    assert torch.allclose(implicit_reward_margins(pc, pr, None, None, 0.1), torch.tensor([2.0, -4.0]))


def test_generate_is_greedy_deterministic_and_dedupes(tiny, shapes_dir):
    _, lm = tiny
    recs = read_records(shapes_dir / "pope_random.jsonl", 6)
    cfg = GenerationConfig(max_new_tokens=6, batch_size=4)
    a = generate_answers(lm.model, lm.processor, recs + recs, cfg, str(shapes_dir))
    assert len(a) == 12 and a[:6] == a[6:]  # duplicates answered once, mapped back in order
    assert a == generate_answers(lm.model, lm.processor, recs + recs, cfg, str(shapes_dir))


def test_evaluate_all_tasks_with_reference(tiny, shapes_dir):
    _, lm = tiny
    cfg = EvalConfig(limit=6, generation=GenerationConfig(max_new_tokens=8))
    metrics, ctx = evaluate(lm.model, lm.processor, shapes_dir, cfg, ref_model=lm.model)
    assert CHAIR_KEYS | POPE_KEYS | SAFETY_KEYS <= set(metrics)
    # policy == reference → every implicit-reward margin is exactly 0 → ties count half → 0.5
    assert metrics["preference_accuracy"] == 0.5 and metrics["reward_margin"] == 0.0
    assert metrics["n_captions"] == 6.0
    assert len(ctx.answers["pope"]) == 18 and len(ctx.answers["chair"]) == 6
    for key in POPE_KEYS | SAFETY_KEYS | {"chair_i", "chair_s", "object_recall"}:
        assert 0.0 <= metrics[key] <= 1.0, key
    # every rate with per-item values reproduces the reported metric exactly from those items
    expected = {"chair_i", "chair_s", "object_recall", "pope_f1", "pope_accuracy", "pope_yes_ratio",
                "pope_random_f1", "pope_adversarial_accuracy", "preference_accuracy", *SAFETY_KEYS}
    assert expected <= set(ctx.items)
    for key, iv in ctx.items.items():
        assert iv.value() == pytest.approx(metrics[key], nan_ok=True), key
    assert len(ctx.items["pope_f1"].ids) == 18 and len(ctx.items["pope_random_f1"].ids) == 6


def test_eval_cli_writes_files_and_names_policy_only_metric(tiny, shapes_dir, tmp_path):
    from vlalign.cli import app

    path, _ = tiny
    out = tmp_path / "ev"
    res = CliRunner().invoke(
        app, ["eval", "--model", str(path), "--data", str(shapes_dir), "--out", str(out),
              "limit=4", "generation.max_new_tokens=6", "tasks=[chair,pope,preference]"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert "preference_accuracy_policy_logp" in m and "preference_accuracy" not in m
    assert CHAIR_KEYS | POPE_KEYS <= set(m)
    summary = (out / "summary.md").read_text()
    assert "| chair_i |" in summary and "policy's own log-prob margin" in summary
    assert "95% CI over items" in summary
    cis = json.loads((out / "metrics.json").read_text())["intervals"]
    for key in ("chair_i", "pope_f1", "preference_accuracy_policy_logp"):
        assert cis[key]["low"] <= m[key] <= cis[key]["high"] and cis[key]["n"] > 0, key
    reasons = json.loads((out / "metrics.json").read_text())["no_interval"]
    for key in m:  # every number has an interval over items or its own reason for having none
        assert key in cis or (key in reasons and "no per-item values recorded" not in reasons[key]), key
    assert set(reasons) == {"n_captions", "distinct_1", "distinct_2", "time_chair_s", "time_pope_s", "time_preference_s"}
    from vlalign.evaluation.items import load_items, paired_difference

    items = load_items(out)
    same = paired_difference(items["pope_f1"], items["pope_f1"])  # a model against itself: exactly 0
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    assert (out / "config.yaml").is_file() and (out / "answers.jsonl").read_text().count("\n") == 4 + 12 + 0
    assert "pope_f1" in res.output


def test_eval_cli_bad_inputs_fail_clearly(tiny, tmp_path):
    from vlalign.cli import app

    path, _ = tiny
    res = CliRunner().invoke(app, ["eval", "--model", str(path), "--data", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "vlalign data shapes" in res.output
    (tmp_path / "d").mkdir()
    res = CliRunner().invoke(app, ["eval", "--model", str(path), "--data", str(tmp_path / "d"), "--out", str(tmp_path), "tasks=[chair]"])
    assert res.exit_code == 2 and "eval_captions.jsonl does not exist" in res.output
    res = CliRunner().invoke(app, ["eval", "--model", str(path), "--data", str(tmp_path / "d"), "--out", str(tmp_path), "tasks=[chiar]"])
    assert res.exit_code == 2 and "chair" in res.output
