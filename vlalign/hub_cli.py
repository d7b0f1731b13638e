"""`vlalign push RUN_DIR`: upload a finished run (``final/``, ``adapter/``, their model cards) to its hub
repository — the same upload a run with ``hub.push_to_hub=true`` makes when it ends, for a run that
was trained without it or whose upload failed."""

from __future__ import annotations

from pathlib import Path

import typer

from vlalign.cli_common import OVERRIDES_ARG, fail


def push_command(
    run_dir: Path = typer.Argument(..., help="output_dir of a finished training run (holds config.yaml and final/)"),
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Upload a finished run to the hub: the run's `hub` settings, with key=value overrides (hub_model_id=user/name)."""
    import yaml

    from vlalign.config import ConfigError, load_config
    from vlalign.hub import HubConfig, HubPushError, upload_run

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        fail(f"{saved} does not exist; RUN_DIR must be the output_dir of a finished vlalign training run")
    hub = (yaml.safe_load(saved.read_text()) or {}).get("hub") or {}
    try:
        cfg = load_config(HubConfig, None, [*(overrides or []), "push_to_hub=true"], defaults=hub)
        pushed = upload_run(run_dir, cfg)
    except ConfigError as exc:
        fail(str(exc))
        return
    except HubPushError as exc:
        fail(str(exc), code=1)
        return
    for folder, url in pushed.items():
        typer.echo(f"pushed {run_dir / folder}: {url}")


def register(app: typer.Typer) -> None:
    app.command("push")(push_command)
