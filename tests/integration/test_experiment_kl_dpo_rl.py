"""`vlalign experiment kl-sweep` and `dpo-vs-rl`: the rule / cost maths on hand-worked numbers, the
token counter on a known forward, and both recipes end to end on a minimal config (the full runs
are @slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from vlalign.config import ConfigError
from vlalign.experiments.compute import TokenCounter
from vlalign.experiments.dpo_vs_rl import DPOvsRLConfig, aggregate, budget_problems, cost_per_improvement
from vlalign.experiments.kl_sweep import KLSweepConfig, StableRule, stable_points, stable_range
from vlalign.experiments.method_runs import group_self_bleu, sequence_kl

# ------------------------------------------------------------------------------------------ maths


def _pt(coef, chair, d2=0.5, ent=2.0, recall=0.6, beats_sft=True):
    return {"coef": coef, "chair_i": chair, "object_recall": recall, "sample_distinct_2": d2, "sample_entropy": ent,
            "beats_sft": beats_sft}  # fmt: skip


def test_stable_points_hand_worked():
    sft = {"chair_i": 0.30, "object_recall": 0.60, "sample_distinct_2": 0.50, "sample_entropy": 2.0}
    rule = StableRule(chair_tolerance=0.10, diversity_floor=0.90)
    # best CHAIR_i = 0.20 → near-best threshold 0.20 × 1.1 = 0.22; diversity floors 0.9 × 0.5 = 0.45, 0.9 × 2.0 = 1.8;
    # recall floor 0.9 × 0.6 = 0.54
    pts = [
        _pt(0.0, 0.20, d2=0.30),  # best, but distinct-2 0.30 < 0.45: collapsed → not stable
        _pt(0.01, 0.21),  # 0.21 ≤ 0.22, < 0.30, diverse → stable
        _pt(0.1, 0.22, ent=1.9),  # 0.22 ≤ 0.22 (edge), entropy 1.9 ≥ 1.8 → stable
        _pt(0.5, 0.25),  # 0.25 > 0.22 → not near-best
        _pt(1.0, 0.21, ent=1.7),  # entropy 1.7 < 1.8 → not diverse
        _pt(2.0, 0.21, recall=0.5),  # recall 0.5 < 0.54 → says too little to count
    ]
    flags = stable_points(pts, sft, rule)
    assert [p["stable"] for p in flags] == [False, True, True, False, False, False]
    assert [p["near_best"] for p in flags] == [True, True, True, False, True, True]
    assert [p["content"] for p in flags] == [True, True, True, True, True, False]
    assert stable_range(flags) == {"low": 0.01, "high": 0.1, "contiguous": True, "coefs": [0.01, 0.1]}


def test_stable_points_need_an_improvement_over_sft():
    # No point is shown better than SFT by the paired bootstrap: none may be called stable, even the sweep's
    # best, and even one whose point estimate (0.09) is below SFT's 0.10.
    sft = {"chair_i": 0.10, "object_recall": 0.6, "sample_distinct_2": 0.5, "sample_entropy": 2.0}
    flags = stable_points([_pt(0.1, 0.09, beats_sft=False), _pt(1.0, 0.15, beats_sft=False)], sft, StableRule())
    assert [p["stable"] for p in flags] == [False, False] and [p["improves"] for p in flags] == [False, False]
    assert stable_range(flags)["low"] is None


def test_stable_range_reports_gaps():
    flags = [{"coef": c, "stable": s} for c, s in [(0.3, True), (0.01, True), (0.1, False)]]
    assert stable_range(flags) == {"low": 0.01, "high": 0.3, "contiguous": False, "coefs": [0.01, 0.3]}


def test_cost_per_improvement():
    # CHAIR_i 0.30 → 0.25 removes 0.05 = 5 units of 0.01; 100 s / 5 = 20 s per 0.01
    assert cost_per_improvement(100.0, 0.30, 0.25) == pytest.approx(20.0)
    assert math.isnan(cost_per_improvement(100.0, 0.30, 0.31))  # worse: no cost per improvement


def test_aggregate_hand_worked():
    sft = {"chair_i": 0.30, "object_recall": 0.5}
    metrics = {k: 0.5 for k in ("object_recall", "pope_f1", "gold_reward", "sample_distinct_2", "sample_self_bleu",
                                 "sample_entropy", "kl_to_sft", "answer_length")}  # fmt: skip
    runs = [{"method": "dpo", "seed": seed, "metrics": {**metrics, "chair_i": c}, "train": {"seconds": s, "forward_tokens": t}}
            for seed, c, s, t in [(3, 0.26, 10.0, 1000), (5, 0.24, 20.0, 3000)]]  # fmt: skip
    agg = aggregate(runs, sft)["dpo"]
    # mean CHAIR_i 0.25 → 5 units of 0.01 removed; mean 15 s → 3 s per unit; mean 2000 tokens → 400 per unit
    # sample std of (0.26, 0.24): sqrt((0.01² + 0.01²) / 1) = sqrt(2e-4)
    assert agg["chair_i"] == pytest.approx(0.25) and agg["chair_i_std"] == pytest.approx(math.sqrt(2e-4))
    assert agg["spread"]["chair_i"]["per_seed"] == [0.26, 0.24] and agg["spread"]["chair_i"]["seeds"] == [3, 5]
    assert agg["seconds_per_0.01_chair_i"] == pytest.approx(3.0)
    assert agg["tokens_per_0.01_chair_i"] == pytest.approx(400.0)
    # The same CHAIR_i drop while naming far fewer objects (recall 0.1 < 0.9 × 0.5 = 0.45) buys nothing.
    mute = [{**r, "metrics": {**r["metrics"], "object_recall": 0.1}} for r in runs]
    lost = aggregate(mute, sft)["dpo"]
    assert lost["content_lost"] and math.isnan(lost["seconds_per_0.01_chair_i"])


def test_budget_must_match():
    def cfg(**grpo):
        return DPOvsRLConfig.from_recipe(overrides={"methods": ["dpo", "grpo"], "dpo": {"steps": 10, "batch_size": 8},
                                                    "grpo": grpo})  # fmt: skip

    ok = cfg(steps=10, prompts_per_step=4, num_samples=4)  # 2 × 8 = 4 × 4 = 16 responses
    assert budget_problems(ok) == []
    with pytest.raises(ConfigError, match="responses per update"):
        cfg(steps=10, prompts_per_step=8, num_samples=4)
    with pytest.raises(ConfigError, match="grpo.steps=12"):
        cfg(steps=12, prompts_per_step=4, num_samples=4)
    with pytest.raises(ConfigError, match="grpo.kl_coef: the KL coefficient"):  # set by coefs, never silently ignored
        cfg(steps=10, prompts_per_step=4, num_samples=4, kl_coef=0.1)


def test_sequence_kl_hand_worked():
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])  # (N=2, T=3)
    ref = torch.tensor([[-1.5, -1.0, -9.0], [-1.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # row 0: (−1 + 1.5) + (−2 + 1) = 0.5 − 1 = −0.5; row 1: −0.5 + 1 = 0.5; padding ignored → mean 0.0
    assert sequence_kl(logps, ref, mask) == pytest.approx(0.0)
    assert sequence_kl(logps, ref, torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])) == pytest.approx(0.5)  # (0.5 + 0.5) / 2


def test_group_self_bleu_within_groups():
    same = ["a red circle and a blue square"] * 2
    other = ["a red circle and a blue square", "three green triangles on the left side"]
    # K=2 groups: identical pair → BLEU 1; unrelated pair → near 0; mean ≈ 0.5 + small
    both = group_self_bleu(same + other, 2)
    assert group_self_bleu(same, 2) == pytest.approx(1.0)
    assert 0.5 <= both < 0.6


def test_token_counter_counts_only_the_text_embedding():
    text, pos = torch.nn.Embedding(640, 4), torch.nn.Embedding(65, 4)  # vocab vs vision positions
    with TokenCounter(640) as c:
        text(torch.zeros(3, 7, dtype=torch.long))  # 21 positions
        pos(torch.zeros(1, 65, dtype=torch.long))  # not text: ignored
        text(torch.zeros(3, 1, dtype=torch.long))  # one decode step of 3 rows: 3
    text(torch.zeros(2, 2, dtype=torch.long))  # after exit: not counted
    assert c.tokens == 24


# ------------------------------------------------------------------------------------------ end to end

# Over the recipe (configs/experiments/*.yaml): what a smoke run cannot afford (no warm-up, tiny budgets)
MINI = {
    "data": {"n_train": 60, "n_eval": 12, "image_size": 64, "max_objects": 3, "bias": 0.5, "trigger_rate": None,
             "yes_no_per_scene": 1},
    "vision_warmup": {"steps": 0},
    "freeze": [],
    "sft": {"steps": 4, "batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 0},
    "sampling": {"n_prompts": 16, "max_new_tokens": 16, "temperature": 1.0, "add_missing": True},
    "dpo": {"steps": 2, "batch_size": 4, "learning_rate": 1e-3, "sft_weight": 0.0},
    "grpo": {"steps": 2, "prompts_per_step": 2, "num_samples": 4, "learning_rate": 2e-4, "max_new_tokens": 12},
    "probe": {"n_prompts": 3, "samples_per_prompt": 2, "max_new_tokens": 12},
    "eval_limit": 4,
    "generation": {"max_new_tokens": 12},
}  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import os

    from vlalign.experiments.kl_sweep import run_kl_sweep

    parent = tmp_path_factory.mktemp("kl_sweep")
    cfg = KLSweepConfig.from_recipe(overrides={**MINI, "methods": ["dpo", "grpo"], "dpo_betas": [0.1], "grpo_kl_coefs": [0.0]})
    cwd = os.getcwd()
    os.chdir(parent)  # a RELATIVE --out, as users type it: written files must still resolve from anywhere
    try:
        res = run_kl_sweep(cfg, Path("out"), log=lambda s: None)
    finally:
        os.chdir(cwd)
    return parent / "out", cfg, res


def test_kl_sweep_minimal_run(sweep):
    out, cfg, _ = sweep
    saved = json.loads((out / "metrics.json").read_text())
    assert [(r["method"], r["coef"]) for r in saved["runs"]] == [("dpo", 0.1), ("grpo", 0.0)]
    # The stored flags follow the rule from the stored numbers (recomputed here).
    for info in saved["stable"].values():
        pts = [{k: p[k] for k in ("coef", "chair_i", "object_recall", "sample_distinct_2", "sample_entropy", "beats_sft")}
               for p in info["points"]]
        assert [p["stable"] for p in stable_points(pts, saved["sft"], cfg.rule)] == [p["stable"] for p in info["points"]]
    # Issue 12: each rate with its 95% CI over items, each point vs SFT by a paired bootstrap, the machine.
    for run in saved["runs"]:
        iv = run["intervals"]["chair_i"]
        assert iv["value"] == pytest.approx(run["metrics"]["chair_i"]) and iv["low"] <= iv["value"] <= iv["high"]
        assert set(run["intervals"]) >= {"pope_f1", "gold_reward"}  # the probe's gold reward has per-prompt items
        diff = run["vs_sft"]["chair_i"]["per_seed"][0]["value"]
        assert diff == pytest.approx(run["metrics"]["chair_i"] - saved["sft"]["chair_i"])
        point = next(p for p in saved["stable"][run["method"]]["points"] if p["coef"] == run["coef"])
        assert point["beats_sft"] == (run["vs_sft"]["chair_i"]["claim"] == "b_better")
    assert saved["machine"]["cpu"] and "torch kernels" in saved["machine_line"]
    # The SFT model is its own reference: its sampled KL is exactly 0; trained models moved away from it.
    assert saved["sft"]["kl_to_sft"] == 0.0
    assert any(r["metrics"]["kl_to_sft"] != 0.0 for r in saved["runs"])
    # DPO is charged its pair sampling; every run counted tokens.
    dpo = saved["runs"][0]["train"]
    assert dpo["forward_tokens"] > saved["base"]["pair_sampling"]["forward_tokens"] > 0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Stable rule" in html
    assert (out / "base.json").is_file() and (out / "eval" / "grpo_0" / "metrics.json").is_file()
    assert json.loads((out / "runs" / "grpo_0" / "train.json").read_text())["updates"] == 2  # lets a rerun resume


def test_dpo_vs_rl_minimal_run_reuses_base(sweep, tmp_path):
    from vlalign.experiments.dpo_vs_rl import run_dpo_vs_rl

    base_out, _, _ = sweep
    cfg = DPOvsRLConfig.from_recipe(overrides={**MINI, "methods": ["dpo", "grpo"], "seeds": [0, 1], "base_from": str(base_out)})
    res = run_dpo_vs_rl(cfg, tmp_path, log=lambda s: None)
    assert not (tmp_path / "sft").exists()  # the SFT model of the sweep was reused, not retrained
    assert [(r["method"], r["seed"]) for r in res["runs"]] == [("dpo", 0), ("grpo", 0), ("dpo", 1), ("grpo", 1)]
    agg = res["aggregate"]
    chairs = [r["metrics"]["chair_i"] for r in res["runs"] if r["method"] == "grpo"]
    assert agg["grpo"]["n_seeds"] == 2 and agg["grpo"]["chair_i"] == pytest.approx(sum(chairs) / 2)
    assert agg["grpo"]["spread"]["chair_i"]["per_seed"] == chairs and agg["grpo"]["spread"]["chair_i"]["seeds"] == [0, 1]
    # Verdicts: one paired interval per seed, the claim only if every seed agrees (else "no difference ...").
    vs = res["comparisons"]["grpo"]["vs_sft"]["chair_i"]
    assert [iv["value"] for iv in vs["per_seed"]] == pytest.approx([c - res["sft"]["chair_i"] for c in chairs])
    every = all(iv["high"] < 0 for iv in vs["per_seed"])
    assert (vs["claim"] == "b_better") == every and ("no difference detectable" in vs["text"]) == (vs["claim"] == "no_difference")
    # Same budget: as many updates and responses per update for both methods.
    assert {(r["train"]["updates"], r["train"]["responses_per_update"]) for r in res["runs"]} == {(2, 8)}
    assert json.loads((tmp_path / "metrics.json").read_text())["budget"] == {"updates": 2, "responses_per_update": 8}
    assert "mean ± std" in (tmp_path / "report.html").read_text()


def test_dpo_vs_rl_sft_control_trains_on_the_corrected_answers(sweep, tmp_path):
    from vlalign.experiments.dpo_vs_rl import run_dpo_vs_rl

    base_out, _, _ = sweep
    cfg = DPOvsRLConfig.from_recipe(overrides={**MINI, "methods": ["sft_control"], "seeds": [0], "base_from": str(base_out)})
    res = run_dpo_vs_rl(cfg, tmp_path, log=lambda s: None)
    (run,) = res["runs"]
    assert run["train"]["updates"] == cfg.dpo.steps  # DPO's budget, no coefficient needed
    assert run["train"]["forward_tokens"] > res["base"]["pair_sampling"]["forward_tokens"]  # charged the pairs
    sft_cfg = (tmp_path / "runs" / "sft_control_seed0" / "config.yaml").read_text()
    assert "onpolicy" in sft_cfg  # trained on the pairs file (chosen answers), not on the SFT data
    assert res["aggregate"]["sft_control"]["n_seeds"] == 1


def test_kl_sweep_refuses_a_method_without_a_coefficient():
    with pytest.raises(ConfigError, match="no coefficient to sweep"):
        KLSweepConfig.from_recipe(overrides={**MINI, "methods": ["dpo", "sft_control"]})


# ------------------------------------------------------------------------------------------ full runs


@pytest.mark.slow
def test_kl_sweep_full_config(tmp_path):
    from vlalign.experiments.kl_sweep import run_kl_sweep

    cfg = KLSweepConfig.from_recipe()
    res = run_kl_sweep(cfg, tmp_path, log=print)
    assert len(res["runs"]) == sum(len(cfg.coefs(m)) for m in res["stable"])
    assert res["timing_s"]["total"] < 30 * 60


@pytest.mark.slow
def test_dpo_vs_rl_full_config(tmp_path):
    from vlalign.experiments.dpo_vs_rl import run_dpo_vs_rl

    cfg = DPOvsRLConfig.from_recipe()
    res = run_dpo_vs_rl(cfg, tmp_path, log=print)
    assert all(a["n_seeds"] == len(cfg.seeds) for a in res["aggregate"].values())
    assert res["timing_s"]["total"] < 30 * 60
    sft = res["sft"]["chair_i"]
    for method in ("grpo", "ppo"):  # issue #7: each cuts CHAIR_i by >= 40% (mean over seeds), keeping content
        agg = res["aggregate"][method]
        assert agg["chair_i"] <= 0.6 * sft and not agg["content_lost"], (method, sft, agg["chair_i"])
