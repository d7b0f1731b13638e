"""The one entry point: ``vlalign <command>``.

Thin on purpose: each area registers its own commands (``register(app)`` in its ``cli.py``), and
every command body imports its heavy modules lazily so that ``vlalign --help`` stays instant.
Training/eval commands take ``--config FILE.yaml`` plus ``key=value`` overrides; see
:func:`vlalign.cli_common.config_command`.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="vlalign",
    help="Align vision-language models with human, AI and rule-based preferences.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines `register(app: typer.Typer) -> None`.
COMMAND_MODULES = [
    "vlalign.models.cli",
    "vlalign.data.cli",
    "vlalign.trainers.cli",
    "vlalign.trainers.rl_cli",
    "vlalign.evaluation.cli",
    "vlalign.experiments.cli",
    "vlalign.bench_cli",
    "vlalign.experiments.experiment_cli",
    "vlalign.annotate.cli",
    "vlalign.rewards.cli",
    "vlalign.config_cli",
    "vlalign.hub_cli",
    "vlalign.redteam.cli",
]


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


@app.command("version")
def version() -> None:
    """Print the vlalign version."""
    from vlalign import __version__

    typer.echo(__version__)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
