"""`vlalign redteam`: attack a model with the attack library and an attacker loop; write ASR per family and
the successful attacks as a prompt set (safe-ppo) and preference pairs (dpo)."""

from __future__ import annotations

from pathlib import Path

import typer

from vlalign.cli_common import CONFIG_OPTION, OVERRIDES_ARG, fail, offline_by_default, resolve_config


def redteam_command(
    model: str | None = typer.Option(None, "--model", "-m", help="target model directory (or hub id)"),
    data: Path | None = typer.Option(None, "--data", "-d", help="seed requests: a Shapes folder or a prompt file"),
    out: Path | None = typer.Option(None, "--out", "-o", help="output folder"),
    replay: Path | None = typer.Option(None, "--replay", help="an earlier redteam folder: run its attempts unchanged"),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Red-team a model: typographic, image-perturbation and prompt-template attacks, an attacker loop,
    harm scored by a cost source or judge → attacks.jsonl, successful_prompts.jsonl (trains safe-ppo),
    successful_pairs.jsonl (trains dpo), metrics.json with ASR per family and 95% intervals."""
    offline_by_default()
    from vlalign.models.load import ModelLoadError
    from vlalign.redteam.loop import RedteamConfig
    from vlalign.redteam.run import redteam

    cfg = resolve_config(RedteamConfig, config, overrides)
    for key, value in (("model", model), ("data", data), ("out", out), ("replay", replay)):
        if value is not None:
            setattr(cfg, key, str(value))
    if cfg.model is None or cfg.out is None or (cfg.data is None and cfg.replay is None):
        fail("--model, --out and one of --data (seed requests) or --replay (an earlier run) are required")
    try:
        path, metrics = redteam(cfg)
    except (FileNotFoundError, ValueError, KeyError, ModelLoadError) as exc:
        fail(str(exc).strip('"'))
        return
    fams = ", ".join(f"{k[4:]} {v:.3f}" for k, v in sorted(metrics.items()) if k.startswith("asr_"))
    typer.echo(f"ASR {metrics['asr']:.3f} over {int(metrics['n_attempts'])} attempts ({fams}); "
               f"{int(metrics['n_successful_unique'])} unique successful attacks")
    if "control_refusal_rate" in metrics:
        typer.echo(f"benign controls through the same attacks: refused {metrics['control_refusal_rate']:.3f} of "
                   f"{int(metrics['n_control_attempts'])}")
    typer.echo(f"wrote {path / 'metrics.json'}, {path / 'successful_prompts.jsonl'} and {path / 'successful_pairs.jsonl'}")


def register(app: typer.Typer) -> None:
    app.command("redteam")(redteam_command)
