"""The Python entry points that have no single home below: ``evaluate`` a saved model the way
``vlalign eval`` does, returning its numbers, and ``load_recipe``. Everything else the package exports
(``from vlalign import DPOConfig, train_dpo, ...``) is the library's own function or class, re-exported
lazily by :mod:`vlalign`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlalign.evaluation.evaluate import EvalConfig
from vlalign.experiments.evaluator import Evaluation, evaluate_model
from vlalign.recipes import load_recipe
from vlalign.rollout.collect import seeded

__all__ = ["Evaluation", "evaluate", "load_recipe"]


def evaluate(model: str | Path, data: str | Path, out: str | Path, config: EvalConfig | None = None, *,
             ref: str | Path | None = None, **settings: Any) -> Evaluation:  # fmt: skip
    """``vlalign eval --model MODEL --data DATA --out OUT [--ref REF]`` as a function.

    ``config`` (default: :class:`EvalConfig`'s defaults) with ``settings`` on top (``tasks=["chair"]``,
    ``limit=50`` ...). Writes ``metrics.json``, ``items.json``, ``summary.md`` and ``answers.jsonl`` into
    ``out`` and returns the metrics, the per-item values and each rate's 95% bootstrap interval."""
    cfg = EvalConfig.model_validate({**(config or EvalConfig()).model_dump(), **settings})
    with seeded(cfg.seed):  # its own RNG stream; the caller's RNG is left as it was
        return evaluate_model(Path(model), Path(data), Path(out), cfg, None if ref is None else Path(ref), {"dtype": cfg.dtype})
