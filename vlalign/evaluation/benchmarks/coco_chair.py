"""CHAIR on COCO captions (Rohrbach et al., EMNLP 2018), in the official data layout.

Layout (a COCO folder)::

    DIR/annotations/instances_val2014.json   # COCO instance annotations: images, annotations, categories
    DIR/annotations/captions_val2014.json    # optional: human captions (their objects count as present too)
    DIR/val2014/COCO_val2014_000000xxxxxx.jpg  # the images named in instances "images[].file_name"
    DIR/chair_image_ids.json                 # optional: the image ids to caption (default: every image found)

Formula (the paper, section 3; the metric names are lmms-eval's ``coco_cap_chair`` task's):

- a caption *mentions* a COCO category each time a word or phrase of the category's synonym list
  (:file:`coco_synonyms.yaml`) occurs in it, after lower-casing and singularising each word;
- an image's ground-truth categories are those of its instance annotations plus those its human
  captions mention (as in the paper, so a category the annotators missed but every caption names is
  not counted as a hallucination);
- ``coco_cap_chair_i`` = Σ hallucinated mentions / Σ mentions (every occurrence counts, as in the
  paper's reference code); ``coco_cap_chair_s`` = #captions with ≥ 1 hallucinated mention / #captions;
  ``coco_cap_recall`` = Σ |mentioned ∩ ground truth| / Σ |ground truth| (distinct categories).

Values are fractions in [0, 1]; lmms-eval prints the same quantities × 100. Word matching is by the
synonym table and a rule-based singulariser (no POS tagger): a qualifier such as "baby" or
"passenger" directly before another category's word ("baby elephant", "passenger jet") is not a
person mention, as in the paper's special cases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from vlalign.data.records import PromptRecord
from vlalign.evaluation.context import EvalContext, EvalDataError, read_json
from vlalign.evaluation.items import chair_items

SYNONYMS_FILE = Path(__file__).with_name("coco_synonyms.yaml")
CAPTION_PROMPT = "Please describe this image in detail."  # lmms-eval coco_cap_chair's prompt
_WORD = re.compile(r"[a-z]+")

_IRREGULAR = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse", "geese": "goose",
    "oxen": "ox", "teeth": "tooth", "feet": "foot", "knives": "knife", "leaves": "leaf", "wolves": "wolf",
    "calves": "calf", "shelves": "shelf", "halves": "half", "loaves": "loaf", "scissors": "scissors",
    "sheep": "sheep", "skis": "ski", "buses": "bus", "giraffes": "giraffe", "police": "police",
}  # fmt: skip
_NO_S_ENDINGS = ("ss", "us", "is", "ous")


def singular(word: str) -> str:
    """A rule-based singular: irregular nouns by table, ``-ies`` → ``-y``, ``-(s|x|z|ch|sh)es`` → drop
    ``es``, other final ``-s`` dropped unless the word ends in ``ss``/``us``/``is``. Examples: dogs → dog,
    puppies → puppy, benches → bench, people → person, glass → glass, bus → bus."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 2 and word.endswith("s") and not word.endswith(_NO_S_ENDINGS):
        return word[:-1]
    return word


@lru_cache(maxsize=4)
def synonym_table(path: str = str(SYNONYMS_FILE)) -> dict[str, str]:
    """Singularised word or phrase → COCO category, from the YAML table."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    table: dict[str, str] = {}
    for category, words in raw.items():
        for w in [category, *words]:
            key = " ".join(singular(t) for t in _WORD.findall(str(w).lower()))
            table.setdefault(key, category)
    return table


_QUALIFIERS = {"baby", "adult", "passenger"}


def caption_mentions(text: str, table: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Every (words as written, category) mention in ``text``, longest phrase first (≤ 3 words)."""
    table = table if table is not None else synonym_table()
    words = _WORD.findall(text.lower())
    sing = [singular(w) for w in words]
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(sing):
        step = 1
        for n in (3, 2, 1):
            phrase = " ".join(sing[i : i + n])
            if i + n > len(sing) or phrase not in table:
                continue
            nxt = sing[i + 1] if i + 1 < len(sing) else ""
            if n == 1 and sing[i] in _QUALIFIERS and table.get(nxt, "person") != "person":
                break  # "baby elephant": the next word names the object, the qualifier is not a person
            out.append((" ".join(words[i : i + n]), table[phrase]))
            step = n
            break
        i += step
    return out


