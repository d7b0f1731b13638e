"""The shared pool of `vlalign experiment beyond-control`: K answers per training prompt (captions, and
``pool.n_yes_no`` yes/no questions when set) sampled
once from the SFT model and scored once by the experiment's score-only feedback. The control (RFT: SFT on
each prompt's best answer), offline DPO (best vs worst) and MM-DPO (the same pairs, β from the score
margin) all train on it, so they differ only in how they use the same labels.

The pool also measures its labels: the share that differ from the exact judge (``shapes_errors``) and the
share of pairs the exact judge orders the same way — what a noisy judge costs, in numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from vlalign.config import BaseConfig
from vlalign.data.collate import CollateConfig
from vlalign.data.records import PromptRecord
from vlalign.evaluation.evaluate import read_records
from vlalign.experiments.base import Base, write_jsonl
from vlalign.models.load import ModelConfig, load_model
from vlalign.rewards import build_source
from vlalign.rewards.base import Sample
from vlalign.rollout.config import RolloutConfig
from vlalign.trainers.iterative_dpo import group_pairs, sample_scored, write_samples


class PoolConfig(BaseConfig):
    """The shared pool of the offline methods: K answers per training caption prompt from the SFT model."""

    n_prompts: int = Field(..., ge=1, description="training caption prompts (also the online methods' prompts)")
    n_yes_no: int = Field(0, ge=0, description="training yes/no questions added to the prompts, spread among the "
                          "captions and scored by the same feedback: every method then learns the yes/no task too")  # fmt: skip
    samples_per_prompt: int = Field(..., ge=2, description="K answers per prompt (best vs worst needs K ≥ 2)")
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(40, ge=1)
    batch_size: int = Field(32, ge=1, description="prompts per generate call")

    @property
    def prompts(self) -> int:
        """Every prompt of the pool (and of the online methods): captions + yes/no questions."""
        return self.n_prompts + self.n_yes_no


def best_of_k(texts: list[str], scores: list[float]) -> int | None:
    """Index of the best-scored non-empty answer (the first of equals), None when every answer is empty."""
    keep = [i for i, t in enumerate(texts) if t.strip()]
    return max(keep, key=lambda i: (scores[i], -i)) if keep else None


@dataclass
class Pool:
    """The scored pool and what the offline methods train on."""

    rft_rows: list[PromptRecord]  # SFT rows: each prompt with its best answer as the target
    rft_file: Path
    pairs: list[Any]  # best vs worst of K, ``margin`` = score gap
    pair_file: Path
    info: dict[str, Any]
    rm_pairs: list[Any]  # every pair of differently scored answers of a prompt: what a reward model learns from
    rm_pair_file: Path


def build_pool(cfg: Any, base: Base, pool_prompts: Path, out: Path, log: Callable[[str], None]) -> Pool:
    """Sample K answers per pool prompt from the SFT model, score each with ``feedback``, and derive the
    RFT rows and the best-vs-worst pairs; also measures the labels against the exact judge (noise)."""
    folder = out / "pool"
    t0 = time.perf_counter()
    prompts = read_records(pool_prompts)
    loaded = load_model(ModelConfig(name_or_path=str(base.sft_model)))
    p = cfg.pool
    rollout = RolloutConfig(num_samples=p.samples_per_prompt, max_new_tokens=p.max_new_tokens, temperature=p.temperature)
    source = build_source(cfg.feedback)
    groups = sample_scored(loaded.model, loaded.processor, prompts, rollout, source, CollateConfig(max_length=160),
                           (cfg.seed, "beyond_pool"), p.batch_size)  # fmt: skip
    del loaded
    rft, pairs, rm_pairs, no_pair = [], [], [], 0
    for g in groups:
        best = best_of_k(g.texts, g.scores)
        if best is not None:
            rec = g.record
            rft.append(PromptRecord(f"{rec.id}_best", list(rec.images), rec.prompt, g.texts[best].strip(), dict(rec.meta)))
        got, why = group_pairs(g, "best_worst", 0.0, cfg.feedback.name)
        pairs += got
        no_pair += why is not None
        rm_pairs += group_pairs(g, "all_pairs", 0.0, cfg.feedback.name)[0]
    # the exact judge with the feedback's omission weight: what a noise-free score would have been
    exact = build_source({"name": "shapes_errors", "kwargs": {"omission_weight": cfg.feedback.kwargs.get("omission_weight", 1.0)}})
    samples = [Sample(list(g.record.images), g.record.prompt, t, dict(g.record.meta)) for g in groups for t in g.texts]
    true = exact.score(samples).rewards.tolist()
    given = [s for g in groups for s in g.scores]
    true_of = {(g.record.id, t.strip()): s for g, ts in zip(groups, _chunks(true, p.samples_per_prompt)) for t, s in zip(g.texts, ts)}
    agree = [true_of[(pr.meta["source_id"], pr.chosen)] > true_of[(pr.meta["source_id"], pr.rejected)] for pr in pairs]
    info = {"prompts": len(groups), "yes_no_prompts": sum(g.record.meta.get("task") == "yes_no" for g in groups), "answers": len(given), "score_mean": sum(given) / len(given),
            "best_of_k_mean": sum(max(g.scores) for g in groups) / len(groups), "rft_rows": len(rft), "pairs": len(pairs),
            "rm_pairs": len(rm_pairs), "prompts_without_pair": no_pair, "labels_differing_from_exact": sum(a != b for a, b in zip(given, true)) / len(given),
            "pairs_right_by_exact_judge": sum(agree) / len(agree) if agree else float("nan"),
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    if not pairs:
        raise RuntimeError("the pool gave no pair: every prompt's K answers scored the same; raise pool.samples_per_prompt "
                           "or pool.temperature")  # fmt: skip
    write_samples(groups, folder / "samples.jsonl")
    rft_file, pair_file = write_jsonl(rft, folder / "rft.jsonl"), write_jsonl(pairs, folder / "pairs.jsonl")
    rm_file = write_jsonl(rm_pairs, folder / "rm_pairs.jsonl")
    (folder / "summary.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"[beyond-control] pool: {info}")
    return Pool(rft, rft_file, pairs, pair_file, info, rm_pairs, rm_file)


def _chunks(xs: list[float], k: int) -> list[list[float]]:
    return [xs[i : i + k] for i in range(0, len(xs), k)]
