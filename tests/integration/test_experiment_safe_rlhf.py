"""`vlalign experiment safe-rlhf` end to end at toy sizes (the CLI, files, keys, rates in [0, 1], a
second run reusing the first one's SFT model); the full recipe with issue #7's target is @slow."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

TOY = {
    "seeds": [0],
    "fixed_penalties": [2.0],  # one fixed-penalty run beside safe_ppo and the control
    "model": {"text_hidden": 32, "text_layers": 1, "text_heads": 2, "text_intermediate": 64,
              "vision_hidden": 32, "vision_layers": 1, "vision_heads": 2, "vision_intermediate": 64},
    "data": {"n_train": 8, "n_eval": 4, "image_size": 32, "yes_no_per_scene": 0, "n_safety": 16, "n_safety_eval": 8,
             "n_safety_image": 0, "n_safety_image_eval": 0},
    "sft": {"steps": 3, "batch_size": 8, "warmup_steps": 0},
    "rl": {"steps": 2, "prompts_per_step": 2, "num_samples": 2, "max_new_tokens": 6},
    "generation": {"max_new_tokens": 8},
}  # fmt: skip
RATES = ["harmful_compliance_rate", "benign_refusal_rate", "benign_exact_rate", "eval_cost"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from vlalign.cli import app
    from vlalign.config.base import deep_merge
    from vlalign.recipes import recipe_path

    tmp = tmp_path_factory.mktemp("safe_rlhf")  # a complete recipe file of one's own: the packaged one + TOY
    (tmp / "toy.yaml").write_text(yaml.safe_dump(deep_merge(yaml.safe_load(recipe_path("experiments/safe_rlhf").read_text()), TOY)))
    res = CliRunner().invoke(app, ["experiment", "safe-rlhf", "--out", str(tmp / "out"), "--config", str(tmp / "toy.yaml"),
                                   "comply_share=1.0"])  # fmt: skip
    assert res.exit_code == 0, res.output + repr(res.exception)
    return tmp / "out", res.output


def test_toy_run_writes_every_file_and_key(toy_run):
    out, stdout = toy_run
    m = json.loads((out / "metrics.json").read_text())
    assert [(r["method"], r["seed"]) for r in m["runs"]] == [("safe_ppo", 0), ("ppo", 0), ("ppo_fixed_penalty_2", 0)]
    for metrics in [m["sft"], *(r["metrics"] for r in m["runs"])]:
        assert all(0.0 <= metrics[k] <= 1.0 for k in RATES), metrics
        assert (metrics["n_harmful"], metrics["n_benign"]) == (4, 4)  # 8 eval prompts, every other one harmful
    safe, ctl, fixed = m["runs"]
    assert [s for s, _ in safe["lambda"]] == [1, 2] and all(lam > 0 for _, lam in safe["lambda"]) and ctl["lambda"] == []
    assert all(set(r["train_cost"]) == {"all", "last"} and 0 <= r["train_cost"]["all"] <= 1 for r in m["runs"])
    assert fixed["lambda"] == [] and (safe["cost_coef"], ctl["cost_coef"], fixed["cost_coef"]) == (None, None, 2.0)
    assert set(m["aggregate"]) == {"safe_ppo", "ppo", "ppo_fixed_penalty_2"} and m["aggregate"]["safe_ppo"]["n_seeds"] == 1
    assert m["base"]["sft_targets"] == {"comply": 8, "refuse": 0, "help": 8}  # comply_share=1.0 override took
    # issue 12: rates with 95% CIs over prompts, seeds' spread, paired verdicts, the machine
    for run in m["runs"]:
        for k in RATES:
            iv = run["intervals"][k]
            assert iv["value"] == pytest.approx(run["metrics"][k]) and iv["low"] <= iv["value"] <= iv["high"]
    assert m["aggregate"]["ppo"]["spread"]["harmful_compliance_rate"]["per_seed"] == [ctl["metrics"]["harmful_compliance_rate"]]
    vs = m["comparisons"]["safe_ppo"]["vs_control"]["harmful_compliance_rate"]
    assert vs["per_seed"][0]["value"] == pytest.approx(safe["metrics"]["harmful_compliance_rate"] - ctl["metrics"]["harmful_compliance_rate"])
    vs = m["comparisons"]["ppo_fixed_penalty_2"]["vs_safe_ppo"]["benign_refusal_rate"]  # fixed − learned, paired
    assert vs["per_seed"][0]["value"] == pytest.approx(fixed["metrics"]["benign_refusal_rate"] - safe["metrics"]["benign_refusal_rate"])
    assert set(m["comparisons"]["ppo_fixed_penalty_2"]) == {"vs_sft", "vs_control", "vs_safe_ppo"}
    assert any(line.startswith("Fixed cost penalty vs the learned λ") for line in m["summary"])
    assert m["machine"]["cpu"] and "Machine:" in stdout
    assert m["timing_s"]["total"] > 0 and m["summary"][0].startswith("Target (issue #7)")
    assert "harmful compliance" in stdout and "wrote" in stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["comply_share"] == 1.0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") == 2 and "Every run" in html
    # the control's cost is scored on its rollouts (gold/*), Safe-PPO's λ is logged
    ctl_rows = [json.loads(line) for line in (out / "runs" / "ppo_seed0" / "metrics.jsonl").read_text().splitlines()]
    assert all("gold/mean" in r and "lagrange/lambda" not in r for r in ctl_rows)
    # the fixed penalty: the Safe-PPO trainer at its constant c, no λ
    fixed_rows = [json.loads(line) for line in (out / "runs" / "ppo_fixed_penalty_2_seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["cost/coef"] for r in fixed_rows if "cost/coef" in r] == [2.0, 2.0] and not any("lagrange/lambda" in r for r in fixed_rows)
    answers = [json.loads(line) for line in (out / "eval" / "safe_ppo_seed0" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 8 and {a["task"] for a in answers} == {"safety"}


def test_second_run_reuses_the_sft_model(toy_run, tmp_path):
    from vlalign.experiments.safe_rlhf import SafeRLHFConfig, run_safe_rlhf

    first, _ = toy_run
    cfg = SafeRLHFConfig.from_recipe(overrides={**TOY, "methods": ["ppo"], "base_from": str(first)})
    res = run_safe_rlhf(cfg, tmp_path, log=lambda s: None)
    assert not (tmp_path / "sft").exists() and not (tmp_path / "data").exists()
    before = json.loads((first / "metrics.json").read_text())["sft"]
    assert res["sft"]["harmful_compliance_rate"] == before["harmful_compliance_rate"]  # the same SFT model, greedy
    assert math.isfinite(res["runs"][0]["metrics"]["eval_reward"])


@pytest.mark.slow
def test_full_recipe_meets_issue_7_target(tmp_path):
    """The README's result: Safe-PPO < 5% harmful compliance AND < 10% benign refusal in every seed,
    from a helpful-only SFT model that complies; the reward-only control does not get there."""
    from vlalign.experiments.safe_rlhf import SafeRLHFConfig, run_safe_rlhf

    cfg = SafeRLHFConfig.from_recipe()
    res = run_safe_rlhf(cfg, tmp_path, log=print)
    assert res["sft"]["harmful_compliance_rate"] > 0.5  # there is something to fix
    safe, ctl = res["aggregate"]["safe_ppo"], res["aggregate"]["ppo"]
    assert safe["seeds_meeting_target"] == len(cfg.seeds)
    assert ctl["harmful_compliance_rate"] > cfg.target_harmful_compliance
    # the fixed penalty at the indifference point c = 1 does not refuse; at c = 2 it meets the target too
    assert res["aggregate"]["ppo_fixed_penalty_1"]["harmful_compliance_rate"] > cfg.target_harmful_compliance
    assert res["aggregate"]["ppo_fixed_penalty_2"]["seeds_meeting_target"] == len(cfg.seeds)
    assert res["timing_s"]["total"] < 30 * 60
