"""Recipes shipped inside the package: found by name, the YAML the only source of a recipe's settings,
a missing YAML or key a loud error, `vlalign config show` printing the merged config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from vlalign.config import ConfigError
from vlalign.config_cli import merged
from vlalign.experiments.demo import DemoConfig
from vlalign.recipes import (
    RECIPE_CLASSES,
    RecipeError,
    config_source,
    recipe_class,
    recipe_name,
    recipe_names,
    recipe_path,
    recipes_root,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_packaged_recipes_are_the_configs_folder():
    """In a checkout the package reaches configs/ itself (one source); names are paths without .yaml."""
    assert recipes_root().resolve() == (ROOT / "configs").resolve()
    names = recipe_names()
    assert {"demo", "sft_tiny", "dpo_tiny", "experiments/kl_sweep", "experiments/safe_rlhf_gpu", "accelerate/ddp"} <= set(names)
    assert len(names) == len(list((ROOT / "configs").rglob("*.yaml")))


def test_recipe_names_resolve_as_users_type_them():
    assert recipe_name("kl-sweep") == "experiments/kl_sweep"  # the CLI's spelling of the experiment
    assert recipe_name("configs/demo.yaml") == "demo"  # the README's path
    assert recipe_name("experiments/dpo_vs_rl_gpu") == "experiments/dpo_vs_rl_gpu"
    with pytest.raises(RecipeError, match="Did you mean 'kl_sweep'"):
        recipe_name("kl_swep")
    assert config_source("sft_tiny") == recipe_path("sft_tiny")  # an installed vlalign has no configs/ folder
    assert config_source(ROOT / "configs" / "sft_tiny.yaml") == ROOT / "configs" / "sft_tiny.yaml"  # a file wins
    with pytest.raises(RecipeError, match="does not exist, and it names no packaged recipe"):
        config_source("configs/sft_tiyn.yaml")


def test_the_yaml_is_the_only_source_of_a_recipes_settings():
    """No code defaults to fall back on: without its YAML a recipe config cannot even be built."""
    with pytest.raises(ValidationError, match="Field required"):
        DemoConfig()
    cfg = DemoConfig.from_recipe()
    assert cfg.model_dump(mode="json") == DemoConfig.model_validate(yaml.safe_load(recipe_path("demo").read_text())).model_dump(mode="json")
    # the values that made an installed demo differ from configs/demo.yaml (no warm-up, no freeze, no replay)
    assert (cfg.vision_warmup.steps, cfg.freeze, cfg.dpo.replay_yes_no) == (2000, ["vision_tower"], 2000)
    assert DemoConfig.from_recipe(overrides=["dpo.beta=0.2"], seed=4).dpo.beta == 0.2
    assert DemoConfig.from_recipe(overrides={"dpo": {"beta": 0.3}}).dpo.loss == "dpo"  # a dict merges, keeps the rest


def test_a_recipe_without_its_yaml_fails_loudly(tmp_path, monkeypatch):
    import vlalign.recipes

    monkeypatch.setattr(vlalign.recipes, "files", lambda package: tmp_path)  # an installation without vlalign/recipes
    with pytest.raises(RecipeError, match="lacks its recipes"):
        DemoConfig.from_recipe()


def test_a_recipe_file_missing_a_key_names_it_and_the_fix(tmp_path):
    data = yaml.safe_load(recipe_path("demo").read_text())
    del data["vision_warmup"], data["dpo"]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"missing key\(s\) `vision_warmup`, `dpo`.*vlalign config show demo"):
        DemoConfig.from_recipe(tmp_path / "mine.yaml")


def test_every_recipe_validates_against_its_config_class():
    for name in recipe_names():
        data = merged(name, [])
        assert isinstance(data, dict) and data, name
        if not name.startswith("accelerate/"):
            assert recipe_class(name).__name__ in {v.split(":")[1] for v in RECIPE_CLASSES.values()}


def test_config_show_prints_the_merged_recipe():
    from vlalign.cli import app

    res = CliRunner().invoke(app, ["config", "show", "demo", "seed=3", "dpo.beta=0.2"])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output)
    assert (shown["seed"], shown["dpo"]["beta"], shown["target_chair_cut"]) == (3, 0.2, 0.4)
    assert shown["sampling"]["max_new_tokens"] == 40  # a key the YAML leaves to its section's default is shown too
    res = CliRunner().invoke(app, ["config", "show", "sft_tiny", "learning_rate=1e-4"])
    assert res.exit_code == 0 and yaml.safe_load(res.output)["learning_rate"] == 1e-4
    res = CliRunner().invoke(app, ["config", "show", "demo", "dpo.bta=0.2"])
    assert res.exit_code == 2 and "unknown key `dpo.bta`, did you mean `dpo.beta`?" in res.output
    res = CliRunner().invoke(app, ["config", "show", "dmeo"])
    assert res.exit_code == 2 and "Did you mean 'demo'?" in res.output
    res = CliRunner().invoke(app, ["config", "list"])
    assert res.exit_code == 0 and "experiments/kl_sweep" in res.output.split()


def test_trainer_commands_take_a_recipe_name_for_config():
    from vlalign.cli_common import resolve_config
    from vlalign.trainers.configs import SFTConfig

    by_name = resolve_config(SFTConfig, Path("sft_tiny"), ["seed=5"])
    by_path = resolve_config(SFTConfig, ROOT / "configs" / "sft_tiny.yaml", ["seed=5"])
    assert by_name == by_path and by_name.seed == 5
