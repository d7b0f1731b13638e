"""`vlalign experiment <name>` (and the machinery `vlalign demo` shares): the experiments' commands.

Thin on purpose: each command resolves its recipe (the packaged YAML, or ``--config``, plus
``key=value`` overrides and ``--seed``), runs it and prints its table and verdict; the recipe modules
are imported only when a command runs, so ``vlalign --help`` stays instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from vlalign.cli_common import CONFIG_OPTION, OVERRIDES_ARG

SEED_OPTION = typer.Option(None, "--seed", help="seed of data, model, training and sampling (over the recipe's)")

experiment_app = typer.Typer(help="The seeds' experiments (metrics.json + report.html in --out).", no_args_is_help=True)

# command -> (module, config class, run function, text(result, cfg) -> str, default --out, help)
EXPERIMENTS: dict[str, tuple[str, str, str, str, str, str]] = {
    "reward-sources": ("vlalign.experiments.reward_sources", "RewardSourcesConfig", "run_reward_sources", "console_text",
                       "runs/reward_sources",
                       "Human-label RM vs CLIP AI feedback vs rule verifiers as DPO labels, at several label budgets."),
    "kl-sweep": ("vlalign.experiments.kl_sweep", "KLSweepConfig", "run_kl_sweep", "console_text", "runs/kl_sweep",
                 "Sweep DPO's β and the RL KL coefficient from one SFT model: fidelity vs diversity vs KL."),
    "dpo-vs-rl": ("vlalign.experiments.dpo_vs_rl", "DPOvsRLConfig", "run_dpo_vs_rl", "console_text", "runs/dpo_vs_rl",
                  "DPO vs PPO vs GRPO: same SFT model, prompts and budget; metrics, cost per improvement, seeds."),
    "safe-rlhf": ("vlalign.experiments.safe_rlhf", "SafeRLHFConfig", "run_safe_rlhf", "console_text", "runs/safe_rlhf",
                  "Safe-PPO vs reward-only PPO from a helpful-only SFT model: harmful compliance and benign refusal."),
    "active-learning": ("vlalign.experiments.active_learning", "ActiveLearningConfig", "run_active_learning",
                        "console_text", "runs/active_learning",
                        "Labels a reward model needs to reach an accuracy: uncertainty-chosen vs random pairs, CIs over seeds."),
    "beyond-control": ("vlalign.experiments.beyond_control", "BeyondControlConfig", "run_beyond_control", "console_text",
                       "runs/beyond_control",
                       "Score-only feedback: DPO family, GRPO, PPO vs rejection-sampling SFT on the same labels, seeds, CIs."),
    "demo": ("vlalign.experiments.demo", "DemoConfig", "run_demo", "console_text", "runs/demo",
             "SFT a tiny VLM into hallucinating, fix it with on-policy DPO, compare with an SFT control."),
}  # fmt: skip


def run_recipe(name: str, out: Path, seed: int | None, config: Path | None, overrides: list[str] | None) -> None:
    """Resolve the recipe (its config saved as ``out/config.yaml``), run it, print its text and outputs."""
    from vlalign.experiments.base import experiment_config, written_line

    module_name, cls_name, run_name, text_name, _, _ = EXPERIMENTS[name]
    module = importlib.import_module(module_name)
    cfg = experiment_config(getattr(module, cls_name), config, overrides, out, seed)
    result = getattr(module, run_name)(cfg, out, log=lambda s: typer.echo(s, err=True))
    typer.echo(getattr(module, text_name)(result, cfg))
    typer.echo(written_line(out, result))


def recipe_command(name: str) -> Callable[..., Any]:
    """The typer command of recipe ``name``: ``--out``, ``--seed``, ``--config`` and overrides."""
    default_out, help_text = EXPERIMENTS[name][4:]

    def command(
        out: Path = typer.Option(Path(default_out), "--out", "-o", help="output folder"),
        seed: int | None = SEED_OPTION,
        config: Path | None = CONFIG_OPTION,
        overrides: list[str] | None = OVERRIDES_ARG,
    ) -> None:
        run_recipe(name, out, seed, config, overrides)

    command.__doc__ = help_text
    return command


def register(app: typer.Typer) -> None:
    for name in EXPERIMENTS:
        if name != "demo":  # `vlalign demo` is a top-level command (vlalign.experiments.cli)
            experiment_app.command(name)(recipe_command(name))
    app.add_typer(experiment_app, name="experiment")
