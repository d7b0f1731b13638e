"""`vlalign config list` and `vlalign config show NAME [key=value ...]`: the packaged recipes, and one
recipe merged and validated exactly as the command that runs it would see it.

``show`` prints every key, the ones the YAML leaves to a section's documented default included, so
what a run will do can be read before running it (``vlalign config show demo > my.yaml`` is also the
way to start a recipe of one's own).
"""

from __future__ import annotations

import importlib
from typing import Any

import typer

from vlalign.cli_common import OVERRIDES_ARG, fail

config_app = typer.Typer(help="The packaged recipes (configs/*.yaml): list them, show one merged.", no_args_is_help=True)

# recipe name prefix -> "module:Class" the recipe is validated against (the longest matching prefix wins)
RECIPE_CLASSES = {
    "demo": "vlalign.experiments.demo:DemoConfig",
    "experiments/kl_sweep": "vlalign.experiments.kl_sweep:KLSweepConfig",
    "experiments/dpo_vs_rl": "vlalign.experiments.dpo_vs_rl:DPOvsRLConfig",
    "experiments/reward_sources": "vlalign.experiments.reward_sources:RewardSourcesConfig",
    "experiments/safe_rlhf": "vlalign.experiments.safe_rlhf:SafeRLHFConfig",
    "sft_": "vlalign.trainers.configs:SFTConfig",
    "dpo_": "vlalign.trainers.configs:DPOConfig",
    "grpo_": "vlalign.trainers.grpo:GRPOConfig",
    "rloo_": "vlalign.trainers.rloo:RLOOConfig",
    "ppo_": "vlalign.trainers.ppo:PPOConfig",
    "safe_ppo_": "vlalign.trainers.safe_ppo:SafePPOConfig",
    "rm_": "vlalign.trainers.reward_model:RewardModelConfig",
    "cost_": "vlalign.trainers.reward_model:CostModelConfig",
    "clip_": "vlalign.trainers.clip_train:ClipTrainConfig",
}
UNVALIDATED = ("accelerate/",)  # launcher configs of `accelerate launch`, not vlalign configs


def recipe_class(name: str) -> Any:
    """The config class recipe ``name`` is validated against; None for accelerate's launcher configs."""
    if name.startswith(UNVALIDATED):
        return None
    matches = [p for p in RECIPE_CLASSES if name.startswith(p)]
    if not matches:
        raise KeyError(f"recipe {name!r} has no config class in vlalign.config_cli.RECIPE_CLASSES; add its prefix there")
    module, cls = RECIPE_CLASSES[max(matches, key=len)].split(":")
    return getattr(importlib.import_module(module), cls)


def merged(canonical: str, overrides: list[str]) -> dict[str, Any]:
    """Recipe ``canonical`` (a name from `config list`) with ``overrides``, validated by its class, as
    plain data (every key)."""
    import yaml

    from vlalign.config import load_config
    from vlalign.config.base import deep_merge, parse_overrides
    from vlalign.experiments.base import RecipeConfig
    from vlalign.recipes import recipe_path

    cls = recipe_class(canonical)
    if cls is None:
        return deep_merge(yaml.safe_load(recipe_path(canonical).read_text()) or {}, parse_overrides(overrides))
    if issubclass(cls, RecipeConfig):
        return cls.from_recipe(canonical, overrides).model_dump(mode="json")
    return load_config(cls, recipe_path(canonical), overrides).model_dump(mode="json")


@config_app.command("list")
def list_command() -> None:
    """Every packaged recipe, by the name `config show`, `--config` and the recipe commands take."""
    from vlalign.recipes import recipe_names

    for name in recipe_names():
        typer.echo(name)


@config_app.command("show")
def show_command(
    name: str = typer.Argument(..., help="recipe name (`vlalign config list`), e.g. demo, sft_tiny, experiments/kl_sweep"),
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Print recipe NAME merged with key=value overrides and validated, as YAML (every key)."""
    import yaml

    from vlalign.config import ConfigError
    from vlalign.recipes import recipe_name

    try:
        canonical = recipe_name(name)
        data = merged(canonical, overrides or [])
    except ConfigError as exc:
        fail(str(exc))
        return
    if canonical.startswith(UNVALIDATED):
        typer.echo("# an accelerate launcher config: shown as written, not validated by vlalign", err=True)
    typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
