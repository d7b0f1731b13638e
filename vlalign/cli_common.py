"""Shared pieces of the CLI: config loading with readable errors, and the exit-code convention.

Exit codes: 0 success, 1 the run failed, 2 bad usage / bad config / bad data (the message says
which file, row, key and what to do).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, TypeVar

import typer

from vlalign.config import BaseConfig, ConfigError, load_config

C = TypeVar("C", bound=BaseConfig)

CONFIG_OPTION = typer.Option(
    None, "--config", "-c", help="YAML config file, or the name of a packaged recipe (`vlalign config list`); key=value "
    "arguments override it."
)
OVERRIDES_ARG = typer.Argument(None, help="Overrides as key=value (dotted keys for sections, e.g. lora.r=8).")


def fail(message: str, code: int = 2) -> None:
    """Print a clear error (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def resolve_config(
    cls: type[C], config: Path | None, overrides: list[str] | None, defaults: dict[str, Any] | None = None
) -> C:
    """Load and validate a command's config; bad keys/values exit with code 2 and a hint. ``config`` is a
    file, or the name of a packaged recipe when no such file exists (an installed vlalign has no
    ``configs/`` folder: ``--config configs/sft_tiny.yaml`` and ``--config sft_tiny`` then both find it)."""
    from vlalign.recipes import config_source

    try:
        return load_config(cls, None if config is None else config_source(config), overrides or [], defaults=defaults)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable; keeps type checkers happy


def offline_by_default() -> None:
    """Process-wide defaults for every command.

    The hub is NOT forced offline here: a hub id must keep working for users who have a network.
    Local paths never touch the network; the Makefile and the tests set ``HF_HUB_OFFLINE=1``.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def echo_err(msg: str) -> None:
    print(msg, file=sys.stderr)
