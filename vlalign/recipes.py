"""Recipes: the YAML configs shipped inside the package, found by name from any installation.

The repository's ``configs/`` folder is the source; the package reaches it as ``vlalign/recipes``
(a link in the source tree, real files in the wheel), so a checkout and an installed wheel read the
same files. WHY: a recipe's YAML is the only source of its settings. ``vlalign demo`` run from a
wheel must run the experiment ``configs/demo.yaml`` describes, and a recipe whose YAML cannot be
found is an error, never a silent fall-back to other values.

Names are paths below ``configs/`` without ``.yaml``: ``demo``, ``sft_tiny``, ``experiments/kl_sweep``,
``accelerate/ddp``. A bare file name that is unique (``kl_sweep``) and dashes for underscores
(``kl-sweep``, as the CLI spells experiments) work too.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from vlalign.config import BaseConfig, ConfigError, load_config
from vlalign.config.base import deep_merge

SUFFIX = ".yaml"


class RecipeError(ConfigError):
    """A recipe name that matches no packaged YAML, or an installation without its recipes."""


def recipes_root() -> Path:
    """The folder of packaged recipes; a missing one means a broken installation, said as such."""
    root = Path(str(files("vlalign") / "recipes"))
    if not root.is_dir():
        raise RecipeError(
            f"{root} does not exist: this vlalign installation lacks its recipes (vlalign/recipes/*.yaml). "
            "Reinstall vlalign (`pip install --force-reinstall vlalign`), or in a source checkout restore the "
            "link `vlalign/recipes -> ../configs` (`git checkout vlalign/recipes`)."
        )
    return root


def recipe_names() -> list[str]:
    """Every packaged recipe, e.g. ``["accelerate/ddp", ..., "demo", "experiments/kl_sweep", ...]``."""
    root = recipes_root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}"))


def _normalise(name: str) -> str:
    name = name.strip().removeprefix("configs/").removesuffix(SUFFIX)
    return name.replace("-", "_")


def recipe_name(name: str) -> str:
    """The canonical name of ``name`` (``kl-sweep`` → ``experiments/kl_sweep``); unknown → error with hints."""
    known = recipe_names()
    wanted = _normalise(name)
    if wanted in known:
        return wanted
    by_stem = [k for k in known if k.rsplit("/", 1)[-1] == wanted]
    if len(by_stem) == 1:
        return by_stem[0]
    if len(by_stem) > 1:
        raise RecipeError(f"recipe name {name!r} is ambiguous: {', '.join(by_stem)}; use the full name")
    close = difflib.get_close_matches(wanted, sorted({*known, *(k.rsplit("/", 1)[-1] for k in known)}), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise RecipeError(f"no recipe named {name!r}.{hint} `vlalign config list` lists them.")


def recipe_path(name: str) -> Path:
    """The packaged YAML of recipe ``name``."""
    return recipes_root() / f"{recipe_name(name)}{SUFFIX}"


def config_source(config: str | Path) -> Path:
    """What a ``--config`` value points at: an existing file, else the packaged recipe of that name.

    ``configs/sft_tiny.yaml`` in a checkout is the file; after ``pip install vlalign`` (no ``configs/``
    folder) the same value, or just ``sft_tiny``, finds the packaged copy."""
    path = Path(config)
    if path.is_file():
        return path
    try:
        return recipe_path(str(config))
    except RecipeError as exc:
        raise RecipeError(f"config file {path} does not exist, and it names no packaged recipe: {exc}") from None


# recipe name prefix -> "module:Class" the recipe is validated against (the longest matching prefix wins)
RECIPE_CLASSES = {
    "demo": "vlalign.experiments.demo:DemoConfig",
    "experiments/kl_sweep": "vlalign.experiments.kl_sweep:KLSweepConfig",
    "experiments/dpo_vs_rl": "vlalign.experiments.dpo_vs_rl:DPOvsRLConfig",
    "experiments/reward_sources": "vlalign.experiments.reward_sources:RewardSourcesConfig",
    "experiments/safe_rlhf": "vlalign.experiments.safe_rlhf:SafeRLHFConfig",
    "experiments/active_learning": "vlalign.experiments.active_learning:ActiveLearningConfig",
    "experiments/beyond_control": "vlalign.experiments.beyond_control:BeyondControlConfig",
    "sft_": "vlalign.trainers.configs:SFTConfig",
    "dpo_": "vlalign.trainers.configs:DPOConfig",
    "iterative_dpo_": "vlalign.trainers.iterative_dpo:IterativeDPOConfig",
    "grpo_": "vlalign.trainers.grpo:GRPOConfig",
    "rloo_": "vlalign.trainers.rloo:RLOOConfig",
    "ppo_": "vlalign.trainers.ppo:PPOConfig",
    "safe_ppo_": "vlalign.trainers.safe_ppo:SafePPOConfig",
    "rm_": "vlalign.trainers.reward_model:RewardModelConfig",
    "cost_": "vlalign.trainers.reward_model:CostModelConfig",
    "clip_": "vlalign.trainers.clip_train:ClipTrainConfig",
}
LAUNCHER_PREFIX = "accelerate/"  # launcher configs of `accelerate launch`, not vlalign configs


def recipe_class(name: str) -> type[BaseConfig] | None:
    """The config class recipe ``name`` (canonical) is validated against; None for accelerate's configs."""
    if name.startswith(LAUNCHER_PREFIX):
        return None
    matches = [p for p in RECIPE_CLASSES if name.startswith(p)]
    if not matches:
        raise RecipeError(f"recipe {name!r} has no config class in vlalign.recipes.RECIPE_CLASSES; add its prefix there")
    module, cls = RECIPE_CLASSES[max(matches, key=len)].split(":")
    return getattr(importlib.import_module(module), cls)


def load_recipe(name: str, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Any:
    """Packaged recipe ``name`` with ``overrides`` (``["beta=0.2"]`` or a nested dict), validated by its
    config class: what ``vlalign <command> --config configs/<name>.yaml ...`` would run, as an object
    for :func:`vlalign.train_dpo` and the other entry points."""
    canonical = recipe_name(name)
    cls = recipe_class(canonical)
    if cls is None:
        raise RecipeError(f"{canonical} is an accelerate launcher config, not a vlalign config; pass it to `accelerate launch`")
    if hasattr(cls, "from_recipe"):  # the experiments: their YAML is the only source of their settings
        return cls.from_recipe(canonical, overrides)
    if isinstance(overrides, Mapping):
        data = deep_merge(yaml.safe_load(recipe_path(canonical).read_text()) or {}, dict(overrides))
        return load_config(cls, None, (), defaults=data)
    return load_config(cls, recipe_path(canonical), list(overrides))
