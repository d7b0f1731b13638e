"""`vlalign grpo`, `rloo`, `ppo` and `safe-ppo`: ``--config FILE.yaml`` plus ``key=value`` overrides.

Heavy imports happen inside the commands so that ``vlalign --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from vlalign.cli_common import CONFIG_OPTION, OVERRIDES_ARG, fail, offline_by_default, resolve_config

# command -> (module, config class, train function), imported only when the command runs
_TRAINERS = {
    "grpo": ("vlalign.trainers.grpo", "GRPOConfig", "train_grpo"),
    "rloo": ("vlalign.trainers.rloo", "RLOOConfig", "train_rloo"),
    "ppo": ("vlalign.trainers.ppo", "PPOConfig", "train_ppo"),
    "safe-ppo": ("vlalign.trainers.safe_ppo", "SafePPOConfig", "train_safe_ppo"),
}


def _run(kind: str, config: Path | None, overrides: list[str] | None) -> None:
    import importlib

    offline_by_default()
    module_name, cls_name, fn_name = _TRAINERS[kind]
    module = importlib.import_module(module_name)
    cls, train = getattr(module, cls_name), getattr(module, fn_name)
    cfg = resolve_config(cls, config, overrides)
    from vlalign.data.collate import CollateError
    from vlalign.data.validate import DataError
    from vlalign.models.load import ModelLoadError

    try:
        summary = train(cfg)
    except (DataError, CollateError, ModelLoadError, KeyError, FileNotFoundError, ValueError) as exc:
        fail(str(exc).strip("'\""))
    except RuntimeError as exc:
        fail(str(exc), code=1)
    else:
        how = summary["stop_reason"] or f"{summary['steps']} rollouts"
        if summary["saved"]:  # only the main process saves (and reports)
            typer.echo(f"done: {how}; saved {summary['saved']}")


def register(app: typer.Typer) -> None:
    @app.command("grpo")
    def grpo(config: Path = CONFIG_OPTION, overrides: list[str] = OVERRIDES_ARG) -> None:
        """GRPO: K samples per prompt, group-relative advantages, clipped loss, k3 KL to the reference."""
        _run("grpo", config, overrides)

    @app.command("rloo")
    def rloo(config: Path = CONFIG_OPTION, overrides: list[str] = OVERRIDES_ARG) -> None:
        """RLOO: REINFORCE with a leave-one-out baseline over K samples, KL as a reward penalty."""
        _run("rloo", config, overrides)

    @app.command("ppo")
    def ppo(config: Path = CONFIG_OPTION, overrides: list[str] = OVERRIDES_ARG) -> None:
        """PPO with a critic (shared value head or separate backbone), GAE, KL penalty or loss term."""
        _run("ppo", config, overrides)

    @app.command("safe-ppo")
    def safe_ppo(config: Path = CONFIG_OPTION, overrides: list[str] = OVERRIDES_ARG) -> None:
        """Safe RLHF: PPO with reward and cost critics and a Lagrange multiplier on the mean cost."""
        _run("safe-ppo", config, overrides)
