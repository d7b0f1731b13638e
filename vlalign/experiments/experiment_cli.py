"""`vlalign experiment <name>`: the seeds' experiments as runnable recipes, one sub-command each.

Each command takes ``--out DIR`` plus ``--config FILE.yaml`` and ``key=value`` overrides, writes the
resolved config to ``DIR/config.yaml`` and its results to ``DIR/metrics.json`` + ``DIR/report.html``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from vlalign.cli_common import CONFIG_OPTION, OVERRIDES_ARG

experiment_app = typer.Typer(help="The seeds' experiments (metrics.json + report.html in --out).", no_args_is_help=True)

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "experiments"
SEED_OPTION = typer.Option(None, "--seed", help="seed of data, model, training and sampling")
RS_OUT_OPTION = typer.Option(Path("runs/reward_sources"), "--out", "-o", help="output folder")


@experiment_app.command("reward-sources")
def reward_sources(
    out: Path = RS_OUT_OPTION,
    seed: int | None = SEED_OPTION,
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Human-label RM vs CLIP AI feedback vs rule verifiers as DPO labels, at several label budgets."""
    from vlalign.evaluation.report import markdown_table
    from vlalign.experiments.common import experiment_config, written_line
    from vlalign.experiments.reward_sources import RewardSourcesConfig, run_reward_sources
    from vlalign.experiments.reward_sources_report import labels_table, runs_table, verdict_text

    cfg = experiment_config(RewardSourcesConfig, CONFIGS / "reward_sources.yaml", config, overrides, out, seed)
    result = run_reward_sources(cfg, out, log=lambda s: typer.echo(s, err=True))
    typer.echo(markdown_table(labels_table(result)) + "\n")
    typer.echo(markdown_table(runs_table(result)))
    typer.echo("\n" + verdict_text(result, cfg.noise_tol))
    typer.echo(written_line(out, result))


def _register_kl_sweep_and_dpo_vs_rl() -> None:
    """`kl-sweep`, `dpo-vs-rl` and `safe-rlhf` (their modules import no torch at import time, so --help stays fast)."""
    from vlalign.experiments.active_learning import active_learning_command
    from vlalign.experiments.dpo_vs_rl import dpo_vs_rl_command
    from vlalign.experiments.kl_sweep import kl_sweep_command
    from vlalign.experiments.safe_rlhf import safe_rlhf_command

    experiment_app.command("kl-sweep")(kl_sweep_command)
    experiment_app.command("dpo-vs-rl")(dpo_vs_rl_command)
    experiment_app.command("safe-rlhf")(safe_rlhf_command)
    experiment_app.command("active-learning")(active_learning_command)


_register_kl_sweep_and_dpo_vs_rl()


def register(app: typer.Typer) -> None:
    app.add_typer(experiment_app, name="experiment")
