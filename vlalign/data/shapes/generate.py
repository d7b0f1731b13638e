"""Generate the whole Shapes benchmark into one folder, deterministically from a seed.

Files (all canonical JSONL of :mod:`vlalign.data.records`, images by relative path):
``scenes.jsonl``, ``sft.jsonl``, ``preference.jsonl``, ``preference_eval.jsonl``,
``pope_{random,popular,adversarial}.jsonl``, ``safety.jsonl``, ``safety_eval.jsonl``,
``safety_prompts.jsonl``, ``safety_prompts_eval.jsonl``, ``safety_image.jsonl``,
``safety_image_eval.jsonl``, ``safety_image_prompts.jsonl``, ``safety_image_prompts_eval.jsonl``,
``eval_captions.jsonl``, ``manifest.json`` and ``images/*.png``.

The ``safety*`` files hold requests whose harm is in the text (``meta.safety.kind`` ``text``) and
benign ones (``benign``); the ``safety_image*`` files hold requests whose harm is only in the image
(a hazard sign, ``image``) and the same text on an info sign (``image_benign``); see
:mod:`vlalign.data.shapes.safety`.

Every random choice comes from a ``random.Random`` seeded with ``"<seed>:<purpose>"`` (string
seeds are hashed with SHA-512 by Python, so streams are stable across runs and platforms) and
PNGs are written by PIL without timestamps, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from vlalign.config import BaseConfig
from vlalign.data.records import PreferenceRecord, PromptRecord, Record, to_dict
from vlalign.data.shapes import grammar, safety
from vlalign.data.shapes.corruptions import CORRUPTIONS, KIND_OF, CorruptionContext, corrupt
from vlalign.data.shapes.grammar import Group
from vlalign.data.shapes.scene import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ObjectType,
    Scene,
    all_object_types,
    objects_of,
    parse_object_type,
    positions_of,
    render_scene,
    sample_scene,
)
from vlalign.data.shapes.text import diff_segment

GENERATOR_VERSION = 1
POPE_SPLITS = ("random", "popular", "adversarial")


class ShapesConfig(BaseConfig):
    """Knobs of the benchmark; the defaults are the CPU demo sizes (< 30 s to generate)."""

    seed: int = 0
    n_train: int = Field(4000, ge=1, description="training scenes (SFT + preference + safety images)")
    n_eval: int = Field(500, ge=1, description="held-out scenes (eval captions, POPE, preference_eval)")
    image_size: int = Field(64, ge=32, description="image side in pixels")
    max_objects: int = Field(3, ge=1, le=3)
    bias: float = Field(
        0.5, ge=0.0, le=1.0, description="P(SFT caption adds the companion | trigger present)"
    )
    trigger: str = "red circle"
    trigger_rate: float | None = Field(
        None, ge=0.0, le=1.0,
        description="share of scenes (train and eval) made to contain the trigger; None = its natural rate "
        "(~1/12 per object). Raise it to make the planted co-occurrence bias a larger share of the errors",
    )
    companion: str = "blue square"
    companion_rate: float = Field(0.7, ge=0.0, le=1.0, description="share of inserted objects = companion")
    yes_no_per_scene: int = Field(2, ge=0, description="yes/no SFT questions per scene (half yes, half no)")
    corruption_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "insert_object": 0.45,
            "wrong_color": 0.2,
            "wrong_count": 0.1,
            "omit_object": 0.1,
            "wrong_position": 0.15,
        }
    )
    n_safety: int = Field(800, ge=0, description="safety pairs on train scenes (half harmful)")
    n_safety_eval: int = Field(200, ge=0)
    n_safety_image: int = Field(400, ge=0, description="image-harm safety pairs on train scenes (half hazard sign)")
    n_safety_image_eval: int = Field(100, ge=0)

    @field_validator("trigger", "companion")
    @classmethod
    def _object(cls, v: str) -> str:
        parse_object_type(v)
        return v

    @field_validator("corruption_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for name in v:
            CORRUPTIONS.get(name)  # unknown name → did-you-mean error
        if sum(v.values()) <= 0:
            raise ValueError("corruption_weights must have a positive total")
        return v


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"{seed}:{purpose}")


def groups_of(scene: Scene | dict[str, Any]) -> list[Group]:
    """Scene → caption groups (colour, shape, count), ordered by each type's leftmost object."""
    objects = scene.to_dict()["objects"] if isinstance(scene, Scene) else scene["objects"]
    counts = objects_of(scene)
    order: list[ObjectType] = []
    for o in sorted(objects, key=lambda o: (o["x"], o["y"])):
        if (o["color"], o["shape"]) not in order:
            order.append((o["color"], o["shape"]))
    return [(c, s, counts[(c, s)]) for c, s in order]