def chair_counts(mentions: Sequence[tuple[str, str]], truth: set[str]) -> tuple[int, int, int, int, list[str]]:
    """(hallucinated mentions, mentions, ground-truth categories, recalled categories, hallucinated words)."""
    wrong = [w for w, c in mentions if c not in truth]
    said = {c for _, c in mentions}
    return len(wrong), len(mentions), len(truth), len(said & truth), wrong


def is_coco_folder(path: Path) -> bool:
    return path.is_dir() and any((path / "annotations").glob("instances_*.json"))


def ground_truth(root: Path) -> tuple[dict[int, set[str]], dict[int, str]]:
    """image id → present categories (instances + human captions), and image id → file name."""
    ann_dir = root / "annotations"
    inst_files = sorted(ann_dir.glob("instances_*.json"))
    if not inst_files:
        raise EvalDataError(f"{ann_dir}: no instances_*.json; CHAIR on COCO needs the instance annotations")
    what = "COCO instances JSON with 'images', 'annotations' and 'categories'"
    truth: dict[int, set[str]] = {}
    files: dict[int, str] = {}
    table = synonym_table()
    for f in inst_files:
        data = read_json(f, what)
        if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
            raise EvalDataError(f"{f}: expected a {what}")
        names = {c["id"]: c["name"] for c in data["categories"]}
        unknown = sorted(set(names.values()) - set(table.values()))
        if unknown:
            raise EvalDataError(f"{f}: categories {unknown[:5]} are not in {SYNONYMS_FILE.name}; add them to the table")
        for im in data["images"]:
            files[int(im["id"])] = str(im["file_name"])
            truth.setdefault(int(im["id"]), set())
        for a in data["annotations"]:
            truth.setdefault(int(a["image_id"]), set()).add(names[a["category_id"]])
    for f in sorted(ann_dir.glob("captions_*.json")):
        for a in read_json(f, "COCO captions JSON with 'annotations'").get("annotations", []):
            truth.setdefault(int(a["image_id"]), set()).update(c for _, c in caption_mentions(str(a["caption"]), table))
    return truth, files


def find_image(root: Path, name: str, folders: Sequence[str]) -> Path | None:
    for sub in folders:
        p = root / sub / name
        if p.is_file():
            return p
    return None


def coco_chair_task(ctx: EvalContext, root: Path) -> dict[str, float]:
    """Caption each COCO image, then CHAIR_i / CHAIR_s / recall against the annotations."""
    truth, files = ground_truth(root)
    ids_file = root / "chair_image_ids.json"
    wanted = [int(i) for i in read_json(ids_file, "a JSON list of image ids")] if ids_file.is_file() else sorted(files)
    recs, missing = [], []
    for image_id in wanted:
        if image_id not in files:
            raise EvalDataError(f"{ids_file}: image id {image_id} is not in the instance annotations")
        path = find_image(root, files[image_id], ("val2014", "images", "."))
        if path is None:
            missing.append(files[image_id])
            continue
        recs.append(PromptRecord(str(image_id), [str(path)], CAPTION_PROMPT, None, {"image_id": image_id}))
    if missing and not ids_file.is_file() and not recs:
        raise EvalDataError(f"{root}: none of the {len(files)} annotated images is under val2014/ or images/")
    if missing and ids_file.is_file():
        raise EvalDataError(f"{root}: {len(missing)} listed images are missing (first: {missing[0]}); put them in val2014/")
    recs = ctx.limited(recs)
    texts = ctx.generate(recs, root)
    table = synonym_table()
    counts = [chair_counts(caption_mentions(t, table), truth[int(r.id)]) for r, t in zip(recs, texts)]
    per_caption = chair_items([r.id for r in recs], [c[0] for c in counts], [c[1] for c in counts],
                              [c[2] for c in counts], [c[3] for c in counts])
    names = {"chair_i": "coco_cap_chair_i", "chair_s": "coco_cap_chair_s", "object_recall": "coco_cap_recall"}
    ctx.items.update({names[k]: v for k, v in per_caption.items()})
    ctx.answers[ctx.task] = [
        {"id": r.id, "prompt": r.prompt, "answer": t, "hallucinated": c[4], "truth": sorted(truth[int(r.id)])}
        for r, t, c in zip(recs, texts, counts)
    ]
    out: dict[str, Any] = {k: ctx.items[k].value() for k in ("coco_cap_chair_i", "coco_cap_chair_s", "coco_cap_recall")}
    out["coco_cap_n_captions"] = float(len(recs))
    ctx.no_interval["coco_cap_n_captions"] = "a count"
    return out
