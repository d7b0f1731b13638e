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
    # seeds 0-4 x kernels AVX2 / default (scripts/learning_spread.py): rise 0.34-0.39; > 0.1 leaves 3x margin.
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
    # seeds 0-4 x kernels AVX2 / default (scripts/learning_spread.py): rise 0.14-0.36 (mean 0.27 ± 0.09);
    # > 0.07 leaves 2x margin below the worst run.
    assert learning.above("reward rise", last - first, 0.07), (first, last)
    # whitened: mean |A| ≤ std(A) = 1 (Cauchy-Schwarz); raw leave-one-out advantages here are ~0.05
    abs_mean = [r["advantage/abs_mean"] for r in rows]  # smallest 0.60-0.77 over seeds 0-4 x AVX2 / default
    assert max(abs_mean) <= 1.0 and learning.above("smallest mean |A|", min(abs_mean), 0.2), abs_mean


def test_length_paying_reward_trips_length_monitor(tmp_path, learning):
    # The policy starts answering in ~1-3 tokens (eos made likely); a reward that pays for characters
    # teaches it to stop stopping, and the length monitor must see it and stop the run.
    model = tiny_llava(tmp_path.parent / "models", eos_boost=15.0)
    cfg_dict = rl_overrides(
        tmp_path, model, prompt_file(tmp_path / "data"), max_steps=14, learning_rate=1e-2, seed=learning.seed,
        reward={"name": "test_length"}, rollout__max_new_tokens=16,
        monitors=[{"name": "length_explosion", "action": "stop",
                   "kwargs": {"baseline_steps": 1, "window": 2, "factor": 2.0, "min_increase": 3.0}}],
    )
    cfg, res = _run("grpo", cfg_dict)
    rows = read_metrics(cfg.output_dir)
    assert res["stop_reason"] and "length_explosion" in res["stop_reason"], res
    assert any(r.get("event") == "monitor" and r["monitor"] == "length_explosion" for r in rows)
    lengths = [r["response/length_mean"] for r in rows if "response/length_mean" in r]
    # Seeds 0-3 x kernels AVX2 / default: ratio 3.4-6.4. NOT robust: on seed 4 (both kernels) every
    # response is 1 token from the second rollout on (equal rewards, no signal) and the monitor never trips.
    assert learning.above("longest / first mean length", max(lengths) / lengths[0], 2.0), lengths


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