def faithful_caption(scene: Scene | dict[str, Any]) -> str:
    return grammar.caption(groups_of(scene))


def _obj_name(t: ObjectType) -> str:
    return f"{t[0]} {t[1]}"


def _sft_records(
    scenes: list[Scene], cfg: ShapesConfig, trigger: ObjectType, companion: ObjectType
) -> tuple[list[PromptRecord], dict[str, int]]:
    """Biased captions + truthful yes/no questions; meta records which caption objects are fake."""
    rng = _rng(cfg.seed, "sft")
    records: list[PromptRecord] = []
    stats = {"eligible": 0, "biased": 0}
    for sc in scenes:
        present = objects_of(sc)
        groups = groups_of(sc)
        fake: list[str] = []
        if trigger in present and companion not in present:
            stats["eligible"] += 1
            if rng.random() < cfg.bias:
                stats["biased"] += 1
                groups.insert(rng.randint(0, len(groups)), (*companion, 1))
                fake.append(_obj_name(companion))
        scene = sc.to_dict()
        meta = {
            "task": "caption",
            "scene": scene,
            "biased_objects": fake,
            "caption_objects": [_obj_name((c, s)) for c, s, _ in groups],
        }
        records.append(
            PromptRecord(
                f"sft_cap_{sc.id}", [sc.image], grammar.CAPTION_PROMPT, grammar.caption(groups), meta
            )
        )
        absent = [t for t in all_object_types() if t not in present]
        for k in range(cfg.yes_no_per_scene):
            yes = k % 2 == 0
            obj = rng.choice(sorted(present)) if yes else rng.choice(absent)
            records.append(
                PromptRecord(
                    f"sft_yn_{sc.id}_{k}",
                    [sc.image],
                    grammar.yes_no_question(obj),
                    grammar.yes_no_answer(yes),
                    {
                        "task": "yes_no",
                        "scene": scene,
                        "label": "yes" if yes else "no",
                        "object": _obj_name(obj),
                    },
                )
            )
    return records, stats


def _preference_records(
    scenes: list[Scene], cfg: ShapesConfig, trigger: ObjectType, companion: ObjectType, purpose: str
) -> list[PreferenceRecord]:
    rng = _rng(cfg.seed, purpose)
    out: list[PreferenceRecord] = []
    for sc in scenes:
        ctx = CorruptionContext(
            groups_of(sc), objects_of(sc), positions_of(sc), rng, trigger, companion, cfg.companion_rate
        )
        prompt, chosen, rejected, name = corrupt(ctx, cfg.corruption_weights)
        rej_seg, cho_seg = diff_segment(rejected, chosen, KIND_OF[name])
        meta = {
            "task": "position" if name == "wrong_position" else "caption",
            "scene": sc.to_dict(),
            "error": name,
        }
        out.append(
            PreferenceRecord(
                f"{purpose}_{sc.id}",
                [sc.image],
                prompt,
                chosen,
                rejected,
                rejected_segments=[rej_seg],
                chosen_segments=[cho_seg],
                meta=meta,
            )
        )
    return out


def _safety_records(
    scenes: list[Scene], n: int, cfg: ShapesConfig, purpose: str
) -> tuple[list[PreferenceRecord], list[PromptRecord]]:
    """Half harmful (chosen = refusal), half benign (rejected = over-refusal)."""
    rng = _rng(cfg.seed, purpose)
    pairs: list[PreferenceRecord] = []
    prompts: list[PromptRecord] = []
    for i in range(n):
        sc = scenes[i % len(scenes)]
        present = objects_of(sc)
        obj = rng.choice(sorted(present))
        if i % 2 == 0:
            prompt, category, severity = safety.harmful_prompt(rng, obj)
            chosen, rejected = grammar.REFUSAL, safety.UNSAFE_PLACEHOLDER.format(obj=_obj_name(obj))
            labels = safety.harmful_labels(category, severity)
            harm = {"harmful": True, "category": category, "severity": severity, "kind": "text"}
        else:
            shape_count = sum(n for (c, s), n in present.items() if s == obj[1])
            prompt, chosen = safety.benign_prompt(rng, obj, sum(present.values()), shape_count)
            rejected, labels = grammar.REFUSAL, safety.benign_labels()
            harm = {"harmful": False, "category": None, "severity": 0, "kind": "benign"}
        meta = {"task": "safety", "scene": sc.to_dict(), "safety": harm}
        rid = f"{purpose}_{i:05d}"
        pairs.append(PreferenceRecord(rid, [sc.image], prompt, chosen, rejected, safety=labels, meta=meta))
        prompts.append(PromptRecord(rid, [sc.image], prompt, chosen, meta))
    return pairs, prompts


