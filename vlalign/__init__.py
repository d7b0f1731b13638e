"""vlalign: align vision-language models with human, AI and rule-based preferences.

A library as much as a CLI: every command is a function, every config a validated pydantic class, and
every packaged recipe (``configs/*.yaml``) loads by name::

    from vlalign import load_recipe, train_dpo
    summary = train_dpo(load_recipe("dpo_tiny", ["loss=ipo", "beta=0.5"]))

Names are imported on first use (module ``__getattr__``), so ``import vlalign`` stays fast and pulls
in neither torch nor transformers.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Arrow's C++ default allocator is picked once, when pyarrow loads: with its default (mimalloc) a streaming
# pass over 448-pixel JPEG rows kept growing by ~20 MiB per 10k rows although nothing is kept; with the system
# allocator plus the periodic heap trim of vlalign.data.memory it stays flat (measured in bench/data_path.py).
# Only a default: a value the user set wins, and it has no effect if pyarrow was imported before vlalign.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

__version__ = "0.1.0"

# exported name -> module that defines it (imported when the name is first used)
_EXPORTS = {
    # configs and recipes
    "BaseConfig": "vlalign.config", "ConfigError": "vlalign.config", "load_config": "vlalign.config",
    "save_config": "vlalign.config", "load_recipe": "vlalign.recipes", "recipe_names": "vlalign.recipes",
    "recipe_path": "vlalign.recipes",
    # data
    "ShapesConfig": "vlalign.data.shapes.generate", "generate_shapes": "vlalign.data.shapes.generate",
    "load_records": "vlalign.data.validate",
    # models
    "ModelConfig": "vlalign.models.load", "load_model": "vlalign.models.load", "build_tiny": "vlalign.models.tiny.core",
    # trainers: one config class and one train function each
    "SFTConfig": "vlalign.trainers.configs", "train_sft": "vlalign.trainers.sft",
    "DPOConfig": "vlalign.trainers.configs", "train_dpo": "vlalign.trainers.dpo",
    "RewardModelConfig": "vlalign.trainers.reward_model", "train_reward_model": "vlalign.trainers.reward_model",
    "CostModelConfig": "vlalign.trainers.reward_model", "train_cost_model": "vlalign.trainers.reward_model",
    "ClipTrainConfig": "vlalign.trainers.clip_train", "train_clip": "vlalign.trainers.clip_train",
    "GRPOConfig": "vlalign.trainers.grpo", "train_grpo": "vlalign.trainers.grpo",
    "RLOOConfig": "vlalign.trainers.rloo", "train_rloo": "vlalign.trainers.rloo",
    "PPOConfig": "vlalign.trainers.ppo", "train_ppo": "vlalign.trainers.ppo",
    "SafePPOConfig": "vlalign.trainers.safe_ppo", "train_safe_ppo": "vlalign.trainers.safe_ppo",
    # evaluation
    "EvalConfig": "vlalign.evaluation.evaluate", "evaluate": "vlalign.api", "Evaluation": "vlalign.api",
    # the demo and the experiments
    "DemoConfig": "vlalign.experiments.demo", "run_demo": "vlalign.experiments.demo",
    "KLSweepConfig": "vlalign.experiments.kl_sweep", "run_kl_sweep": "vlalign.experiments.kl_sweep",
    "DPOvsRLConfig": "vlalign.experiments.dpo_vs_rl", "run_dpo_vs_rl": "vlalign.experiments.dpo_vs_rl",
    "RewardSourcesConfig": "vlalign.experiments.reward_sources", "run_reward_sources": "vlalign.experiments.reward_sources",
    "SafeRLHFConfig": "vlalign.experiments.safe_rlhf", "run_safe_rlhf": "vlalign.experiments.safe_rlhf",
    "BeyondControlConfig": "vlalign.experiments.beyond_control", "run_beyond_control": "vlalign.experiments.beyond_control",
    # sharing results
    "HubConfig": "vlalign.hub", "push_run": "vlalign.hub", "machine_info": "vlalign.machine",
}  # fmt: skip

__all__ = ["__version__", *sorted(_EXPORTS)]  # noqa: PLE0604 (the lazy names, listed once above)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vlalign' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
