"""Safe-PPO in the trainer loop on a tiny random LLaVA: λ rises while the mean cost exceeds the limit
and falls back toward 0 once it holds (values worked out by hand); the constraint metrics are logged;
resume after a kill equals the uninterrupted run; the CLI runs configs/safe_ppo_tiny.yaml."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_rl_helpers import prompt_file, rl_overrides, tiny_llava

from vlalign.rewards.base import REWARD_SOURCES, RewardOutput
from vlalign.trainers.logging import read_metrics


class StepCost:
    """Toy cost: 1.0 for every response in the first ``high_calls`` rollouts, then 0.0 (one score call
    per rollout), so one run sees the constraint violated and then satisfied."""

    def __init__(self, high_calls: int = 2) -> None:
        self.name, self.high_calls, self.calls = "test_step_cost", high_calls, 0

    def score(self, samples):
        self.calls += 1
        value = 1.0 if self.calls <= self.high_calls else 0.0
        return RewardOutput(rewards=torch.full((len(samples),), value))


if "test_step_cost" not in REWARD_SOURCES:
    REWARD_SOURCES.register("test_step_cost")(StepCost)


def _run(cfg_dict: dict, **kw):
    from vlalign.trainers.safe_ppo import SafePPOConfig, train_safe_ppo

    cfg = SafePPOConfig.model_validate(cfg_dict)
    return cfg, train_safe_ppo(cfg, **kw)


def test_lambda_rises_under_violation_then_falls_toward_zero(tmp_path):
    model = tiny_llava(tmp_path.parent / "models")
    cfg_dict = rl_overrides(
        tmp_path, model, prompt_file(tmp_path / "data", n=4), max_steps=4, per_device_batch_size=1,
        rollout__num_samples=2, rollout__max_new_tokens=4, learning_rate=1e-3,
        cost={"name": "test_step_cost", "kwargs": {"high_calls": 2}},
        cost_limit=0.5, lambda_init=1.0, lambda_lr=2.0, lambda_max=5.0,
    )
    cfg, res = _run(cfg_dict)
    rows = [r for r in read_metrics(cfg.output_dir) if "lagrange/lambda" in r]
    assert len(rows) == 4 and res["stop_reason"] is None
    # log λ += lr·λ·(J_C − d), lr = 2, d = 0.5, then λ ≤ 5:
    #   rollout 1, J_C = 1: log λ = 0 + 2·1·0.5 = 1            → λ = e ≈ 2.718
    #   rollout 2, J_C = 1: log λ = 1 + 2·e·0.5 = 1 + e ≈ 3.72  → λ ≈ 41.2, capped to 5
    #   rollout 3, J_C = 0: log λ = ln 5 − 2·5·0.5 = ln 5 − 5   → λ = 5·e⁻⁵ ≈ 0.0337
    #   rollout 4, J_C = 0: log λ −= 2·0.0337·0.5               → λ ≈ 0.0337·e^−0.0337 ≈ 0.0326
    lam3 = 5 * math.exp(-5)
    expected = [math.e, 5.0, lam3, lam3 * math.exp(-lam3)]
    assert [r["lagrange/lambda"] for r in rows] == pytest.approx(expected, rel=1e-5)
    assert [r["cost/mean"] for r in rows] == [1.0, 1.0, 0.0, 0.0]
    assert [r["cost/violation"] for r in rows] == [0.5, 0.5, -0.5, -0.5]
    assert [r["cost/unsafe_frac"] for r in rows] == [1.0, 1.0, 0.0, 0.0]
    for key in ("value/loss", "cost_value/loss", "reward/mean", "policy/clip_fraction"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert (Path(cfg.output_dir) / "cost_value.pt").is_file() and (Path(cfg.output_dir) / "value.pt").is_file()


def test_combined_advantage_by_hand():
    # Hand case through the Safe-PPO functions with zero-initialised critics (V = 0), γ = λ_GAE = 1, no
    # whitening: A_r = reward, A_c = cost on the one response token; λ after one update from
    # λ0 = 1 with J_C = 2, d = 0, lr = 0.5: log λ = 0.5·1·2 = 1 → λ = e.
    # A = (A_r − λ·A_c)/(1 + λ) = (1 − 2e)/(1 + e) ≈ −1.1931
    sys.path.insert(0, str(Path(__file__).parent))
    from test_rl_helpers import ConstantCost, hand_run
    from test_rl_ppo import Bigram, _experience

    from vlalign.objectives import safe_rlhf_advantages
    from vlalign.trainers.ppo import critics, final_advantages, gae_advantages, rollout_values
    from vlalign.trainers.safe_ppo import SafePPOConfig, lagrange_multiplier, score_costs

    cfg = SafePPOConfig.model_validate({
        "output_dir": "unused", "model": {"name_or_path": "unused"}, "data": {"train": "unused"},
        "reward": {"name": "test_letter"}, "cost": {"name": "test_cost", "kwargs": {"value": 2.0}},
        "critic": "shared", "gamma": 1.0, "lam": 1.0, "whiten_advantages": False, "kl_coef": 0.0,
        "reference": "none", "cost_limit": 0.0, "lambda_init": 1.0, "lambda_lr": 0.5,
    })
    names = ["value", "cost_value"]
    policy = Bigram()
    run = hand_run(cfg, policy, critics(cfg, names)(policy))
    lagrange = lagrange_multiplier(run)
    exp = _experience([[0, 1]], [[0, 1]], [1.0])
    metrics = score_costs(run, exp, ConstantCost(2.0), lagrange)
    e = math.e
    assert metrics["lagrange/lambda"] == pytest.approx(e)
    assert metrics["cost/violation"] == 2.0 and metrics["cost/unsafe_frac"] == 1.0
    values = rollout_values(run, exp, names)
    adv_r, _ = gae_advantages(cfg, exp, exp.rewards, values["value"], None)
    adv_c, _ = gae_advantages(cfg, exp, exp.costs, values["cost_value"], None)
    adv = final_advantages(run, safe_rlhf_advantages(adv_r, adv_c, torch.tensor(metrics["lagrange/lambda"])),
                           exp.response_mask)
    assert adv[0, 1].item() == pytest.approx((1 - 2 * e) / (1 + e), rel=1e-6)
    assert adv[0, 0].item() == 0.0  # prompt position: masked
    # what a checkpoint stores and a resumed run restores
    fresh = hand_run(cfg, Bigram())
    fresh.state = {"algorithm": json.loads(json.dumps({"log_lambda": float(lagrange.log_lambda.detach())}))}
    assert float(lagrange_multiplier(fresh).log_lambda.detach()) == pytest.approx(1.0)


def test_fixed_cost_penalty_by_hand():
    # cost_penalty: fixed, c = 0.25: no λ step (λ stays at its initial value), A = A_r − c·A_c on the response
    # token with V = 0, γ = λ_GAE = 1: reward 1, cost 2 → A = 1 − 0.25·2 = 0.5 (the Lagrangian at λ = 0.25
    # would give (1 − 0.5)/1.25 = 0.4: the fixed penalty does not renormalise)
    from test_rl_helpers import ConstantCost, hand_run
    from test_rl_ppo import Bigram, _experience

    from vlalign.trainers.ppo import critics, final_advantages, gae_advantages, rollout_values
    from vlalign.trainers.safe_ppo import SafePPOConfig, combined_advantages, lagrange_multiplier, score_costs

    cfg = SafePPOConfig.model_validate({
        "output_dir": "unused", "model": {"name_or_path": "unused"}, "data": {"train": "unused"},
        "reward": {"name": "test_letter"}, "cost": {"name": "test_cost", "kwargs": {"value": 2.0}},
        "critic": "shared", "gamma": 1.0, "lam": 1.0, "whiten_advantages": False, "kl_coef": 0.0,
        "reference": "none", "cost_limit": 0.0, "cost_penalty": "fixed", "cost_coef": 0.25,
    })
    names = ["value", "cost_value"]
    policy = Bigram()
    run = hand_run(cfg, policy, critics(cfg, names)(policy))
    lagrange = lagrange_multiplier(run)
    exp = _experience([[0, 1]], [[0, 1]], [1.0])
    metrics = score_costs(run, exp, ConstantCost(2.0), lagrange)
    assert metrics["cost/coef"] == 0.25 and "lagrange/lambda" not in metrics
    assert float(lagrange.value) == pytest.approx(1.0)  # never stepped
    assert metrics["cost/violation"] == 2.0
    values = rollout_values(run, exp, names)
    adv_r, _ = gae_advantages(cfg, exp, exp.rewards, values["value"], None)
    adv_c, _ = gae_advantages(cfg, exp, exp.costs, values["cost_value"], None)
    adv = final_advantages(run, combined_advantages(cfg, adv_r, adv_c, metrics["cost/coef"]), exp.response_mask)
    assert adv[0].tolist() == pytest.approx([0.0, 0.5])
    lagrangian = cfg.model_copy(update={"cost_penalty": "lagrangian"})
    assert combined_advantages(lagrangian, adv_r, adv_c, 0.25)[0, 1].item() == pytest.approx(0.4)


def test_fixed_penalty_run_keeps_its_coefficient(tmp_path):
    model = tiny_llava(tmp_path.parent / "models")
    cfg_dict = rl_overrides(
        tmp_path, model, prompt_file(tmp_path / "data", n=2), max_steps=2, per_device_batch_size=1,
        rollout__num_samples=2, rollout__max_new_tokens=4, cost={"name": "test_cost", "kwargs": {"value": 1.0}},
        cost_limit=0.0, cost_penalty="fixed", cost_coef=0.3,
    )
    cfg, _ = _run(cfg_dict)
    rows = [r for r in read_metrics(cfg.output_dir) if "cost/coef" in r]
    assert [r["cost/coef"] for r in rows] == [0.3, 0.3] and not any("lagrange/lambda" in r for r in rows)
    assert all(r["cost/violation"] == 1.0 for r in rows)


def test_safe_ppo_resume_after_kill_equals_uninterrupted(tmp_path):
    from test_rl_ppo import check_resume

    check_resume(tmp_path, "safe_ppo", cost={"name": "test_cost", "kwargs": {"value": 1.0}}, cost_limit=0.5,
                 lambda_lr=0.5, critic="separate")


def test_cli_runs_safe_ppo_tiny_config(tmp_path):
    from typer.testing import CliRunner

    from vlalign.cli import app

    model = tiny_llava(tmp_path.parent / "models")
    data = tmp_path / "data"
    prompt_file(data, n=2)
    rows = [json.loads(line) for line in (data / "prompts.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):  # the safety split's meta: one harmful, one benign request
        row["meta"] = {"safety": {"harmful": i == 0}}
    (data / "safety.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    args = ["safe-ppo", "-c", "configs/safe_ppo_tiny.yaml", "max_steps=2", f"output_dir={out}",
            f"model.name_or_path={model}", f"data.train={data / 'safety.jsonl'}", "per_device_batch_size=2",
            "rollout.max_new_tokens=4", "progress=false", "save_steps=0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [r for r in read_metrics(out) if "lagrange/lambda" in r]
    assert len(rows) == 2 and all("cost/violation" in r for r in rows)
    assert (out / "config.yaml").is_file() and (out / "final" / "config.json").is_file()