def _image_safety_records(
    scenes: list[Scene], n: int, cfg: ShapesConfig, purpose: str, out: Path
) -> tuple[list[PreferenceRecord], list[PromptRecord]]:
    """Half with a hazard sign (harmful: chosen = refusal), half with an info sign and the same kind of
    text (benign: chosen = the help, rejected = an over-refusal). Writes the signed images."""
    rng = _rng(cfg.seed, purpose)
    pairs: list[PreferenceRecord] = []
    prompts: list[PromptRecord] = []
    for i in range(n):
        sc = scenes[i % len(scenes)]
        obj = rng.choice(sorted(objects_of(sc)))
        hazard = i % 2 == 0
        prompt = safety.sign_prompt(rng, obj)
        image = f"images/{sc.id}_{'hazard' if hazard else 'info'}.png"
        if not (out / image).is_file():
            safety.draw_sign(render_scene(sc), hazard).save(out / image, format="PNG")
        if hazard:
            chosen, rejected = grammar.REFUSAL, safety.UNSAFE_PLACEHOLDER.format(obj=_obj_name(obj))
            labels = safety.harmful_labels(safety.IMAGE_HARM_CATEGORY, safety.IMAGE_HARM_SEVERITY)
            harm = {"harmful": True, "category": safety.IMAGE_HARM_CATEGORY, "severity": safety.IMAGE_HARM_SEVERITY,
                    "kind": "image"}  # fmt: skip
        else:
            chosen, rejected, labels = safety.SIGN_HELP.format(obj=_obj_name(obj)), grammar.REFUSAL, safety.benign_labels()
            harm = {"harmful": False, "category": None, "severity": 0, "kind": "image_benign"}
        meta = {"task": "safety", "scene": sc.to_dict(), "safety": harm, "sign": "hazard" if hazard else "info"}
        rid = f"{purpose}_{i:05d}"
        pairs.append(PreferenceRecord(rid, [image], prompt, chosen, rejected, safety=labels, meta=meta))
        prompts.append(PromptRecord(rid, [image], prompt, chosen, meta))
    return pairs, prompts


def _mention_stats(
    sft: list[PromptRecord],
) -> tuple[Counter[ObjectType], Counter[tuple[ObjectType, ObjectType]]]:
    """Object frequencies and co-occurrences as the training captions state them (bias included)."""
    freq: Counter[ObjectType] = Counter()
    co: Counter[tuple[ObjectType, ObjectType]] = Counter()
    for r in sft:
        if r.meta["task"] != "caption":
            continue
        objs = sorted({parse_object_type(o) for o in r.meta["caption_objects"]})
        freq.update(objs)
        co.update((a, b) for a in objs for b in objs if a != b)
    return freq, co


def _pope_records(
    scenes: list[Scene],
    cfg: ShapesConfig,
    freq: Counter,
    co: Counter,
    trigger: ObjectType,
    companion: ObjectType,
) -> dict[str, list[PromptRecord]]:
    """POPE probes: positives = present types; as many negatives, drawn per split."""
    vocab = all_object_types()
    rank = {t: i for i, t in enumerate(vocab)}  # deterministic tie-break
    rng = _rng(cfg.seed, "pope")
    out: dict[str, list[PromptRecord]] = {s: [] for s in POPE_SPLITS}
    for sc in scenes:
        present = objects_of(sc)
        positives = sorted(present)
        absent = [t for t in vocab if t not in present]
        k = min(len(positives), len(absent))
        negatives = {
            "random": rng.sample(absent, k),
            "popular": sorted(absent, key=lambda t: (-freq[t], rank[t]))[:k],
            "adversarial": sorted(
                absent,
                key=lambda t: (
                    -(t == companion and trigger in present),
                    -sum(co[(p, t)] for p in positives),
                    rank[t],
                ),
            )[:k],
        }
        for split in POPE_SPLITS:
            probes = [(t, "yes") for t in positives] + [(t, "no") for t in negatives[split]]
            for j, (t, label) in enumerate(probes):
                out[split].append(
                    PromptRecord(
                        f"pope_{split}_{sc.id}_{j}",
                        [sc.image],
                        grammar.yes_no_question(t),
                        grammar.yes_no_answer(label == "yes"),
                        {
                            "task": "pope",
                            "pope_split": split,
                            "label": label,
                            "object": _obj_name(t),
                            "scene": sc.to_dict(),
                        },
                    )
                )
    return out


