"""POPE (Li et al., EMNLP 2023, "Evaluating Object Hallucination in Large Vision-Language Models") in
its official file layout.

Layout: a folder with ``<name>_pope_{random,popular,adversarial}.json`` (one dataset name, e.g.
``coco``; the files are JSON Lines despite the extension), each line
``{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the
image?", "label": "yes"}``, and the images under ``images/``, ``val2014/`` or the folder itself.
A single such file may be given instead of the folder.

Answer rule (the official evaluation script): keep the answer's first sentence (up to the first
"."), drop commas, split on spaces; the answer is "no" when one of the words is ``No``, ``not`` or
``no``, otherwise "yes". The question is sent with lmms-eval's suffix "Answer the question using a
single word or phrase."

Metrics (lmms-eval's ``pope`` names; fractions, lmms-eval prints the same): ``pope_accuracy``,
``pope_precision`` = TP / (TP + FP), ``pope_recall`` = TP / (TP + FN), ``pope_f1_score`` = 2PR / (P + R),
``pope_yes_ratio`` = share of answers that are "yes" (the paper's definition; lmms-eval's
aggregation computes the share of *labels* that are "yes" instead), over all probes and per split
(``pope_random_f1_score``, ...). Positive = "yes".
"""

from __future__ import annotations

import re
from pathlib import Path

from vlalign.data.records import PromptRecord
from vlalign.evaluation.benchmarks.coco_chair import find_image
from vlalign.evaluation.context import EvalContext, EvalDataError, read_json_lines, require_keys
from vlalign.evaluation.items import pope_items

SPLITS = ("random", "popular", "adversarial")
POST_PROMPT = "\nAnswer the question using a single word or phrase."
_FILE = re.compile(r"^(?P<name>.+)_pope_(?P<split>random|popular|adversarial)\.jsonl?$")


def official_answer(text: str) -> str:
    """"yes"/"no" by the official POPE rule. Examples: "No, there is not." → no; "There is a cat." →
    yes; "Yes. No doubt." → yes (only the first sentence counts); "" → yes."""
    first = text.split(".", 1)[0].replace(",", "")
    words = first.split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def pope_files(path: Path) -> dict[str, Path]:
    """split → question file, for a folder of ``<name>_pope_<split>.json`` files or one such file."""
    cands = [path] if path.is_file() else sorted(p for p in path.glob("*_pope_*.json*") if _FILE.match(p.name))
    found = {m["split"]: (m["name"], p) for p in cands if (m := _FILE.match(p.name))}
    names = {n for n, _ in found.values()}
    if len(names) > 1:
        raise EvalDataError(f"{path}: POPE files of several datasets {sorted(names)}; give one file set per task")
    return {split: p for split, (_, p) in sorted(found.items())}


def is_pope_layout(path: Path) -> bool:
    return bool(pope_files(path)) if path.exists() else False


def pope_official_task(ctx: EvalContext, path: Path) -> dict[str, float]:
    files = pope_files(path)
    root = path.parent if path.is_file() else path
    what = 'one {"question_id", "image", "text", "label"} object per line (official POPE layout)'
    recs, labels, splits = [], [], []
    for split, f in files.items():
        rows = ctx.limited(read_json_lines(f, what))
        for i, row in enumerate(rows, start=1):
            require_keys(row, ("question_id", "image", "text", "label"), f"{f}, line {i}")
            if row["label"] not in ("yes", "no"):
                raise EvalDataError(f"{f}, line {i}: label {row['label']!r} must be 'yes' or 'no'")
            img = find_image(root, str(row["image"]), ("images", "val2014", "."))
            if img is None:
                raise EvalDataError(f"{f}, line {i}: image {row['image']} not found under {root}/images, val2014 or {root}")
            recs.append(PromptRecord(f"{split}:{row['question_id']}", [str(img)], str(row["text"]) + POST_PROMPT))
            labels.append(str(row["label"]))
            splits.append(split)
    answers = ctx.generate(recs, root)
    preds = [official_answer(a) for a in answers]
    new = {}
    for split in [*files, "all"]:
        idx = [i for i, s in enumerate(splits) if split in ("all", s)]
        prefix = "pope" if split == "all" else f"pope_{split}"
        items = pope_items([recs[i].id for i in idx], [preds[i] for i in idx], [labels[i] for i in idx], prefix, "f1_score")
        items.pop(f"{prefix}_unparsed_ratio")  # the official rule parses every answer
        new.update(items)
    ctx.items.update(new)
    ctx.answers[ctx.task] = [{"id": r.id, "prompt": r.prompt, "answer": a, "parsed": p, "label": lab}
                             for r, a, p, lab in zip(recs, answers, preds, labels)]
    return {k: iv.value() for k, iv in new.items()}
