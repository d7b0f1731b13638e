"""The one evaluator of the experiments: load a trained model, run the configured eval tasks, keep the
per-item values behind every rate, write the eval folder (``metrics.json``, ``items.json``, answers).

WHY the per-item values travel with the metrics: every rate is reported with its 95% bootstrap
interval over the evaluated items, and two models are compared only by a paired bootstrap over the
same items (:mod:`vlalign.experiments.uncertainty`). Both need each model's items, so an evaluation
returns them beside the numbers instead of leaving them only on disk.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlalign.evaluation.evaluate import EvalConfig, EvalContext, evaluate, write_outputs
from vlalign.evaluation.items import ItemValues, intervals, load_items
from vlalign.models.load import ModelConfig, load_model

# (model, processor, eval context) -> extra metrics; it may add per-item values to ctx.items as well
Extra = Callable[[Any, Any, EvalContext], dict[str, float]]


@dataclass
class Evaluation:
    """A model's metrics, the per-item values of those that are statistics of items, and their 95%
    bootstrap intervals (``{metric: Interval.to_dict()}``)."""

    metrics: dict[str, float]
    items: dict[str, ItemValues] = field(default_factory=dict)
    intervals: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, metrics: dict[str, float], items: Mapping[str, ItemValues], seed: int) -> Evaluation:
        ivs = {k: v.to_dict() for k, v in intervals(items, seed=seed).items()}
        return cls(metrics, dict(items), ivs)

    @classmethod
    def load(cls, folder: Path, metrics: dict[str, float], seed: int) -> Evaluation:
        """An evaluation written earlier (a resumed experiment): its metrics and its ``items.json``."""
        return cls.of(metrics, load_items(folder), seed)


def device() -> str:
    """Where experiments put models outside the trainers (sampling, scoring, eval): the GPU if any."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_model(model_dir: Path, data_dir: Path, out: Path, eval_cfg: EvalConfig, ref_dir: Path | None = None,
                   model_kwargs: Mapping[str, Any] | None = None, extra: Extra | None = None) -> Evaluation:  # fmt: skip
    """Every configured eval task on ``model_dir`` (plus ``extra``'s metrics), written to ``out``.

    ``ref_dir``: the preference task scores the implicit reward against that reference (the SFT model).
    ``model_kwargs``: ``ModelConfig`` keys used to load (dtype, max_pixels ...; a trained LoRA model is
    loaded merged, so ``lora`` is dropped)."""
    kwargs = {k: v for k, v in (model_kwargs or {}).items() if k not in ("name_or_path", "lora", "freeze")}
    loaded = load_model(ModelConfig(name_or_path=str(model_dir), **kwargs))
    model = loaded.model.to(device())
    ref = load_model(ModelConfig(name_or_path=str(ref_dir), **kwargs)).model.to(device()) if ref_dir is not None else None
    metrics, ctx = evaluate(model, loaded.processor, data_dir, eval_cfg, ref_model=ref)
    if extra is not None:
        metrics.update(extra(model, loaded.processor, ctx))
    write_outputs(out, metrics, ctx, {"model": str(model_dir), "ref": None if ref_dir is None else str(ref_dir),
                                      "data": str(data_dir)})  # fmt: skip
    result = Evaluation.of(metrics, ctx.items, eval_cfg.seed)
    del loaded, model, ref, ctx
    gc.collect()
    return result
