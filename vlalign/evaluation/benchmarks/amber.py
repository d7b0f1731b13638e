"""AMBER (Wang et al., 2023, "An LLM-free Multi-dimensional Benchmark for MLLMs Hallucination
Evaluation", arXiv 2311.07397) in its official repository layout, generative and discriminative parts.

Layout (the repository's ``data/`` folder plus the images)::

    DIR/data/query/query_all.json            # or query_generative.json and/or query_discriminative.json:
                                             #   [{"id": 1, "image": "AMBER_1.jpg", "query": "Describe this image."}]
    DIR/data/annotations.json                # [{"id", "type": "generative", "truth": [...], "hallu": [...]},
                                             #  {"id", "type": "discriminative-…", "truth": "yes"|"no"}]; row id-1
    DIR/data/relation.json                   # word → associated words (synonyms, parts)
    DIR/data/safe_words.txt                  # words never counted as hallucinations
    DIR/image/AMBER_1.jpg                    # (or images/)

Generative part (the repository's ``inference.py``, re-implemented; names are lmms-eval's
``amber_g`` task's, values as fractions where lmms-eval prints × 100). The response's candidate
objects are its words (lower-cased, singularised) that occur in the vocabulary of ``relation.json``
(keys and values), matched as phrases of ≤ 3 words. A candidate in ``safe_words.txt`` is neither a
hallucination nor a cover; one equal to a ground-truth object or one of its associated words covers
that object; any other is a hallucination (and, when it names an annotated hallucination-prone
object or one of its associated words, also counts for Cog):

- ``amber_chair`` = Σ hallucinated candidates / Σ candidates;
- ``amber_cover`` = Σ covered ground-truth objects / Σ ground-truth objects;
- ``amber_hal``   = share of responses with ≥ 1 hallucinated candidate;
- ``amber_cog``   = Σ mentioned hallucination-prone objects / Σ hallucination-prone objects.

Differences from the reference script, said plainly: it extracts nouns with NLTK's POS tagger and
also accepts a noun as a ground-truth match when spaCy word vectors put it within cosine 0.8; vlalign
has neither offline, so candidates are vocabulary words regardless of part of speech and matches
are exact — ``amber_chair`` can be somewhat higher than the script's on the same answers.

Discriminative part: yes/no questions, the answer parsed by its first word
(:func:`vlalign.evaluation.hallucination.parse_yes_no`; the script compares the raw reply with
"Yes"/"No"), positive class = "no" as in the script: ``amber_accuracy``, ``amber_precision`` =
#(answered no ∧ truth no) / #answered no, ``amber_recall`` = #(truth no ∧ answered no) / #truth no,
``amber_f1``; per dimension ``amber_{existence,attribute,relation}_{accuracy,f1}``.
``amber_score`` = (1 − amber_chair + amber_f1) / 2 (the paper's AMBER Score, on fractions).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlalign.data.records import PromptRecord
from vlalign.evaluation.benchmarks.coco_chair import find_image, singular
from vlalign.evaluation.context import EvalContext, EvalDataError, read_json, require_keys
from vlalign.evaluation.hallucination import parse_yes_no
from vlalign.evaluation.items import ItemValues, binary_items, rate_items

_WORD = re.compile(r"[a-z]+")
DIMENSIONS = {"discriminative-hallucination": "existence", "discriminative-attribute-state": "attribute",
              "discriminative-attribute-number": "attribute", "discriminative-attribute-action": "attribute",
              "discriminative-relation": "relation"}  # fmt: skip


def is_amber_layout(path: Path) -> bool:
    return (path / "data" / "annotations.json").is_file() and (path / "data" / "query").is_dir()


def candidates(text: str, vocabulary: set[str]) -> list[str]:
    """Vocabulary words/phrases of ``text`` in order (longest phrase first, ≤ 3 words), singularised."""
    words = [singular(w) for w in _WORD.findall(text.lower())]
    out, i = [], 0
    while i < len(words):
        for n in (3, 2, 1):
            phrase = " ".join(words[i : i + n])
            if i + n <= len(words) and phrase in vocabulary:
                out.append(phrase)
                i += n
                break
        else:
            i += 1
    return out


def _first_match(noun: str, objects: Sequence[str], relation: Mapping[str, Sequence[str]]) -> int | None:
    """Which object a noun covers: the first whose associated words hold it (objects in order), else the
    first object equal to it — the search order of the reference script."""
    for idx, obj in enumerate(objects):
        if noun in relation.get(obj, ()):
            return idx
    return next((idx for idx, obj in enumerate(objects) if noun == obj), None)


def generative_counts(text: str, truth: Sequence[str], hallu: Sequence[str], relation: Mapping[str, Sequence[str]],
                      vocabulary: set[str], safe: set[str]) -> dict[str, Any]:
    """Per response: candidates, hallucinated ones, covered truth objects, mentioned hallucination-prone ones."""
    nouns = candidates(text, vocabulary)
    covered, cog, wrong = set(), set(), []
    for noun in nouns:
        if noun in safe:
            continue
        hit = _first_match(noun, truth, relation)
        if hit is not None:
            covered.add(hit)
            continue
        prone = _first_match(noun, hallu, relation)
        if prone is not None:
            cog.add(prone)
        wrong.append(noun)
    return {"n": len(nouns), "wrong": wrong, "covered": len(covered), "cog": len(cog)}


def norm(word: str) -> str:
    """Lower-cased, singularised word or phrase: how candidates and annotations are compared."""
    return " ".join(singular(t) for t in _WORD.findall(word.lower()))


def _vocabulary(relation: Mapping[str, Sequence[str]]) -> set[str]:
    words = set(relation)
    for assoc in relation.values():
        words.update(assoc)
    return words


def load_amber(root: Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], dict[str, list[str]], set[str]]:
    data = root / "data"
    qdir = data / "query"
    if (qdir / "query_all.json").is_file():
        qfiles = [qdir / "query_all.json"]
    else:
        qfiles = [p for p in (qdir / "query_generative.json", qdir / "query_discriminative.json") if p.is_file()]
    if not qfiles:
        raise EvalDataError(f"{qdir}: no query_all.json, query_generative.json or query_discriminative.json")
    queries = []
    for f in qfiles:
        rows = read_json(f, 'a JSON list of {"id", "image", "query"}')
        for i, row in enumerate(rows):
            require_keys(row, ("id", "image", "query"), f"{f}, entry {i}")
        queries += rows
    ann = read_json(data / "annotations.json", 'the AMBER annotations: a JSON list of {"id", "type", "truth", ...}')
    by_id = {int(a["id"]): a for a in ann}
    relation = {norm(k): [norm(v) for v in vs] for k, vs in read_json(data / "relation.json", "word → associated words").items()}
    safe_path = data / "safe_words.txt"
    safe = {norm(line) for line in safe_path.read_text(encoding="utf-8").splitlines() if line.strip()} \
        if safe_path.is_file() else set()
    for q in queries:
        if int(q["id"]) not in by_id:
            raise EvalDataError(f"{data / 'annotations.json'}: no annotation for query id {q['id']}")
    return queries, by_id, relation, safe


def amber_task(ctx: EvalContext, root: Path) -> dict[str, float]:
    queries, ann, relation, safe = load_amber(root)
    recs = []
    for q in ctx.limited(queries):
        img = find_image(root, str(q["image"]), ("image", "images", "."))
        if img is None:
            raise EvalDataError(f"{root}: image {q['image']} (query id {q['id']}) not found under image/ or images/")
        recs.append(PromptRecord(str(q["id"]), [str(img)], str(q["query"])))
    answers = ctx.generate(recs, root)
    gen = [(r, a) for r, a in zip(recs, answers) if ann[int(r.id)]["type"] == "generative"]
    disc = [(r, a) for r, a in zip(recs, answers) if ann[int(r.id)]["type"] != "generative"]
    new: dict[str, ItemValues] = {}
    rows: list[dict[str, Any]] = []
    if gen:
        vocab = _vocabulary(relation)
        counts = []
        for r, a in gen:
            g = ann[int(r.id)]
            counts.append(generative_counts(a, [norm(t) for t in g["truth"]], [norm(h) for h in g["hallu"]],
                                            relation, vocab, safe))
            rows.append({"id": r.id, "prompt": r.prompt, "answer": a, "hallucinated": counts[-1]["wrong"]})
        ids = [r.id for r, _ in gen]
        new["amber_chair"] = ItemValues("ratio", [[float(len(c["wrong"])) for c in counts], [float(c["n"]) for c in counts]], ids)
        new["amber_cover"] = ItemValues("ratio", [[float(c["covered"]) for c in counts],
                                                  [float(len(ann[int(i)]["truth"])) for i in ids]], ids)
        new["amber_hal"] = rate_items(ids, [float(bool(c["wrong"])) for c in counts])
        new["amber_cog"] = ItemValues("ratio", [[float(c["cog"]) for c in counts],
                                                [float(len(ann[int(i)]["hallu"])) for i in ids]], ids)
    if disc:
        preds = [parse_yes_no(a) for _, a in disc]
        truth = [str(ann[int(r.id)]["truth"]).lower() for r, _ in disc]
        dims = [DIMENSIONS.get(ann[int(r.id)]["type"], "relation") for r, _ in disc]
        for dim in ["all", *sorted(set(dims))]:
            idx = [i for i, d in enumerate(dims) if dim in ("all", d)]
            prefix = "amber" if dim == "all" else f"amber_{dim}"
            ids = [disc[i][0].id for i in idx]
            names = {"precision": f"{prefix}_precision", "recall": f"{prefix}_recall", "f1": f"{prefix}_f1"} \
                if dim == "all" else {"f1": f"{prefix}_f1"}
            new.update(binary_items(ids, [float(preds[i] == "no") for i in idx], [float(truth[i] == "no") for i in idx], names))
            new[f"{prefix}_accuracy"] = rate_items(ids, [float(preds[i] == truth[i]) for i in idx])
        rows += [{"id": r.id, "prompt": r.prompt, "answer": a, "parsed": p, "truth": t}
                 for (r, a), p, t in zip(disc, preds, truth)]
    ctx.items.update(new)
    ctx.answers[ctx.task] = rows
    out = {k: iv.value() for k, iv in new.items()}
    if "amber_chair" in out and "amber_f1" in out:
        out["amber_score"] = (1 - out["amber_chair"] + out["amber_f1"]) / 2
        ctx.no_interval["amber_score"] = ("a fixed combination of amber_chair (generative items) and amber_f1 "
                                          "(discriminative items), measured on different items; see their intervals")
    return out
