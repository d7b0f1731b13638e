"""GRPO / RLOO end to end on a tiny random LLaVA: reward rises on a toy task, a length-paying reward
trips the length monitor, and resume after a kill equals the uninterrupted run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_rl_helpers import prompt_file, rl_overrides, tiny_llava

from vlalign.trainers.logging import read_metrics


def _run(algo: str, cfg_dict: dict, **kw):
    from vlalign.trainers.grpo import GRPOConfig, train_grpo
    from vlalign.trainers.rloo import RLOOConfig, train_rloo

    cls, fn = {"grpo": (GRPOConfig, train_grpo), "rloo": (RLOOConfig, train_rloo)}[algo]
    cfg = cls.model_validate(cfg_dict)
    return cfg, fn(cfg, **kw)


def _first_last(rows, key, k=2):
    vals = [r[key] for r in rows if key in r]
    return sum(vals[:k]) / k, sum(vals[-k:]) / k


def test_grpo_reward_rises(tmp_path, learning):
    # Toy task: reward = share of spaces in the response; a random policy scores ~0.15. 16 rollouts of
    # 4 prompts x 4 samples: rises 0.37 / 0.34 / 0.37 on seeds 0-2 (8 rollouts of 2 prompts rose only
    # 0.03 on seed 1).
    model = tiny_llava(tmp_path.parent / "models")
    cfg, res = _run("grpo", rl_overrides(tmp_path, model, prompt_file(tmp_path / "data"), max_steps=16,
                                         per_device_batch_size=4, learning_rate=3e-2, kl_coef=0.01,
                                         seed=learning.seed))
    rows = [r for r in read_metrics(cfg.output_dir) if "reward/mean" in r]
    assert len(rows) == 16 and res["stop_reason"] is None
    first, last = _first_last(rows, "reward/mean")
    # seeds 0-4 x kernels native (AVX2) / default (scripts/learning_spread.py): rise 0.24-0.39 (mean
    # 0.34 ± 0.06); > 0.1 leaves the worst run 0.14 above the bound, 58% of its effect.
    assert learning.above("reward rise", last - first, 0.1), (first, last)
    assert all(r["kl/mean"] >= 0 for r in rows[1:])  # k3 is ≥ 0 and was logged every step
    assert (Path(cfg.output_dir) / "final" / "config.json").is_file()
    assert (Path(cfg.output_dir) / "config.yaml").is_file()


def test_rloo_reward_rises(tmp_path, learning):
    # Same toy task as GRPO's. 8 rollouts of 2 prompts × 4 samples were too few for RLOO (and for GRPO on
    # other seeds): measured rises over seeds 0-4 with 16 rollouts of 4 prompts × 4 samples (~6 s):
    # whitened RLOO 0.36 0.35 0.18 0.29 0.14; raw RLOO 0.16 0.17 0.33 0.10 0.25 (issue #7).
    model = tiny_llava(tmp_path.parent / "models")
    cfg, res = _run("rloo", rl_overrides(tmp_path, model, prompt_file(tmp_path / "data"), max_steps=16,
                                         per_device_batch_size=4, learning_rate=3e-2, kl_coef=0.01,
                                         normalize_advantages=True, seed=learning.seed))
    rows = [r for r in read_metrics(cfg.output_dir) if "reward/mean" in r]
    assert len(rows) == 16 and res["stop_reason"] is None
    first, last = _first_last(rows, "reward/mean")
    # seeds 0-4 x kernels native (AVX2) / default (scripts/learning_spread.py): rise 0.30-0.40 (mean
    # 0.33 ± 0.03; 0.14-0.36 before the trainer core's merge); > 0.07 leaves the worst run 4x the bound.
    assert learning.above("reward rise", last - first, 0.07), (first, last)
    # whitened: mean |A| ≤ std(A) = 1 (Cauchy-Schwarz); raw leave-one-out advantages here are ~0.05
    abs_mean = [r["advantage/abs_mean"] for r in rows]  # smallest 0.60-0.70 over seeds 0-4 x AVX2 / default
    assert max(abs_mean) <= 1.0 and learning.above("smallest mean |A|", min(abs_mean), 0.2), abs_mean


def test_length_paying_reward_trips_length_monitor(tmp_path, learning):
    # The policy starts answering in ~2-5 tokens (eos made likely); a reward that pays for characters
    # teaches it to stop stopping, and the length monitor must see it and stop the run.
    # WHY 8 samples per prompt and a window of 1: the tiny policy's lengths jump between whole modes
    # (1, 8.5, 16 tokens). With 4 samples and a 2-rollout window, seed 8 collapsed to 1-token answers
    # (every sample of a prompt equally short: zero GRPO advantage, no signal) and seed 0 of 8 samples
    # missed the 2-rollout mean by 0.06 token; both kernels alike.
    model = tiny_llava(tmp_path.parent / "models", eos_boost=15.0)
    cfg_dict = rl_overrides(
        tmp_path, model, prompt_file(tmp_path / "data"), max_steps=14, learning_rate=1e-2, seed=learning.seed,
        reward={"name": "test_length"}, rollout__max_new_tokens=16, rollout__num_samples=8,
        monitors=[{"name": "length_explosion", "action": "stop",
                   "kwargs": {"baseline_steps": 1, "window": 1, "factor": 1.5, "min_increase": 2.0}}],
    )
    cfg, res = _run("grpo", cfg_dict)
    rows = read_metrics(cfg.output_dir)
    assert res["stop_reason"] and "length_explosion" in res["stop_reason"], res
    assert any(r.get("event") == "monitor" and r["monitor"] == "length_explosion" for r in rows)
    lengths = [r["response/length_mean"] for r in rows if "response/length_mean" in r]
    # Seeds 0-19 x kernels native (AVX2) / default, identical under both: every run tripped, by rollout 2
    # on 36 of 40 runs, by rollout 3 on the rest; at the trip the mean length was 2.4-6.8x the first
    # rollout's (2.1-4.6 tokens) and 4.9-14 tokens longer. The rule asks for 1.5x and +2 tokens: every
    # run clears both by >= 2.9 tokens, the ratio bound 1.5 by >= 0.89 (docs/reproducibility.md).
    assert learning.above("length at trip / first length", lengths[-1] / lengths[0], 1.5), lengths


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    from vlalign.trainers.rl_common import _Interrupt

    model = tiny_llava(tmp_path.parent / "models")
    data = prompt_file(tmp_path / "data")
    base = {"max_steps": 4, "save_steps": 2, "learning_rate": 1e-2, "kl_coef": 0.04, "ppo_epochs": 2, "num_minibatches": 2}
    full_cfg, _ = _run("grpo", rl_overrides(tmp_path / "full", model, data, **base))
    killed = rl_overrides(tmp_path / "killed", model, data, **base)
    with pytest.raises(_Interrupt):
        _run("grpo", killed, stop_after=3)  # dies after rollout 3, the last checkpoint is at 2
    cfg, _ = _run("grpo", {**killed, "resume": True})

    from safetensors.torch import load_file

    a = load_file(Path(full_cfg.output_dir) / "final" / "model.safetensors")
    b = load_file(Path(cfg.output_dir) / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rewards_full = [r["reward/mean"] for r in read_metrics(full_cfg.output_dir) if "reward/mean" in r]
    rows = [r for r in read_metrics(cfg.output_dir) if "reward/mean" in r]
    # the resumed run re-samples rollouts 3 and 4 with the restored sampling RNG: same rewards
    assert [r["reward/mean"] for r in rows if r["step"] > 2][-2:] == rewards_full[2:]


def test_grpo_runs_from_a_relative_data_path(tmp_path, monkeypatch):
    """``data.train`` relative to the working folder (as the README's recipes give it): the loader resolves
    image paths against the data file's folder once; the rollout must not join that folder again."""
    model = tiny_llava(tmp_path.parent / "models")
    prompt_file(tmp_path / "data", n=4)
    monkeypatch.chdir(tmp_path)
    cfg, res = _run("grpo", rl_overrides(Path("."), model, Path("data/prompts.jsonl"), max_steps=1,
                                         per_device_batch_size=2))
    assert res["steps"] == 1 and (tmp_path / cfg.output_dir / "final" / "config.json").is_file()
