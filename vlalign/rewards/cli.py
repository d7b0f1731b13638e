"""`vlalign rm`, `vlalign rm distill`, `vlalign cost-model`, `vlalign clip-train`, `vlalign label`.

Every command takes ``--config FILE.yaml`` plus ``key=value`` overrides and writes the resolved
config next to its outputs. Heavy imports happen inside the commands (``vlalign --help`` stays fast).
Exit codes: 0 done, 1 the run failed, 2 bad config / data / usage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from vlalign.cli_common import CONFIG_OPTION, OVERRIDES_ARG, fail, offline_by_default, resolve_config

DATA_OPTION = typer.Option(None, "--data", help="Shapes folder (from `vlalign data shapes`)")
OUT_OPTION = typer.Option(None, "--out", "-o", help="output folder (final/ holds the CLIP model)")


def _guarded(fn: Callable[[], Any]) -> Any:
    """Run a command body; known user errors become exit 2 with the message, divergence exit 1."""
    from vlalign.data.collate import CollateError
    from vlalign.data.validate import DataError
    from vlalign.models.load import ModelLoadError
    from vlalign.trainers.common import NonFiniteError

    try:
        return fn()
    except (DataError, CollateError, ModelLoadError, KeyError, FileNotFoundError, ValueError) as exc:
        fail(str(exc).strip("'\""))
    except NonFiniteError as exc:
        fail(str(exc), code=1)


def _echo_eval(metrics: dict[str, Any]) -> None:
    for when in ("before", "after"):
        rep = metrics.get(when)
        if rep:
            extra = f", sign accuracy {rep['safety_accuracy']:.3f}" if "safety_accuracy" in rep else ""
            typer.echo(f"{when:>6} training: held-out pair accuracy {rep['accuracy']:.3f}, "
                       f"mean margin {rep['margin_mean']:.3f}, ECE {rep['ece']:.3f}{extra} ({rep['n_pairs']} pairs)")


def _train_scalar(kind: str, config: Path | None, overrides: list[str]) -> None:
    offline_by_default()
    from vlalign.trainers import reward_model as rm

    cls, train = {
        "reward": (rm.RewardModelConfig, rm.train_reward_model),
        "cost": (rm.CostModelConfig, rm.train_cost_model),
        "distill": (rm.DistillConfig, rm.train_distill),
    }[kind]
    cfg = resolve_config(cls, config, overrides)
    metrics = _guarded(lambda: train(cfg))
    _echo_eval(metrics)
    typer.echo(f"saved {metrics['saved']}; metrics in {Path(cfg.output_dir) / 'metrics.json'}")


def register(app: typer.Typer) -> None:
    @app.command("rm", context_settings={"allow_interspersed_args": True})
    def rm(config: Path = CONFIG_OPTION, overrides: list[str] = OVERRIDES_ARG) -> None:
        """Train a reward model (any VLM + scalar head): Bradley–Terry on pairs, Plackett–Luce on rankings.

        `model.kind=critique` trains a critique reward model (it writes a critique, then scores; pairs need
        `critique` labels, e.g. from `vlalign data critiques`); `model.facts=true` makes the model read
        each row's facts (meta.facts or the Shapes scene) before the prompt (Fact-RLHF).
        `vlalign rm distill --config ... teacher=DIR` distils a trained reward model into a smaller
        student backbone (regressing the teacher's scores).
        """
        items = list(overrides or [])
        if items and items[0] == "distill":
            _train_scalar("distill", config, items[1:])
        else:
            _train_scalar("reward", config, items)

    @app.command("cost-model")
    def cost_model(config: Path = CONFIG_OPTION, overrides: list[str] = OVERRIDES_ARG) -> None:
        """Train a Safe RLHF cost model on safety-labelled pairs (cost > 0 means unsafe)."""
        _train_scalar("cost", config, list(overrides or []))

    @app.command("clip-train")
    def clip_train(
        data: Path = DATA_OPTION,
        out: Path = OUT_OPTION,
        config: Path = CONFIG_OPTION,
        overrides: list[str] = OVERRIDES_ARG,
    ) -> None:
        """Train a small CLIP on Shapes (faithful captions vs hallucinated hard negatives) for the CLIP reward."""
        offline_by_default()
        from vlalign.trainers.clip_train import ClipTrainConfig, train_clip

        flags = [f"{k}={v}" for k, v in (("data", data), ("output_dir", out)) if v is not None]
        cfg = resolve_config(ClipTrainConfig, config, [*(overrides or []), *flags])  # flags win
        result = _guarded(lambda: train_clip(cfg))
        typer.echo(f"held-out pair accuracy {result['pair_accuracy']:.3f} on {result['n_pairs']} pairs "
                   f"({', '.join(f'{k} {v:.2f}' for k, v in result['by_error'].items())}); model in {result['model_dir']}")

    @app.command("label")
    def label(config: Path = CONFIG_OPTION, overrides: list[str] = OVERRIDES_ARG) -> None:
        """RLAIF data: sample K answers per prompt, score them with any reward source, write preference pairs."""
        offline_by_default()
        from vlalign.rewards.label import LabelConfig, run_label

        cfg = resolve_config(LabelConfig, config, overrides)
        summary = _guarded(lambda: run_label(cfg))
        typer.echo(json.dumps({k: summary[k] for k in ("prompts", "samples", "pairs", "file")}))
