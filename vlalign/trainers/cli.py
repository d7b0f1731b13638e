"""`vlalign sft` and `vlalign dpo`: ``--config FILE.yaml`` plus ``key=value`` overrides.

Heavy imports happen inside the commands so that ``vlalign --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from vlalign.cli_common import CONFIG_OPTION, OVERRIDES_ARG, fail, offline_by_default, resolve_config


def _run(kind: str, config: Path | None, overrides: list[str] | None) -> None:
    offline_by_default()
    from vlalign.trainers.configs import DPOConfig, SFTConfig

    cls = {"sft": SFTConfig, "dpo": DPOConfig}[kind]
    cfg = resolve_config(cls, config, overrides)
    from vlalign.data.collate import CollateError
    from vlalign.data.validate import DataError
    from vlalign.models.load import ModelLoadError
    from vlalign.trainers.checkpoint import CheckpointError
    from vlalign.trainers.step import NonFiniteError

    try:
        if kind == "sft":
            from vlalign.trainers.sft import train_sft as train
        else:
            from vlalign.trainers.dpo import train_dpo as train
        summary = train(cfg)
    except (DataError, CollateError, ModelLoadError, KeyError, FileNotFoundError) as exc:
        fail(str(exc).strip("'\""))
    except (NonFiniteError, CheckpointError) as exc:
        fail(str(exc), code=1)
    except ValueError as exc:
        fail(str(exc))
    else:
        if summary["saved"]:  # only the main process saves (and reports)
            typer.echo(f"done: {summary['steps']} steps, saved {summary['saved']}")


def register(app: typer.Typer) -> None:
    @app.command("sft")
    def sft(config: Path = CONFIG_OPTION, overrides: list[str] = OVERRIDES_ARG) -> None:
        """Supervised fine-tuning of a VLM on answers (records' `reference`, or `chosen`)."""
        _run("sft", config, overrides)

    @app.command("dpo")
    def dpo(config: Path = CONFIG_OPTION, overrides: list[str] = OVERRIDES_ARG) -> None:
        """Preference optimisation: loss=dpo|cdpo|ipo|hinge|simpo|orpo|kto|mdpo|dense_dpo."""
        _run("dpo", config, overrides)

    @app.command("iterative-dpo")
    def iterative_dpo(config: Path = CONFIG_OPTION, overrides: list[str] = OVERRIDES_ARG) -> None:
        """Online DPO: rounds of sample (current policy) → score (any reward source) → pairs → DPO; then RL."""
        _run_iterative(config, overrides)


def _run_iterative(config: Path | None, overrides: list[str] | None) -> None:
    offline_by_default()
    from vlalign.trainers.iterative_dpo import IterativeDPOConfig

    cfg = resolve_config(IterativeDPOConfig, config, overrides)
    from vlalign.trainers.iterative_dpo import train_iterative_dpo

    try:
        summary = train_iterative_dpo(cfg)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as exc:
        fail(str(exc).strip("'\""), code=1 if isinstance(exc, RuntimeError) else 2)
    else:
        typer.echo(f"done: {len(summary['rounds'])} rounds, {summary['samples']} answers sampled and scored, "
                   f"{summary['dpo_steps']} DPO steps{', then ' + summary['rl']['algorithm'] if summary['rl'] else ''}; "
                   f"final model {summary['final']}")


def main() -> None:
    """``python -m vlalign.trainers.cli dpo ...``: the trainer commands alone (used by tests and by
    ``accelerate launch -m vlalign.trainers.cli``; ``accelerate launch -m vlalign.cli`` works as well)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":
    main()
