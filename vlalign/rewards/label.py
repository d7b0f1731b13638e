"""`vlalign label`: RLAIF preference data from a policy's own samples, scored by any reward source.

Sample K responses per prompt (the shared rollout sampler: images preprocessed once per prompt, one
batched ``generate``), score every response with the configured source (CLIP, judge, rules, a
learned RM, a composite), and keep pairs whose score gap exceeds ``min_margin``:

- ``best_worst`` — one pair per prompt: highest vs lowest score (RLAIF-V style);
- ``all_pairs``  — every pair (i, j) with score_i − score_j > min_margin (more data, more correlated).

Output: ``output_dir/preference.jsonl`` of canonical :class:`PreferenceRecord` rows (images as paths
relative to the file, ``margin`` = score gap, scores and the source name in ``meta``), ready for
``vlalign dpo``; plus ``label_summary.json`` saying how many prompts produced no pair and why.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from vlalign.config import BaseConfig, save_config
from vlalign.models.load import ModelConfig
from vlalign.rewards.composite import RewardSourceConfig
from vlalign.rollout.config import RolloutConfig


class LabelConfig(BaseConfig):
    """Where prompts come from, which policy samples, which source scores, how pairs are formed."""

    output_dir: str
    seed: int = 0
    policy: ModelConfig
    prompts: str = Field(..., description="prompt records (any supported format); their meta reaches the reward")
    format: str | None = Field(None, description="data format of `prompts`; None = detect")
    limit: int | None = Field(None, ge=1, description="first N prompts only")
    reward: RewardSourceConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="K = rollout.num_samples")
    pairing: Literal["best_worst", "all_pairs"] = "best_worst"
    min_margin: float = Field(0.0, ge=0, description="keep a pair only if score gap > min_margin")
    batch_size: int = Field(8, ge=1, description="prompts per generate call")
    max_length: int = Field(512, ge=8, description="prompt + image tokens budget (prompts are never cut)")


def select_pairs(scores: list[float], mode: str, min_margin: float) -> list[tuple[int, int]]:
    """(winner, loser) index pairs of one prompt's K scores; ties and small gaps give no pair."""
    if len(scores) < 2:
        return []
    if mode == "best_worst":
        best = max(range(len(scores)), key=lambda i: scores[i])
        worst = min(range(len(scores)), key=lambda i: scores[i])
        return [(best, worst)] if scores[best] - scores[worst] > min_margin else []
    if mode == "all_pairs":
        out = []
        for i, j in combinations(range(len(scores)), 2):
            hi, lo = (i, j) if scores[i] >= scores[j] else (j, i)
            if scores[hi] - scores[lo] > min_margin:
                out.append((hi, lo))
        return out
    raise ValueError(f"pairing must be 'best_worst' or 'all_pairs', got {mode!r}")


def _pairs_of_group(rec: Any, texts: list[str], scores: list[float], cfg: LabelConfig, source: str) -> tuple[list[Any], str | None]:
    """Preference records of one prompt, or (no records, reason)."""
    from vlalign.data.records import PreferenceRecord

    keep = [i for i, t in enumerate(texts) if t.strip()]
    if len(keep) < 2:
        return [], "fewer than 2 non-empty responses"
    # identical answers are one answer: keep its first copy only, so no pair compares a text with itself
    uniq = [i for n, i in enumerate(keep) if texts[i].strip() not in {texts[j].strip() for j in keep[:n]}]
    if len(uniq) < 2:
        return [], "all responses identical"
    sub = [scores[i] for i in uniq]
    pairs = select_pairs(sub, cfg.pairing, cfg.min_margin)
    if not pairs:
        return [], "no score gap above min_margin"
    out = []
    for w, l in pairs:
        i, j = uniq[w], uniq[l]
        meta = {**(rec.meta or {}), "source_id": rec.id, "reward_source": source,
                "chosen_score": scores[i], "rejected_score": scores[j], "labeler": "vlalign label"}  # fmt: skip
        out.append(PreferenceRecord(f"{rec.id}_rlaif_{i}_{j}", list(rec.images), rec.prompt, texts[i].strip(),
                                    texts[j].strip(), margin=scores[i] - scores[j], meta=meta))  # fmt: skip
    return out, None


def run_label(cfg: LabelConfig) -> dict[str, Any]:
    """Sample, score, pair and write; returns the summary (also written to label_summary.json). Sampling
    draws from its own stream ``cfg.seed``: the caller's torch RNG is left as it was."""
    from vlalign.rollout.collect import seeded

    with seeded(cfg.seed):
        return _label(cfg)


def _label(cfg: LabelConfig) -> dict[str, Any]:
    from vlalign.data.collate import CollateConfig
    from vlalign.data.io import write_records
    from vlalign.data.records import PromptRecord
    from vlalign.data.validate import load_records
    from vlalign.models.load import load_model
    from vlalign.rewards.composite import build_source
    from vlalign.rollout.collect import sample_experience, score_with

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    records = [r for r in load_records(cfg.prompts, format=cfg.format).records if isinstance(r, PromptRecord)]
    records = records[: cfg.limit]
    if not records:
        raise ValueError(f"{cfg.prompts}: no prompt records (a prompt file holds rows with `prompt` and no "
                         "`chosen`/`rejected`); fix: point `prompts` at e.g. Shapes eval_captions.jsonl")
    source = build_source(cfg.reward)
    loaded = load_model(cfg.policy)
    collate_cfg = CollateConfig(max_length=cfg.max_length, max_pixels=cfg.policy.max_pixels)
    k = cfg.rollout.num_samples
    pairs, reasons, all_scores = [], {}, []
    for start in range(0, len(records), cfg.batch_size):
        chunk = records[start:start + cfg.batch_size]
        exp = sample_experience(loaded.model, loaded.processor, chunk, cfg.rollout, collate_cfg)
        scores, _ = score_with(source, exp, "reward")  # (B·K,) grouped by prompt
        all_scores += scores.tolist()
        for g, rec in enumerate(chunk):
            got, why = _pairs_of_group(rec, exp.texts[g * k:(g + 1) * k], scores[g * k:(g + 1) * k].tolist(),
                                       cfg, cfg.reward.name)  # fmt: skip
            pairs += got
            if why:
                reasons.setdefault(why, []).append(rec.id)
    path = write_records(pairs, out, "preference.jsonl")
    summary = {
        "prompts": len(records), "samples": len(all_scores), "pairs": len(pairs), "file": str(path),
        "prompts_without_pair": {why: {"count": len(ids), "ids": ids[:20]} for why, ids in reasons.items()},
        "score_mean": float(torch.tensor(all_scores).mean()) if all_scores else 0.0,
        "score_std": float(torch.tensor(all_scores).std(unbiased=False)) if all_scores else 0.0,
        "mean_margin": float(sum(p.margin for p in pairs) / len(pairs)) if pairs else 0.0,
    }  # fmt: skip
    (out / "label_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
