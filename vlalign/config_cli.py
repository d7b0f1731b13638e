"""`vlalign config list` and `vlalign config show NAME [key=value ...]`: the packaged recipes, and one
recipe merged and validated exactly as the command that runs it would see it.

``show`` prints every key, the ones the YAML leaves to a section's documented default included, so
what a run will do can be read before running it (``vlalign config show demo > my.yaml`` is also the
way to start a recipe of one's own).
"""

from __future__ import annotations

from typing import Any

import typer

from vlalign.cli_common import OVERRIDES_ARG, fail

config_app = typer.Typer(help="The packaged recipes (configs/*.yaml): list them, show one merged.", no_args_is_help=True)


def merged(canonical: str, overrides: list[str]) -> dict[str, Any]:
    """Recipe ``canonical`` (a name from `config list`) with ``overrides``, validated by its class, as
    plain data (every key); accelerate's launcher configs merged as written."""
    import yaml

    from vlalign.config.base import deep_merge, parse_overrides
    from vlalign.recipes import load_recipe, recipe_class, recipe_path

    if recipe_class(canonical) is None:
        return deep_merge(yaml.safe_load(recipe_path(canonical).read_text()) or {}, parse_overrides(overrides))
    return load_recipe(canonical, overrides).model_dump(mode="json")


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
    from vlalign.recipes import LAUNCHER_PREFIX, recipe_name

    try:
        canonical = recipe_name(name)
        data = merged(canonical, overrides or [])
    except ConfigError as exc:
        fail(str(exc))
        return
    if canonical.startswith(LAUNCHER_PREFIX):
        typer.echo("# an accelerate launcher config: shown as written, not validated by vlalign", err=True)
    typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
