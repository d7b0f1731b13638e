"""Library calls leave the caller's process as they found it: the random generators (``random``, numpy,
torch) and torch's thread count. A function that seeds or pins them for its own work (a tiny model's
initialisation, sampled answers, a labelling run, a training run with ``num_threads``) restores them, so
a user's own random draws after the call are the ones they would have had without it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from vlalign.data.records import PromptRecord, from_dict
from vlalign.evaluation.generate import GenerationConfig, generate_token_ids
from vlalign.models.load import ModelConfig, load_model
from vlalign.models.tiny import build_tiny


def _global_state() -> tuple:
    """Everything a library call must not move, in a form ``==`` compares."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return (random.getstate(), (kind, keys.tobytes(), pos, has_gauss, gauss),
            torch.random.get_rng_state().tolist(), torch.get_num_threads())


@pytest.fixture
def caller_state():
    """The caller's own state, set apart from the suite's start-up seed and thread count, so that a
    library call that re-seeded with the suite's seed or pinned the suite's threads would still show."""
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)
    torch.randn(3)  # a stream already in use, not a freshly seeded one
    torch.set_num_threads(3)
    return _global_state()


def _prompt(tmp_path) -> list[PromptRecord]:
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    row = {"id": "p0", "images": [str(tmp_path / "red.png")], "prompt": "What colour is it?", "meta": {}}
    (tmp_path / "prompts.jsonl").write_text(json.dumps(row) + "\n")
    return [from_dict(row)]


def test_build_tiny_leaves_the_callers_rng_alone(tmp_path, caller_state):
    a = build_tiny("llava", tmp_path / "a", size="tiny", seed=5)
    assert _global_state() == caller_state
    b = build_tiny("llava", tmp_path / "b", size="tiny", seed=5)  # its own seed decides the weights
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_sampled_generation_leaves_the_callers_rng_alone(tiny_model_dir, tmp_path, caller_state):
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir("llava"))))
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, batch_size=2)
    records = _prompt(tmp_path) * 4
    first = generate_token_ids(loaded.model, loaded.processor, records, cfg, seed=7)
    assert _global_state() == caller_state
    # the seed alone decides the samples, whatever the caller's stream was
    torch.manual_seed(99)
    assert generate_token_ids(loaded.model, loaded.processor, records, cfg, seed=7) == first


def test_label_run_leaves_the_callers_rng_alone(tiny_model_dir, tmp_path, caller_state):
    from vlalign.config import load_config
    from vlalign.rewards.label import LabelConfig, run_label

    _prompt(tmp_path)
    cfg = load_config(LabelConfig, None, ["rollout.num_samples=2", "rollout.max_new_tokens=4"], defaults={
        "output_dir": str(tmp_path / "out"), "seed": 3, "policy": {"name_or_path": str(tiny_model_dir("llava"))},
        "prompts": str(tmp_path / "prompts.jsonl"), "batch_size": 1,
        "reward": {"name": "length_penalty", "kwargs": {"max_len": 2, "coef": 0.1}},
    })
    summary = run_label(cfg)
    assert summary["samples"] == 2
    assert _global_state() == caller_state


def test_training_run_restores_threads_and_rng(tmp_path, caller_state):
    from vlalign.data.shapes.generate import ShapesConfig, generate_shapes
    from vlalign.trainers.clip_train import ClipTrainConfig, train_clip

    generate_shapes(tmp_path / "shapes", ShapesConfig(seed=0, n_train=8, n_eval=4, n_safety=0, n_safety_eval=0))
    cfg = ClipTrainConfig(data=str(tmp_path / "shapes"), output_dir=str(tmp_path / "clip"), hidden_size=32,
                          num_layers=1, projection_dim=32, per_device_batch_size=4, max_steps=1, limit=8,
                          progress=False, eval_limit=4, seed=2, num_threads=1)  # fmt: skip
    train_clip(cfg)
    assert _global_state() == caller_state  # 3 threads again, and the caller's RNG streams where they were


def test_recipe_runner_hands_back_threads_and_rng(tmp_path, caller_state):
    from vlalign.experiments import active_learning, demo, dpo_vs_rl, kl_sweep, reward_sources, safe_rlhf
    from vlalign.experiments.base import keeps_global_state, start_experiment

    @keeps_global_state
    def recipe(tmp: str) -> int:  # what a recipe does to the process: pins threads, seeds its stages
        start_experiment(1, tmp)
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        return torch.get_num_threads()

    assert recipe(str(tmp_path / "out")) == 1
    assert _global_state() == caller_state
    for run in (demo.run_demo, kl_sweep.run_kl_sweep, dpo_vs_rl.run_dpo_vs_rl,
                active_learning.run_active_learning, safe_rlhf.run_safe_rlhf, reward_sources.run_reward_sources):
        assert getattr(run, "__wrapped__", None) is not None, run  # every recipe runner is wrapped