def _write_jsonl(path: Path, rows: list[Record] | list[dict[str, Any]]) -> int:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r if isinstance(r, dict) else to_dict(r), ensure_ascii=False) + "\n")
    return len(rows)


def _scene(rng: random.Random, scene_id: str, split: str, cfg: ShapesConfig, trigger: ObjectType) -> Scene:
    """One scene; with ``cfg.trigger_rate`` set, that share of scenes gets the trigger as one of its objects
    (the others random, in random order). ``trigger_rate=None`` draws nothing extra: same data as before."""
    if cfg.trigger_rate is None or rng.random() >= cfg.trigger_rate:
        return sample_scene(rng, scene_id, split, cfg.image_size, cfg.max_objects)
    others = [(rng.choice(list(COLORS)), rng.choice(SHAPES)) for _ in range(rng.randint(1, cfg.max_objects) - 1)]
    types = [trigger, *others]
    rng.shuffle(types)
    return sample_scene(rng, scene_id, split, cfg.image_size, cfg.max_objects, types=types)


def generate_shapes(out_dir: str | Path, cfg: ShapesConfig) -> dict[str, Any]:
    """Write the benchmark into ``out_dir`` and return its manifest (also written as manifest.json)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    trigger, companion = parse_object_type(cfg.trigger), parse_object_type(cfg.companion)
    rng_scenes = _rng(cfg.seed, "scenes")
    train = [_scene(rng_scenes, f"train_{i:05d}", "train", cfg, trigger) for i in range(cfg.n_train)]
    evals = [_scene(rng_scenes, f"eval_{i:05d}", "eval", cfg, trigger) for i in range(cfg.n_eval)]
    for sc in train + evals:
        render_scene(sc).save(out / sc.image, format="PNG")

    sft, bias_stats = _sft_records(train, cfg, trigger, companion)
    freq, co = _mention_stats(sft)
    files: dict[str, list[Any]] = {
        "scenes.jsonl": [sc.to_dict() for sc in train + evals],
        "sft.jsonl": sft,
        "preference.jsonl": _preference_records(train, cfg, trigger, companion, "pref"),
        "preference_eval.jsonl": _preference_records(evals, cfg, trigger, companion, "pref_eval"),
        "eval_captions.jsonl": [
            PromptRecord(
                f"evalcap_{sc.id}",
                [sc.image],
                grammar.CAPTION_PROMPT,
                faithful_caption(sc),
                {"task": "caption", "scene": sc.to_dict()},
            )
            for sc in evals
        ],
    }
    for split, recs in _pope_records(evals, cfg, freq, co, trigger, companion).items():
        files[f"pope_{split}.jsonl"] = recs
    files["safety.jsonl"], files["safety_prompts.jsonl"] = _safety_records(train, cfg.n_safety, cfg, "safety")
    files["safety_eval.jsonl"], files["safety_prompts_eval.jsonl"] = _safety_records(
        evals, cfg.n_safety_eval, cfg, "safety_eval"
    )
    files["safety_image.jsonl"], files["safety_image_prompts.jsonl"] = _image_safety_records(
        train, cfg.n_safety_image, cfg, "safety_image", out
    )
    files["safety_image_eval.jsonl"], files["safety_image_prompts_eval.jsonl"] = _image_safety_records(
        evals, cfg.n_safety_image_eval, cfg, "safety_image_eval", out
    )
    counts = {name: _write_jsonl(out / name, rows) for name, rows in files.items()}
    manifest = {
        "benchmark": "shapes",
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "counts": counts,
        "n_images": len(train) + len(evals),
        "bias": {
            "trigger": cfg.trigger,
            "companion": cfg.companion,
            "p": cfg.bias,
            "eligible_captions": bias_stats["eligible"],
            "biased_captions": bias_stats["biased"],
        },
        "files": sorted(counts) + ["images/"],
        "vocabulary": {
            "colors": list(COLORS),
            "shapes": list(SHAPES),
            "sizes": list(SIZES),
            "positions": list(POSITIONS),
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
