"""Shared fixtures of the RL integration tests (no tests here): a tiny LLaVA, a prompt file, toy rewards."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlalign.rewards.base import REWARD_SOURCES, RewardOutput

_BUILT: dict[str, Path] = {}


def tiny_llava(root: Path, eos_boost: float | None = None) -> Path:
    """Build (once per session and variant) a tiny random LLaVA. ``eos_boost`` raises the eos logit so
    the untrained policy answers in a few tokens (to let a length-paying reward lengthen them)."""
    key = f"llava-{eos_boost}"
    if key in _BUILT:
        return _BUILT[key]
    from transformers import AutoModelForImageTextToText

    from vlalign.models.tiny import build_tiny

    path = build_tiny("llava", root / key, size="tiny", seed=0)
    if eos_boost is not None:
        model = AutoModelForImageTextToText.from_pretrained(path)
        eos = model.generation_config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        with torch.no_grad():
            head = model.get_output_embeddings()
            # A bias on eos through the final norm's weights is not available; instead make the eos row
            # of the head point along every hidden direction's sign pattern at the mean: logit ≈ boost.
            norm_w = model.model.language_model.norm.weight
            head.weight[eos] = eos_boost * norm_w.sign() / norm_w.numel() ** 0.5
        model.save_pretrained(path)
    _BUILT[key] = path
    return path


def prompt_file(root: Path, n: int = 8) -> Path:
    """``n`` prompt records with one small image each (canonical JSONL, images by relative path)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    colours = [(255, 0, 0), (0, 0, 255), (0, 160, 0), (240, 200, 0)]
    rows = []
    for i in range(n):
        Image.new("RGB", (64, 64), colours[i % 4]).save(root / f"img{i}.png")
        rows.append({"id": f"p{i}", "images": [f"img{i}.png"], "prompt": f"What colour is shape {i}?", "meta": {}})
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class LetterReward:
    """Toy reward: the share of response characters that are ``letter`` — dense, so a tiny random
    policy gets a learning signal at once (a whole word would almost never be sampled)."""

    def __init__(self, letter: str = "e") -> None:
        self.name, self.letter = "test_letter", letter

    def score(self, samples):
        vals = [s.response.count(self.letter) / max(1, len(s.response)) for s in samples]
        return RewardOutput(rewards=torch.tensor(vals, dtype=torch.float32))


class LengthReward:
    """Toy reward that pays for length (characters / 10): the classic hack to trigger the monitor."""

    def __init__(self) -> None:
        self.name = "test_length"

    def score(self, samples):
        return RewardOutput(rewards=torch.tensor([len(s.response) / 10 for s in samples], dtype=torch.float32))


class ConstantCost:
    """Toy cost: ``value`` for every response (drives λ up when above the limit, down when below)."""

    def __init__(self, value: float = 1.0) -> None:
        self.name, self.value = "test_cost", value

    def score(self, samples):
        return RewardOutput(rewards=torch.full((len(samples),), float(self.value)))


for _name, _cls in {"test_letter": LetterReward, "test_length": LengthReward, "test_cost": ConstantCost}.items():
    if _name not in REWARD_SOURCES:
        REWARD_SOURCES.register(_name)(_cls)


def rl_overrides(tmp: Path, model: Path, data: Path, **extra) -> dict:
    """A small, fast RL config as a dict (fp32, no progress bar, few short samples)."""
    cfg = {
        "output_dir": str(tmp / "run"),
        "seed": 0,
        "model": {"name_or_path": str(model)},
        "data": {"train": str(data)},
        "per_device_batch_size": 2,
        "max_steps": 6,
        "learning_rate": 3e-3,
        "lr_scheduler": "constant",
        "mixed_precision": "no",
        "progress": False,
        "rollout": {"num_samples": 4, "max_new_tokens": 6, "temperature": 1.0},
        "reward": {"name": "test_letter", "kwargs": {"letter": " "}},
        "kl_coef": 0.0,
    }
    for key, value in extra.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def hand_run(cfg, policy, modules=None, tmp="unused"):
    """An RLRun around ``policy`` (and ``modules``) without folder, data or model loading: for checking the
    trainers' plain functions by hand on tiny policies."""
    from accelerate import Accelerator

    from vlalign.trainers.common import GlobalTorchState, build_optimizer, build_scheduler
    from vlalign.trainers.logging import RunLogger
    from vlalign.trainers.rl_common import RLRun

    acc = Accelerator(cpu=True, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    run = RLRun(cfg, acc, None, GlobalTorchState(), RunLogger(acc, tmp, cfg))
    run.model = run.policy = policy
    run.modules = dict(modules or {})
    run.extra = {}
    run.uses_reference = cfg.reference != "none" and cfg.kl_coef > 0
    run.optimizer = build_optimizer(torch.nn.ModuleDict({"policy": policy, **run.modules}), cfg)
    run.scheduler = build_scheduler(run.optimizer, cfg, 1)
    return run
