"""`vlalign demo`: the README's first command, run like every experiment recipe (see
:mod:`vlalign.experiments.experiment_cli`)."""

from __future__ import annotations

import typer

from vlalign.experiments.experiment_cli import recipe_command


def register(app: typer.Typer) -> None:
    app.command("demo")(recipe_command("demo"))
