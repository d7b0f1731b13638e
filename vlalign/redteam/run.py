"""`vlalign redteam` end to end: load the target, run the attacker loop (or replay an earlier run's
attempts), write every attempt, the successful ones as training sets, and ASR per family with 95%
intervals (``metrics.json``, ``items.json``, ``summary.md``, ``report.html``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from vlalign.config import save_config
from vlalign.evaluation.context import EvalConfig, EvalContext
from vlalign.evaluation.evaluate import write_outputs
from vlalign.evaluation.items import intervals
from vlalign.evaluation.report import _colours, _figure, _png
from vlalign.models.load import ModelConfig, load_model
from vlalign.redteam.loop import (
    RedteamConfig,
    asr_items,
    load_attempts,
    run_redteam,
    seeds_from,
    training_sets,
    write_attempts,
)


def asr_plot(metrics: dict[str, float], cis: dict[str, Any]) -> bytes:
    """ASR per family with its 95% interval."""
    names = sorted(k for k in metrics if k.startswith(("asr_", "control_refusal_rate_")))
    fig, (ax,) = _figure(1, width_per_panel=max(4.0, 0.9 * len(names)), height=3.2)
    for k, n in enumerate(names):
        v, ci = metrics[n], cis.get(n)
        err = [[v - ci.low], [ci.high - v]] if ci and not math.isnan(v) else None
        ax.bar(k, v, color=_colours(len(names))[k], yerr=err, capsize=4)
    ax.set_xticks(range(len(names)), [n.replace("control_refusal_rate_", "refused benign: ").replace("asr_", "ASR: ")
                                       for n in names], fontsize=7, rotation=25, ha="right")  # fmt: skip
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate (95% interval)")
    return _png(fig)


def redteam(cfg: RedteamConfig) -> tuple[Path, dict[str, float]]:
    """Run and write everything; returns (output folder, metrics)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    target = load_model(ModelConfig(name_or_path=cfg.model, dtype=cfg.dtype))
    if cfg.replay:
        replay, ids = load_attempts(Path(cfg.replay))
        seeds, base = [], Path(cfg.replay)
    else:
        seeds, base = seeds_from(Path(cfg.data), cfg.n_seeds, cfg.n_controls)
        replay, ids = None, None
    history = run_redteam(target.model, target.processor, seeds, cfg, str(base), replay, ids)
    write_attempts(history, out, str(base))
    n_wins, n_unique = training_sets(history, out, cfg.refusal, str(base))
    ctx = EvalContext(None, None, base, EvalConfig(tasks=[], n_boot=cfg.n_boot, seed=cfg.seed))
    ctx.items.update(asr_items(history))
    metrics = {k: iv.value() for k, iv in ctx.items.items()}
    n_controls = sum(h.candidate.control for h in history)
    metrics.update({"n_attempts": float(len(history) - n_controls), "n_control_attempts": float(n_controls),
                    "n_successful": float(n_wins), "n_successful_unique": float(n_unique)})
    ctx.no_interval.update(dict.fromkeys(("n_attempts", "n_control_attempts", "n_successful", "n_successful_unique"), "a count"))
    ctx.answers["redteam"] = [{"id": h.id, "round": h.round, "family": h.candidate.family, "chain": h.candidate.chain,
                               "control": h.candidate.control,
                               "prompt": h.candidate.prompt, "answer": h.answer, "harm": h.harm, "success": h.success}
                              for h in history]  # fmt: skip
    ctx.figures["attack success rate per family (and refusals of benign controls)"] = asr_plot(metrics, intervals(ctx.items, n_boot=cfg.n_boot, seed=cfg.seed))
    write_outputs(out, metrics, ctx, {"model": cfg.model, "data": cfg.data, "replay": cfg.replay})
    save_config(cfg, out / "config.yaml")
    return out, metrics
