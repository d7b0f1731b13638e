"""GRPO with the shared-prefix group forward trains exactly like the batched forward: same samples,
same KL, same loss and gradient norm, step after step (tiny random LLaVA, real reward signal)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_rl_helpers import prompt_file, rl_overrides, tiny_llava

from vlalign.trainers.logging import read_metrics

KEYS = ("reward/mean", "loss", "kl/mean", "policy/entropy", "grad_norm", "policy/approx_kl")


def _rows(tmp_path, model, data, **extra):
    from vlalign.trainers.grpo import GRPOConfig, train_grpo

    cfg = GRPOConfig.model_validate(rl_overrides(tmp_path, model, data, max_steps=3, learning_rate=1e-2,
                                                 kl_coef=0.04, **extra))
    train_grpo(cfg)
    rows = [r for r in read_metrics(cfg.output_dir) if "loss" in r]
    assert len(rows) == 3
    return rows


@pytest.mark.parametrize("minibatches", [1, 2])
def test_grpo_shared_prefix_equals_batched(tmp_path, minibatches):
    model = tiny_llava(tmp_path.parent / "models")
    data = prompt_file(tmp_path / "data")
    # 2 minibatches cut groups apart: the policy pass falls back to batched there, while the old-policy
    # and reference passes over the whole rollout stay packed (ppo_epochs 2 makes them needed)
    extra = {"num_minibatches": minibatches, "ppo_epochs": minibatches}
    batched = _rows(tmp_path / "batched", model, data, forward="batched", **extra)
    packed = _rows(tmp_path / "packed", model, data, forward="shared_prefix", **extra)
    assert any(r["loss"] != 0 for r in batched) and any(r["kl/mean"] > 0 for r in batched[1:])
    for a, b in zip(batched, packed, strict=True):
        for key in KEYS:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
