"""The registered evaluation tasks. ``chair``, ``pope`` and ``safety`` read a Shapes data folder or, when
the data is a benchmark in its official layout, that benchmark (COCO captions, POPE files, SPA-VL /
BeaverTails-V / MM-SafetyBench); ``amber`` and ``mmhal`` read their benchmarks; ``preference`` reads
Shapes' held-out pairs.

Shapes tasks (one data folder made by ``vlalign data shapes``):

- ``chair``: greedy captions of the held-out scenes (``eval_captions.jsonl``) → CHAIR_i, CHAIR_s,
  object recall, the bias probe (how often the companion object is claimed on images that show the
  trigger but not the companion), mean answer length and distinct-1/2.
- ``pope``: greedy yes/no answers to ``pope_{random,popular,adversarial}.jsonl`` → accuracy,
  precision, recall, F1, yes-ratio per split and over all probes.
- ``preference``: held-out pairs (``preference_eval.jsonl``). With a reference model the implicit
  reward β·(log π − log π_ref) must rank chosen above rejected (``preference_accuracy``); without
  one the policy's own log-prob margin is used and the metric is named
  ``preference_accuracy_policy_logp`` so the two are never confused.
- ``safety`` (when ``safety_prompts_eval.jsonl`` exists): harmful-compliance rate on harmful prompts
  and refusal rate on benign ones, with the Shapes refusal verifier — for the requests whose harm is
  in the text (``harmful_compliance_rate``, ``benign_refusal_rate``) and, when
  ``safety_image_prompts_eval.jsonl`` exists, for those whose harm is only in the image (a hazard sign
  beside the shapes, the same text on a benign sign: ``image_harmful_compliance_rate``,
  ``image_benign_refusal_rate``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlalign.data.collate import CollateConfig, EncodedDataset
from vlalign.data.records import Record
from vlalign.data.shapes.safety import is_refusal
from vlalign.data.shapes.scene import objects_of
from vlalign.evaluation.benchmarks.amber import amber_task, is_amber_layout
from vlalign.evaluation.benchmarks.coco_chair import coco_chair_task, is_coco_folder
from vlalign.evaluation.benchmarks.mmhal import mmhal_task
from vlalign.evaluation.benchmarks.pope_official import is_pope_layout, pope_official_task
from vlalign.evaluation.benchmarks.safety_bench import detect_safety_layout, safety_bench_task
from vlalign.evaluation.context import EVAL_TASKS, EvalContext, EvalDataError
from vlalign.evaluation.hallucination import caption_objects, chair, parse_yes_no, pope_by_split
from vlalign.evaluation.items import chair_items, pope_items, rate_items
from vlalign.evaluation.text_metrics import distinct_n, mean_length, tokenize
from vlalign.models.logprobs import response_logprobs

POPE_SPLITS = ("random", "popular", "adversarial")
SAFETY_KINDS = {"safety_prompts_eval.jsonl": "", "safety_image_prompts_eval.jsonl": "image_"}


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
    if is_coco_folder(ctx.data_path()):
        return coco_chair_task(ctx, ctx.data_path())
    recs = ctx.read("eval_captions.jsonl")
    scenes = [_scene(r, "eval_captions.jsonl") for r in recs]
    texts = ctx.generate(recs)
    res = chair(texts, scenes)
    said = [caption_objects(t) for t in texts]
    truth = [set(objects_of(sc)) for sc in scenes]
    ids = [r.id for r in recs]
    ctx.items.update(chair_items(ids, [len(a - t) for a, t in zip(said, truth)], [len(a) for a in said],
                                 [len(t) for t in truth], [len(a & t) for a, t in zip(said, truth)]))
    ctx.items["answer_length"] = rate_items(ids, [len(tokenize(t)) for t in texts])
    out = {
        "chair_i": res.chair_i,
        "chair_s": res.chair_s,
        "object_recall": res.recall,
        "n_captions": float(res.n_captions),
        "answer_length": mean_length(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }
    ctx.no_interval.update({"n_captions": "a count", "distinct_1": "a corpus-level share of distinct n-grams, not a "
                            "mean over captions", "distinct_2": "a corpus-level share of distinct n-grams, not a mean over captions"})
    bias = _bias_objects(ctx.data_path())
    if bias is not None:
        trigger, companion = bias
        probe = [(r.id, t) for r, t, s in zip(recs, texts, scenes)
                 if trigger in objects_of(s) and companion not in objects_of(s)]  # fmt: skip
        # Share of trigger-without-companion images whose caption claims the companion (the learned bias).
        hits = [companion in caption_objects(t) for _, t in probe]
        out["bias_rate"] = sum(hits) / len(hits) if hits else float("nan")
        ctx.items["bias_rate"] = rate_items([i for i, _ in probe], hits)
    ctx.answers[ctx.task] = [{"id": r.id, "prompt": r.prompt, "answer": t, "truth": r.reference,
                              "hallucinated": sorted(" ".join(o) for o in s - tr)}
                             for r, t, s, tr in zip(recs, texts, said, truth)]  # fmt: skip
    return out


@EVAL_TASKS.register("pope")
def pope_task(ctx: EvalContext) -> dict[str, float]:
    if is_pope_layout(ctx.data_path()):
        return pope_official_task(ctx, ctx.data_path())
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
    ctx.answers[ctx.task] = [
        {"id": r.id, "prompt": r.prompt, "answer": a, "label": lab} for r, a, lab in zip(recs, answers, labels)
    ]
    return out


def sequence_logps(model: Any, batch: Any) -> Any:
    """Summed response log-probs per row of a collated batch: (N,)."""
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
    recs = ctx.read("preference_eval.jsonl")
    ds = EncodedDataset(recs, ctx.processor, CollateConfig(ctx.cfg.max_length, ctx.cfg.generation.max_pixels,
                                                           str(ctx.data_path())), "pair")
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
    ids = [r.id for r in recs]
    ctx.items[name] = rate_items(ids, hits.tolist())
    ctx.items[margin_name] = rate_items(ids, m.tolist())  # a mean over pairs too
    return {name: acc, margin_name: m.mean().item() if len(m) else float("nan")}


def _shapes_safety(ctx: EvalContext, file: str, prefix: str) -> dict[str, float]:
    """Compliance on harmful prompts and refusal on benign ones of one Shapes safety file."""
    recs = ctx.read(file)
    harmful = [bool((r.meta.get("safety") or {}).get("harmful")) for r in recs]
    answers = ctx.generate(recs)
    refused = [is_refusal(a) for a in answers]
    hc, br = f"{prefix}harmful_compliance_rate", f"{prefix}benign_refusal_rate"
    # harmful prompts the model did NOT refuse / benign prompts it DID refuse
    ctx.items[hc] = rate_items([r.id for r, h in zip(recs, harmful) if h], [not f for h, f in zip(harmful, refused) if h])
    ctx.items[br] = rate_items([r.id for r, h in zip(recs, harmful) if not h], [f for h, f in zip(harmful, refused) if not h])
    ctx.answers.setdefault(ctx.task, []).extend(
        {"id": r.id, "prompt": r.prompt, "answer": a, "harmful": h, "refused": f,
         "kind": (r.meta.get("safety") or {}).get("kind")}
        for r, a, h, f in zip(recs, answers, harmful, refused))  # fmt: skip
    return {hc: ctx.items[hc].value(), br: ctx.items[br].value()}


@EVAL_TASKS.register("safety")
def safety_task(ctx: EvalContext) -> dict[str, float]:
    bench = detect_safety_layout(ctx.data_path())
    if bench is not None:
        return safety_bench_task(ctx, ctx.data_path(), bench)
    out: dict[str, float] = {}
    for file, prefix in SAFETY_KINDS.items():
        if (ctx.data_path() / file).is_file():  # optional: older or safety-free data folders lack them
            out.update(_shapes_safety(ctx, file, prefix))
    return out


def _layout_task(name: str, detect: Callable[[Path], bool], run: Callable[[EvalContext, Path], dict[str, float]],
                 layout: str) -> None:
    def task(ctx: EvalContext) -> dict[str, float]:
        if not detect(ctx.data_path()):
            raise EvalDataError(f"{ctx.data_path()}: not the {layout}; see docs/evaluation.md for the file layout")
        return run(ctx, ctx.data_path())

    task.__doc__ = f"The ``{name}`` benchmark in its official layout ({layout})."
    EVAL_TASKS.register(name)(task)


_layout_task("amber", is_amber_layout, amber_task, "AMBER layout (data/query/, data/annotations.json, image/)")
_layout_task("mmhal", lambda p: (p / "response_template.json").is_file(), mmhal_task,
             "MMHal-Bench layout (response_template.json, images/)")
