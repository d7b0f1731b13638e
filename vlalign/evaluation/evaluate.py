"""Run every metric of a model on a Shapes data folder; write ``metrics.json`` and ``summary.md``.

What is measured (each one a registered *task*, so a config can pick a subset by name):

- ``chair``: greedy captions of the held-out scenes (``eval_captions.jsonl``) → CHAIR_i, CHAIR_s,
  object recall, the bias probe (how often the companion object is claimed on images that show the
  trigger but not the companion), mean answer length and distinct-1/2.
- ``pope``: greedy yes/no answers to ``pope_{random,popular,adversarial}.jsonl`` → accuracy,
  precision, recall, F1, yes-ratio per split and over all probes.
- ``preference``: held-out pairs (``preference_eval.jsonl``). With a reference model the implicit
  reward β·(log π − log π_ref) must rank chosen above rejected (``preference_accuracy``); without
  one the policy's own log-prob margin is used and the metric is named
  ``preference_accuracy_policy_logp`` so the two are never confused.
- ``safety`` (only when ``safety_prompts_eval.jsonl`` exists): harmful-compliance rate on harmful
  prompts and refusal rate on benign ones, with the Shapes refusal verifier.

Every metric is a flat ``name → number`` entry so that reports and before/after tables need no
special cases. The generated answers go to ``answers.jsonl`` for inspection.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from vlalign.config import BaseConfig
from vlalign.data.records import Record, from_dict
from vlalign.evaluation.generate import GenerationConfig, generate_answers
from vlalign.evaluation.items import (
    ITEMS_FILE,
    ItemValues,
    chair_items,
    intervals,
    pope_items,
    rate_items,
    save_items,
)
from vlalign.registry import Registry

POPE_SPLITS = ("random", "popular", "adversarial")


class EvalConfig(BaseConfig):
    """`vlalign eval` settings; ``model``/``data``/``out``/``ref`` may also come from the command line."""

    model: str | None = Field(None, description="policy model directory (or hub id)")
    data: str | None = Field(None, description="Shapes data folder (made by `vlalign data shapes`)")
    out: str | None = Field(None, description="output folder for metrics.json, summary.md, answers.jsonl")
    ref: str | None = Field(None, description="reference model for preference accuracy (implicit reward)")
    tasks: list[str] = Field(default_factory=lambda: ["chair", "pope", "preference", "safety"])
    limit: int | None = Field(None, ge=1, description="use only the first N rows of each eval file")
    beta: float = Field(0.1, gt=0, description="β of the implicit reward β·(log π − log π_ref)")
    pref_batch_size: int = Field(16, ge=1, description="pairs per forward in the preference task")
    max_length: int = Field(256, ge=8, description="prompt + image tokens + response, preference task")
    dtype: str = Field("float32", description="model dtype (CPUs here have no fast bf16)")
    seed: int = 0
    generation: GenerationConfig = Field(default_factory=GenerationConfig)


class EvalDataError(ValueError):
    """The data folder lacks a file a task needs, or a row is unreadable; the message says which."""


@dataclass
class EvalContext:
    """What a task needs: the policy (+ optional reference), the data folder and the settings."""

    model: Any
    processor: Any
    data_dir: Path
    cfg: EvalConfig
    ref_model: Any = None
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> rows for answers.jsonl
    items: dict[str, ItemValues] = field(default_factory=dict)  # metric -> per-item values (for its CI)

    def read(self, name: str) -> list[Record]:
        return read_records(self.data_dir / name, self.cfg.limit)

    def generate(self, records: list[Record]) -> list[str]:
        return generate_answers(self.model, self.processor, records, self.cfg.generation, str(self.data_dir), self.cfg.seed)


# name -> task(ctx) -> {metric: value}; a task returns {} when its data file is absent and optional.
EVAL_TASKS: Registry[Callable[[EvalContext], dict[str, float]]] = Registry("eval task")


def read_records(path: Path, limit: int | None = None) -> list[Record]:
    """Canonical JSONL → records; a broken line fails with file and line number."""
    if not path.is_file():
        raise EvalDataError(
            f"{path} does not exist; evaluation needs a Shapes data folder "
            "(make one with `vlalign data shapes --out DIR`) or drop the task from `tasks`"
        )
    out: list[Record] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError) as exc:
                raise EvalDataError(f"{path}, line {line_no}: not a canonical record ({exc}); regenerate the file") from None
            if limit is not None and len(out) >= limit:
                break
    return out


def _scene(rec: Record, path: str) -> dict[str, Any]:
    scene = rec.meta.get("scene")
    if not isinstance(scene, dict):
        raise EvalDataError(f"{path}: row id {rec.id!r} has no meta.scene (the ground truth); regenerate the data")
    return scene


def _bias_objects(data_dir: Path) -> tuple[tuple[str, str], tuple[str, str]] | None:
    """(trigger, companion) of the training bias, from manifest.json (None if absent)."""
    p = data_dir / "manifest.json"
    if not p.is_file():
        return None
    bias = json.loads(p.read_text()).get("bias") or {}
    try:
        t, c = bias["trigger"].split(), bias["companion"].split()
    except (KeyError, AttributeError):
        return None
    return (t[0], t[1]), (c[0], c[1])


@EVAL_TASKS.register("chair")
def chair_task(ctx: EvalContext) -> dict[str, float]:
    from vlalign.data.shapes.scene import objects_of
    from vlalign.evaluation.hallucination import caption_objects, chair
    from vlalign.evaluation.text_metrics import distinct_n, mean_length

    recs = ctx.read("eval_captions.jsonl")
    scenes = [_scene(r, "eval_captions.jsonl") for r in recs]
    texts = ctx.generate(recs)
    res = chair(texts, scenes)
    said = [caption_objects(t) for t in texts]
    truth = [set(objects_of(sc)) for sc in scenes]
    ctx.items.update(chair_items(
        [r.id for r in recs], [len(a - t) for a, t in zip(said, truth)], [len(a) for a in said],
        [len(t) for t in truth], [len(a & t) for a, t in zip(said, truth)]))
    out = {
        "chair_i": res.chair_i,
        "chair_s": res.chair_s,
        "object_recall": res.recall,
        "n_captions": float(res.n_captions),
        "answer_length": mean_length(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }
    bias = _bias_objects(ctx.data_dir)
    if bias is not None:
        trigger, companion = bias
        probe = [t for t, s in zip(texts, scenes) if trigger in objects_of(s) and companion not in objects_of(s)]
        # Share of trigger-without-companion images whose caption claims the companion (the learned bias).
        out["bias_rate"] = sum(companion in caption_objects(t) for t in probe) / len(probe) if probe else float("nan")
        probe_ids = [r.id for r, s in zip(recs, scenes) if trigger in objects_of(s) and companion not in objects_of(s)]
        ctx.items["bias_rate"] = rate_items(probe_ids, [companion in caption_objects(t) for t in probe])
    ctx.answers["chair"] = [
        {"id": r.id, "prompt": r.prompt, "answer": t, "truth": r.reference} for r, t in zip(recs, texts)
    ]
    return out


@EVAL_TASKS.register("pope")
def pope_task(ctx: EvalContext) -> dict[str, float]:
    from vlalign.evaluation.hallucination import parse_yes_no, pope_by_split

    recs: list[Record] = []
    for split in POPE_SPLITS:
        recs += ctx.read(f"pope_{split}.jsonl")
    labels = [str(r.meta.get("label")) for r in recs]
    splits = [str(r.meta.get("pope_split")) for r in recs]
    answers = ctx.generate(recs)
    by_split = pope_by_split(answers, labels, splits)
    out: dict[str, float] = {}
    for split, m in by_split.items():
        prefix = "pope" if split == "all" else f"pope_{split}"
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio", "unparsed_ratio"):
            out[f"{prefix}_{key}"] = m[key]
    preds = [parse_yes_no(a) for a in answers]
    for split in [*sorted(set(splits)), "all"]:
        idx = [i for i, s in enumerate(splits) if split in ("all", s)]
        ctx.items.update(pope_items([recs[i].id for i in idx], [preds[i] for i in idx], [labels[i] for i in idx],
                                    "pope" if split == "all" else f"pope_{split}"))
    ctx.answers["pope"] = [
        {"id": r.id, "prompt": r.prompt, "answer": a, "label": lab} for r, a, lab in zip(recs, answers, labels)
    ]
    return out


def sequence_logps(model: Any, batch: Any) -> Any:
    """Summed response log-probs per row of a collated batch: (N,)."""
    import torch

    from vlalign.models.logprobs import response_logprobs

    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.inputs.items()}
    with torch.no_grad():
        logps, mask = response_logprobs(model, inputs, batch.response_mask.to(device))  # (N, T), (N, T)
    return (logps * mask).sum(-1).cpu()  # (N,) on CPU, whatever device the model is on


def implicit_reward_margins(
    policy_c: Any, policy_r: Any, ref_c: Any | None, ref_r: Any | None, beta: float
) -> Any:
    """β·[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))]; without a reference, log π(c) − log π(r).

    All arguments are (B,) summed log-probs. Example: π(c)=−2, π_ref(c)=−3, π(r)=−4, π_ref(r)=−3,
    β=0.1 → 0.1·((−2+3) − (−4+3)) = 0.1·(1 + 1) = 0.2.
    """
    if ref_c is None or ref_r is None:
        return policy_c - policy_r
    return beta * ((policy_c - ref_c) - (policy_r - ref_r))


@EVAL_TASKS.register("preference")
def preference_task(ctx: EvalContext) -> dict[str, float]:
    import torch

    from vlalign.data.collate import CollateConfig, EncodedDataset

    recs = ctx.read("preference_eval.jsonl")
    ds = EncodedDataset(recs, ctx.processor, CollateConfig(ctx.cfg.max_length, ctx.cfg.generation.max_pixels, str(ctx.data_dir)), "pair")
    margins = []
    for start in range(0, len(ds), ctx.cfg.pref_batch_size):
        batch = ds.batch(range(start, min(len(ds), start + ctx.cfg.pref_batch_size)))
        b = batch.num_records
        pol = sequence_logps(ctx.model, batch)  # (2B,) chosen rows first, then rejected
        ref = sequence_logps(ctx.ref_model, batch) if ctx.ref_model is not None else None
        margins.append(
            implicit_reward_margins(pol[:b], pol[b:], None if ref is None else ref[:b], None if ref is None else ref[b:], ctx.cfg.beta)
        )
    m = torch.cat(margins) if margins else torch.zeros(0)  # (N,)
    name = "preference_accuracy" if ctx.ref_model is not None else "preference_accuracy_policy_logp"
    margin_name = "reward_margin" if ctx.ref_model is not None else "logp_margin_policy"
    # A tie (margin exactly 0, e.g. policy == reference) counts as half right, as in TRL's reward accuracy.
    hits = (m > 0).float() + 0.5 * (m == 0).float()  # (N,)
    acc = hits.mean().item() if len(m) else float("nan")
    ctx.items[name] = rate_items([r.id for r in recs], hits.tolist())
    return {name: acc, margin_name: m.mean().item() if len(m) else float("nan")}


def _refusal_check() -> Callable[[str], bool]:
    from vlalign.data.shapes.safety import is_refusal  # the verifier the Shapes reward rules use

    return is_refusal


@EVAL_TASKS.register("safety")
def safety_task(ctx: EvalContext) -> dict[str, float]:
    path = ctx.data_dir / "safety_prompts_eval.jsonl"
    if not path.is_file():
        return {}  # optional: older or safety-free data folders have no safety split
    recs = ctx.read("safety_prompts_eval.jsonl")
    harmful = [bool((r.meta.get("safety") or {}).get("harmful")) for r in recs]
    answers = ctx.generate(recs)
    refused = [_refusal_check()(a) for a in answers]
    n_h = sum(harmful)
    ctx.items["harmful_compliance_rate"] = rate_items(
        [r.id for r, h in zip(recs, harmful) if h], [not f for h, f in zip(harmful, refused) if h])
    ctx.items["benign_refusal_rate"] = rate_items(
        [r.id for r, h in zip(recs, harmful) if not h], [f for h, f in zip(harmful, refused) if not h])
    n_b = len(recs) - n_h
    ctx.answers["safety"] = [
        {"id": r.id, "prompt": r.prompt, "answer": a, "harmful": h, "refused": f}
        for r, a, h, f in zip(recs, answers, harmful, refused)
    ]
    return {
        # harmful prompts the model did NOT refuse / benign prompts it DID refuse
        "harmful_compliance_rate": sum(h and not f for h, f in zip(harmful, refused)) / n_h if n_h else float("nan"),
        "benign_refusal_rate": sum((not h) and f for h, f in zip(harmful, refused)) / n_b if n_b else float("nan"),
    }


def evaluate(model: Any, processor: Any, data_dir: str | Path, cfg: EvalConfig, ref_model: Any = None) -> tuple[dict[str, float], EvalContext]:
    """Run the configured tasks; return (flat metrics, context holding the generated answers)."""
    for name in cfg.tasks:
        EVAL_TASKS.get(name)  # unknown task → did-you-mean error before any work
    ctx = EvalContext(model, processor, Path(data_dir), cfg, ref_model)
    metrics: dict[str, float] = {}
    for name in cfg.tasks:
        t0 = time.perf_counter()
        metrics.update(EVAL_TASKS.get(name)(ctx))
        metrics[f"time_{name}_s"] = round(time.perf_counter() - t0, 2)
    return metrics, ctx


HEADLINE = [
    "chair_i", "chair_s", "object_recall", "bias_rate", "pope_f1", "pope_accuracy", "pope_yes_ratio",
    "pope_adversarial_f1", "preference_accuracy", "preference_accuracy_policy_logp", "answer_length",
    "distinct_2", "harmful_compliance_rate", "benign_refusal_rate",
]  # fmt: skip


def summary_markdown(metrics: dict[str, float], title: str, notes: list[str] | None = None,
                     cis: dict[str, dict[str, float]] | None = None) -> str:
    """Readable summary: headline metrics first, then every metric (with its 95% CI over items where
    the metric has per-item values), then notes."""
    from vlalign.evaluation.report import fmt_value, markdown_table

    cis = cis or {}

    def row(k: str) -> list[str]:
        ci = cis.get(k)
        return [k, fmt_value(metrics[k]), f"[{fmt_value(ci['low'])}, {fmt_value(ci['high'])}]" if ci else ""]

    header = ["metric", "value", "95% CI over items"]
    head = [row(k) for k in HEADLINE if k in metrics]
    rest = [row(k) for k in sorted(metrics) if k not in HEADLINE]
    lines = [f"# {title}", "", "## Headline", "", markdown_table([header, *head]), ""]
    lines += ["## All metrics", "", markdown_table([header, *rest]), ""]
    for n in notes or []:
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: str | Path, metrics: dict[str, float], ctx: EvalContext, info: dict[str, Any]) -> Path:
    """metrics.json (metrics + what was evaluated), summary.md and answers.jsonl into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cis = {k: v.to_dict() for k, v in intervals(ctx.items, seed=ctx.cfg.seed).items()}
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "intervals": cis, **info}, indent=2) + "\n")
    save_items(ctx.items, out / ITEMS_FILE)
    notes = []
    if "preference_accuracy_policy_logp" in metrics:
        notes.append("no --ref given: preference accuracy uses the policy's own log-prob margin, not the implicit reward")
    (out / "summary.md").write_text(summary_markdown(metrics, f"Evaluation of {info.get('model', 'model')}", notes, cis))
    with (out / "answers.jsonl").open("w", encoding="utf-8") as f:
        for task, rows in ctx.answers.items():
            for row in rows:
                f.write(json.dumps({"task": task, **row}) + "\n")
    return out
