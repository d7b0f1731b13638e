"""`vlalign experiment beyond-control`: the budget rule, best-of-K and the target checks on hand-worked
numbers, and the recipe end to end on a minimal config (report structure, every method measured)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vlalign.config import ConfigError
from vlalign.experiments.beyond_control import BeyondControlConfig, ensemble_reward, label_budget, spread
from vlalign.experiments.beyond_pool import best_of_k
from vlalign.experiments.beyond_report import (
    TargetRule,
    best_method,
    checks_passed,
    perception_ceiling,
    rollout_curves,
    seed_checks,
    wall_text,
)

# ------------------------------------------------------------------------------------------ maths


def test_best_of_k_takes_the_first_best_non_empty_answer():
    assert best_of_k(["a", "b", "c"], [-2.0, 0.0, 0.0]) == 1  # tie between 1 and 2: the first
    assert best_of_k(["  ", "b", "c"], [5.0, -1.0, -3.0]) == 1  # the empty answer never wins
    assert best_of_k(["", " "], [0.0, 1.0]) is None


def test_seed_checks_hand_worked():
    rule = TargetRule(chair_cut=0.8, recall_ratio=0.95)
    # SFT CHAIR_i 0.30, recall 0.80. CHAIR_i 0.05: cut 1 − 0.05/0.30 = 0.8333 ≥ 0.8; recall 0.78: 0.975 ≥ 0.95
    ok = seed_checks(0.05, 0.78, 0.004, 0.30, 0.80, rule)
    assert ok["chair_cut"] == pytest.approx(0.833333, abs=1e-6) and ok["recall_ratio"] == pytest.approx(0.975)
    assert ok["met"]
    assert not seed_checks(0.09, 0.78, 0.004, 0.30, 0.80, rule)["cut_ok"]  # cut 0.70
    assert not seed_checks(0.05, 0.70, 0.004, 0.30, 0.80, rule)["recall_ok"]  # 0.875 × SFT's recall
    lower = seed_checks(0.05, 0.78, -0.001, 0.30, 0.80, rule)  # POPE F1's paired CI lies below zero
    assert not lower["pope_ok"] and not lower["met"]


def test_perception_ceiling_hand_worked():
    # 100 mentions, 30 hallucinated (CHAIR_i 0.3), 20% of them backed by the model's own perception: 6 stay and
    # 24 go, so 6 of 76 mentions remain hallucinated: CHAIR_i 0.0789, a 73.7% cut
    left, cut = perception_ceiling(0.3, 0.2)
    assert left == pytest.approx(6 / 76) and cut == pytest.approx(1 - (6 / 76) / 0.3)
    assert perception_ceiling(0.3, 1.0) == pytest.approx((0.3, 0.0))  # all perception errors: nothing to cut
    assert perception_ceiling(0.3, 0.0) == pytest.approx((0.0, 1.0))
    assert all(math.isnan(x) for x in perception_ceiling(0.3, float("nan")))


def test_wall_text_says_when_runs_were_reused():
    assert wall_text({"total": 12.5, "runs_train_s": 900.0, "runs_reused": 0, "runs": 9}) == "Wall: 12.5 s."
    assert wall_text({"total": 10.0, "runs_train_s": 900.0, "runs_reused": 9, "runs": 9}) == (
        "Wall: 10.0 s for this invocation, which reused 9 of its 9 runs from an earlier one (training time of all runs: 900.0 s).")


def _checks(*flags):
    return [{"cut_ok": c, "recall_ok": r, "pope_ok": p} for c, r, p in flags]


def test_best_method_prefers_seeds_met_then_beating_the_control_then_checks_passed():
    two = _checks((True, True, True), (True, True, True), (False, True, True))
    v = {"rft": {"seeds_met": 3, "beats_control": False, "chair_i": 0.01, "per_seed": two},  # the control is never "best"
         "dpo": {"seeds_met": 2, "beats_control": False, "chair_i": 0.10, "per_seed": two},
         "grpo": {"seeds_met": 2, "beats_control": True, "chair_i": 0.12, "per_seed": two},
         "ppo": {"seeds_met": 1, "beats_control": True, "chair_i": 0.05, "per_seed": two}}  # fmt: skip
    assert best_method(v) == "grpo"
    assert best_method({"rft": v["rft"]}) is None
    # nothing meets the target: the one passing more single checks is closest, even with a higher CHAIR_i
    # (a method that names nothing has CHAIR_i 0 and fails recall on every seed: 4 of 6 checks vs 5 of 6)
    mute = {"seeds_met": 0, "beats_control": False, "chair_i": 0.0, "per_seed": _checks((True, False, True), (True, False, True))}
    near = {"seeds_met": 0, "beats_control": False, "chair_i": 0.2, "per_seed": _checks((False, True, True), (True, True, True))}
    assert checks_passed(mute["per_seed"]) == 4 and checks_passed(near["per_seed"]) == 5
    assert best_method({"rft": v["rft"], "dpo": mute, "grpo": near}) == "grpo"


def test_every_method_gets_the_same_label_budget():
    cfg = BeyondControlConfig.from_recipe()
    want = cfg.pool.n_prompts * cfg.pool.samples_per_prompt
    assert {m: label_budget(cfg, m) for m in cfg.methods} == dict.fromkeys(cfg.methods, want)
    with pytest.raises(ConfigError, match="grpo samples and scores 960 answers but the pool has"):
        BeyondControlConfig.from_recipe(overrides=["grpo.steps=30"])
    with pytest.raises(ConfigError, match="must include the control 'rft'"):
        BeyondControlConfig.from_recipe(overrides={"methods": ["dpo"]})
    with pytest.raises(ConfigError, match="iterative.rounds=3 must divide"):
        BeyondControlConfig.from_recipe(overrides=["iterative.rounds=3"])
    with pytest.raises(ConfigError, match="hybrid.dpo_share=0.3 must split whole"):
        BeyondControlConfig.from_recipe(overrides=["hybrid.dpo_share=0.3"])
    with pytest.raises(ConfigError, match="Did you mean 'ppo'"):
        BeyondControlConfig.from_recipe(overrides={"methods": ["rft", "ppp"]})


def test_yes_no_questions_count_in_the_budget_and_spread_among_the_captions():
    # 256 captions + 64 questions = 320 prompts × K 4: RL must sample 320 prompts (e.g. 32 steps × 10)
    cfg = BeyondControlConfig.from_recipe(overrides=["pool.n_yes_no=64", "grpo.prompts_per_step=10", "ppo.prompts_per_step=10"])
    assert {label_budget(cfg, m) for m in cfg.methods} == {320 * 4}
    with pytest.raises(ConfigError, match=r"but the pool has \(pool.n_prompts \+ pool.n_yes_no\)"):
        BeyondControlConfig.from_recipe(overrides=["pool.n_yes_no=64"])
    # the target preset (512 + 512 prompts, 64 RL steps of 16) keeps every method's budget equal, all nine included
    every = ["rft", "dpo", "mm_dpo", "iterative_dpo", "grpo", "ppo", "ppo_segment", "dpo_grpo", "grpo_ensemble"]
    target = BeyondControlConfig.from_recipe("experiments/beyond_control_target", overrides={"methods": every})
    assert target.pool.n_yes_no == 512 and {label_budget(target, m) for m in every} == {1024 * 4}
    # 6 captions, 2 questions: question j at (j + ½)/2 of the way, after the captions at or before it
    assert spread(list("abcdef"), ["Q1", "Q2"]) == ["a", "b", "Q1", "c", "d", "e", "Q2", "f"]
    assert spread(list("abc"), []) == ["a", "b", "c"]


def test_alignment_freeze_and_the_ensemble_arm_config():
    cfg = BeyondControlConfig.from_recipe()
    sft = Path("/m")
    assert cfg.align_policy(sft) == {"name_or_path": "/m", "freeze": ["vision_tower"]}  # align_freeze null = freeze
    free = BeyondControlConfig.from_recipe(overrides={"align_freeze": []})
    assert free.align_policy(sft)["freeze"] == []
    slow = BeyondControlConfig.from_recipe(overrides=["align_freeze=[vision_tower, projector]", "align_lr_scale={vision_tower: 0.1}",
                                                      "align_lora.enabled=true", "align_lora.r=4"])  # fmt: skip
    policy = slow.align_policy(sft)
    adapter = policy.pop("lora")
    assert policy == {"name_or_path": "/m", "freeze": ["vision_tower", "projector"], "lr_scale": {"vision_tower": 0.1}}
    # the base's SFT (build_sft_model reads `policy`) keeps `freeze` alone, whatever the alignment keys say
    assert slow.policy(sft) == {"name_or_path": "/m", "freeze": ["vision_tower"]}
    assert (adapter["enabled"], adapter["r"], adapter["target_modules"]) == (True, 4, "all-linear")
    assert label_budget(cfg, "grpo_ensemble") == cfg.pool.n_prompts * cfg.pool.samples_per_prompt
    assert ensemble_reward(cfg, Path("/rm")) == {"name": "learned", "kwargs": {"path": "/rm", "aggregate": "conservative",
                                                                                "coef": 1.0, "batch_size": 32}}  # fmt: skip
    with pytest.raises(ConfigError, match="Did you mean 'conservative'"):
        BeyondControlConfig.from_recipe(overrides=["ensemble.aggregate=conservativ"])
    with pytest.raises(ConfigError, match="ensemble.heads"):
        BeyondControlConfig.from_recipe(overrides=["ensemble.heads=1"])


def test_rollout_curves_read_the_feedback_score_of_each_online_run(tmp_path):
    def log(method, rows):
        folder = tmp_path / "runs" / f"{method}_seed0"
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    log("grpo", [{"step": 1, "reward/mean": -1.5}, {"step": 2, "reward/mean": -1.0}, {"step": 2, "loss": 0.3}])
    log("grpo_ensemble", [{"step": 1, "reward/mean": 0.4, "gold/mean": -2.0}])  # its reward is the ensemble's
    log("rft", [{"step": 1, "loss": 2.0}])  # offline: no rollouts
    curves = rollout_curves(tmp_path, ["rft", "grpo", "grpo_ensemble", "ppo"], 0)
    assert curves == {"grpo": [{"step": 1, "feedback score": -1.5}, {"step": 2, "feedback score": -1.0}],
                      "grpo_ensemble": [{"step": 1, "feedback score": -2.0}]}  # fmt: skip


# ------------------------------------------------------------------------------------------ end to end

def test_minimal_run_measures_every_method_and_writes_the_report(tmp_path):
    from vlalign.experiments.beyond_control import run_beyond_control

    # the small preset (configs/experiments/beyond_control_quick.yaml): (6 captions + 2 yes/no questions) × K 4 =
    # 32 labels per method
    cfg = BeyondControlConfig.from_recipe("experiments/beyond_control_quick")
    res = run_beyond_control(cfg, tmp_path, log=lambda s: None)
    methods = cfg.methods
    assert methods == ["rft", "dpo", "mm_dpo", "iterative_dpo", "ppo_segment", "dpo_grpo", "grpo_ensemble"]
    assert [(r["method"], r["seed"]) for r in res["runs"]] == [(m, 0) for m in methods]
    for r in res["runs"]:  # every method measured, on the same items, with its intervals and its label budget
        assert {"chair_i", "object_recall", "pope_f1", "perception_share"} <= set(r["metrics"]), r["method"]
        iv = r["intervals"]["chair_i"]
        assert iv["low"] <= r["metrics"]["chair_i"] <= iv["high"]
        assert r["train"]["labels"] == 32
    # the pool: 8 prompts × 4 answers, scored by the exact judge itself, so no label differs from it
    pool = res["pool"]
    assert (pool["prompts"], pool["yes_no_prompts"], pool["answers"], pool["rft_rows"]) == (8, 2, 32, 8)
    # the prompt file every method samples: the questions spread among the captions, with no reference answer
    prompts = [json.loads(line) for line in (tmp_path / "prompts" / "pool.jsonl").read_text().splitlines()]
    assert [p["meta"]["task"] for p in prompts] == ["caption"] * 2 + ["yes_no"] + ["caption"] * 3 + ["yes_no", "caption"]
    assert all(p.get("reference") is None for p in prompts)
    assert pool["labels_differing_from_exact"] == 0.0 and pool["pairs"] >= 1
    updates = {r["method"]: r["train"]["updates"] for r in res["runs"]}
    assert (updates["rft"], updates["dpo"], updates["mm_dpo"], updates["ppo_segment"]) == (2, 2, 2, 4)
    # the ensemble arm: 2 reward-model steps on every differently scored pair of the pool, then 4 GRPO updates
    # rewarded by the ensemble's mean − std (its logged reward parts say so)
    assert updates["grpo_ensemble"] == 2 + 4
    ens = next(r for r in res["runs"] if r["method"] == "grpo_ensemble")["train"]
    assert ens["rm_pairs"] == pool["rm_pairs"] >= pool["pairs"] and ens["rm_steps"] == 2
    assert 0.0 <= ens["rm_heldout_accuracy"] <= 1.0  # measured on the data's held-out caption pairs
    ens_dir = tmp_path / "runs" / "grpo_ensemble_seed0"
    assert json.loads((ens_dir / "reward_model" / "final" / "reward_model.json").read_text())["heads"] == 2
    logged = [json.loads(line) for line in (ens_dir / "metrics.jsonl").read_text().splitlines()]
    rollouts = [row for row in logged if "reward/ensemble_std" in row]
    assert len(rollouts) == 4 and all("gold/mean" in row for row in rollouts)
    # iterative DPO spent exactly its budget: 2 rounds × 4 prompts × K 4; a round without a batch of pairs
    # trains no step, and the count says so
    it = json.loads((tmp_path / "runs" / "iterative_dpo_seed0" / "summary.json").read_text())
    assert it["labels"] == 32 and len(it["rounds"]) == 2
    assert updates["iterative_dpo"] == sum(r["dpo_steps"] for r in it["rounds"])
    # paired differences vs the control: one interval per seed, equal to the difference of the point values
    ctl = next(r for r in res["runs"] if r["method"] == "rft")["metrics"]["chair_i"]
    for r in res["runs"]:
        if r["method"] != "rft":
            d = res["comparisons"][r["method"]]["vs_control"]["chair_i"]["per_seed"][0]["value"]
            assert d == pytest.approx(r["metrics"]["chair_i"] - ctl)
    # verdict lines: the target line and the control line (with evidence when nothing beats the control)
    text = "\n".join(res["summary"])
    assert "TARGET (" in text and "BEATS THE CONTROL" in text
    if not any(v["beats_control"] for v in res["verdicts"].values()):
        assert "no method beats the control" in text and "perception errors" in text
    md = (tmp_path / "report.md").read_text()
    for heading in ("## Per method", "## Paired difference vs the control", "## Every run", "## Examples (seed 0)"):
        assert heading in md
    assert all(f"| {m} |" in md for m in methods)
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64") == 3  # per method, rollout curves, vs the control
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["machine_line"] and set(saved["aggregate"]) == set(methods)
    sft_share = saved["sft"]["perception_share"]
    assert math.isnan(sft_share) or 0.0 <= sft_share <= 1.0
